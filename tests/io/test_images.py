"""PNG and JPEG reading: the real NIH, COVID and TBX11K samples, and synthetic modes and corrupt files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridcxr.errors import NotAnImageError
from hybridcxr.io import read_metadata, read_radiograph

RGBA_NIH = ("00001369_000", "00002578_000")


def nih_pngs(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "nih" / "images").glob("*.png"))


# ------------------------------------------------------------------------------------- real samples
def test_nih_pngs_read_to_unit_float(shared_data: Path) -> None:
    paths = nih_pngs(shared_data)
    assert len(paths) == 28
    for path in paths:
        rg = read_radiograph(path)
        assert rg.pixels.dtype == np.float32 and rg.pixels.shape == (1024, 1024), path.name
        assert 0.0 <= rg.pixels.min() and rg.pixels.max() <= 1.0
        assert rg.image_id == path.stem


@pytest.mark.parametrize("image_id", RGBA_NIH)
def test_nih_rgba_pngs_become_their_grey(shared_data: Path, image_id: str) -> None:
    path = shared_data / "nih" / "images" / f"{image_id}.png"
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        red = np.asarray(im)[..., 0]  # these files are grey stored as opaque RGBA
    rg = read_radiograph(path)
    assert rg.pixels.ndim == 2 and rg.pixels.dtype == np.float32
    np.testing.assert_allclose(rg.pixels, red / 255.0, atol=1e-6)


def test_other_published_images_read(shared_data: Path) -> None:
    paths = sorted((shared_data / "covid-lungs" / "images").iterdir())
    paths += sorted((shared_data / "tbx11k").rglob("*.png"))
    assert paths
    for path in paths:
        rg = read_radiograph(path)
        assert rg.pixels.ndim == 2 and rg.pixels.dtype == np.float32, path.name
        assert 0.0 <= rg.pixels.min() and rg.pixels.max() <= 1.0


def test_png_is_found_by_content_not_extension(shared_data: Path, tmp_path: Path) -> None:
    source = nih_pngs(shared_data)[0]
    renamed = tmp_path / "scan.dcm"
    shutil.copy(source, renamed)
    np.testing.assert_array_equal(read_radiograph(renamed).pixels, read_radiograph(source).pixels)


# -------------------------------------------------------------------------------------------- modes
def save(tmp_path: Path, image: Image.Image, name: str) -> Path:
    path = tmp_path / name
    image.save(path)
    return path


def test_16bit_png_scaled_by_bit_depth(tmp_path: Path) -> None:
    values = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    path = save(tmp_path, Image.fromarray(values), "deep.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    rg = read_radiograph(path)
    np.testing.assert_allclose(rg.pixels, values / 65535.0, atol=1e-7)


def test_8bit_png_not_stretched_to_its_max(tmp_path: Path) -> None:
    values = np.array([[0, 50], [100, 100]], dtype=np.uint8)
    rg = read_radiograph(save(tmp_path, Image.fromarray(values), "dim.png"))
    np.testing.assert_allclose(rg.pixels, values / 255.0, atol=1e-7)


def test_rgb_becomes_luminance(tmp_path: Path) -> None:
    values = np.zeros((2, 2, 3), dtype=np.uint8)
    values[0, 0] = (255, 0, 0)
    values[1, 1] = (90, 90, 90)
    rg = read_radiograph(save(tmp_path, Image.fromarray(values), "colour.png"))
    assert rg.pixels.shape == (2, 2)
    assert rg.pixels[0, 0] == pytest.approx(0.299, abs=1 / 255)
    assert rg.pixels[1, 1] == pytest.approx(90 / 255, abs=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(tmp_path: Path, mode: str) -> None:
    grey = np.full((2, 2), 90, dtype=np.uint8)
    image = Image.fromarray(grey).convert(mode)
    image.putalpha(0)  # fully transparent: compositing on black would give 0
    rg = read_radiograph(save(tmp_path, image, f"alpha_{mode}.png"))
    np.testing.assert_allclose(rg.pixels, 90 / 255, atol=1e-6)


def test_palette_png(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 128], [200, 255]], dtype=np.uint8)).convert("P")
    rg = read_radiograph(save(tmp_path, image, "palette.png"))
    np.testing.assert_allclose(rg.pixels, np.array([[0, 128], [200, 255]]) / 255, atol=2 / 255)


def test_jpeg_grey(tmp_path: Path) -> None:
    image = Image.fromarray(np.full((16, 16), 128, dtype=np.uint8))
    rg = read_radiograph(save(tmp_path, image, "grey.jpg"))
    assert rg.pixels.shape == (16, 16)
    np.testing.assert_allclose(rg.pixels, 128 / 255, atol=2 / 255)


def test_png_metadata_is_only_path_and_id(tmp_path: Path) -> None:
    path = save(tmp_path, Image.new("L", (4, 4)), "00000001_000.png")
    meta = read_metadata(path)
    assert meta.image_id == "00000001_000" and meta.path == str(path)
    assert meta.age_years is None and meta.sex is None and meta.modality is None


# -------------------------------------------------------------------------------------- corrupt input
def test_truncated_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = save(tmp_path, Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)), "cut.png")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(NotAnImageError, match="cut.png"):
        read_radiograph(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = save(tmp_path, Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)), "cut.jpg")
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(NotAnImageError, match="cut.jpg"):
        read_radiograph(path)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("not an image at all\n" * 10)
    with pytest.raises(NotAnImageError, match="fake.png"):
        read_radiograph(path)


def test_other_image_format_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path, Image.new("L", (4, 4)), "scan.gif")
    with pytest.raises(NotAnImageError, match="scan.gif"):
        read_radiograph(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_radiograph(tmp_path / "absent.png")


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16", "1"])
def test_fast_png_decode_matches_pillow(tmp_path: Path, mode: str) -> None:
    """OpenCV's PNG path gives Pillow's grey values to within one 8-bit level (rounding of the luma sum)."""
    from hybridcxr.io.images import _decode_png_cv2, to_grey_float

    rng = np.random.default_rng(1)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / "x.png"
    image.save(path)
    fast = _decode_png_cv2(path)
    assert fast is not None and fast.dtype == np.float32
    with Image.open(path) as reference:
        reference.load()
        np.testing.assert_allclose(fast, to_grey_float(reference), atol=1 / 255 + 1e-6)
