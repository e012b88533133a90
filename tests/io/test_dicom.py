"""DICOM reading: real SIIM and NIH-Udacity samples, and synthetic files for each branch of the pipeline."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space, get_encoder
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless

from hybridcxr.errors import (
    MultiFrameError,
    NoPixelDataError,
    NotAnImageError,
    RadiographError,
    RadiographWarning,
    UnsupportedModalityError,
)
from hybridcxr.io import read_metadata, read_radiograph
from hybridcxr.io.dicom import apply_window

MakeDicom = Callable[..., Path]

RAMP_12BIT = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)


def radiograph_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RadiographWarning)]


# ------------------------------------------------------------------------------------- real samples
@pytest.fixture(scope="module")
def siim(shared_data: Path) -> Path:
    found = sorted((shared_data / "dicom" / "siim-acr").glob("1.2.276*850819.dcm"))
    if not found:
        pytest.skip("SIIM-ACR sample 1.2.276...850819.dcm missing from shared data")
    return found[0]


@pytest.fixture(scope="module")
def udacity(shared_data: Path) -> Path:
    return shared_data / "dicom" / "nih-udacity"


def test_siim_jpeg_baseline_decodes_to_unit_float(siim: Path) -> None:
    rg = read_radiograph(siim)
    assert rg.pixels.dtype == np.float32
    assert rg.pixels.shape == (1024, 1024)
    assert rg.pixels.min() >= 0.0 and rg.pixels.max() <= 1.0
    assert rg.pixels.std() > 0.05  # a real image, not a constant
    assert rg.meta.extra["transfer_syntax"] == "JPEG Baseline (Process 1)"


def test_siim_metadata(siim: Path) -> None:
    meta = read_metadata(siim)
    assert meta.image_id == "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"
    assert meta.age_years == 62.0
    assert meta.sex == "M"
    assert meta.view == "PA"
    assert meta.modality == "CR"
    assert meta.body_part == "CHEST"
    assert meta.photometric == "MONOCHROME2"
    assert meta.bits_stored == 8
    assert meta.pixel_spacing == pytest.approx((0.168, 0.168))
    assert meta.sop_uid == meta.image_id
    assert meta.study_uid and meta.series_uid
    # PatientName (an anonymised UUID in this file) is never kept
    assert "16d7f894" not in repr(meta)


def test_monochrome1_is_inverted_twin(siim: Path) -> None:
    mono2 = read_radiograph(siim).pixels
    mono1 = read_radiograph(siim.with_name("Fake_MONOHR1.dcm")).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "age", "view"),
    [("test1", 81.0, "PA"), ("test2", 58.0, "AP"), ("test3", 77.0, "AP"), ("test4", 81.0, "PA"),
     ("test5", 81.0, "PA"), ("test6", 81.0, None)],
)
def test_udacity_metadata(udacity: Path, name: str, age: float, view: str | None) -> None:
    # PatientAge is written "81" (no Y); the view is in PatientPosition (test6 has a bogus "XX")
    meta = read_metadata(udacity / f"{name}.dcm")
    assert meta.age_years == age and isinstance(meta.age_years, float)
    assert meta.sex == "M"
    assert meta.view == view


def test_udacity_clean_file_reads_without_warning(udacity: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rg = read_radiograph(udacity / "test1.dcm")
    assert not radiograph_warnings(caught)
    assert rg.pixels.shape == (1024, 1024) and rg.pixels.dtype == np.float32


def test_ct_is_refused_naming_modality_and_file(udacity: Path) -> None:
    with pytest.raises(UnsupportedModalityError) as err:
        read_radiograph(udacity / "test5.dcm")
    assert "CT" in str(err.value) and "test5.dcm" in str(err.value)
    assert "allow_modality" in str(err.value)


@pytest.mark.parametrize("allow", [True, {"CT"}, ["ct"], "CT"])
def test_ct_reads_when_allowed(udacity: Path, allow: object) -> None:
    rg = read_radiograph(udacity / "test5.dcm", allow_modality=allow)  # type: ignore[arg-type]
    assert rg.meta.modality == "CT" and rg.pixels.shape == (1024, 1024)


def test_other_allowed_modality_does_not_admit_ct(udacity: Path) -> None:
    with pytest.raises(UnsupportedModalityError):
        read_radiograph(udacity / "test5.dcm", allow_modality=["MR"])


def test_ribcage_body_part_warns_and_reads(udacity: Path) -> None:
    with pytest.warns(RadiographWarning) as caught:
        rg = read_radiograph(udacity / "test4.dcm")
    texts = radiograph_warnings(list(caught))
    assert len(texts) == 1 and "RIBCAGE" in texts[0] and "test4.dcm" in texts[0]
    assert rg.meta.body_part == "RIBCAGE"


def test_dicom_is_found_by_content_not_extension(siim: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "scan.png"
    shutil.copy(siim, renamed)
    assert read_radiograph(renamed).meta.modality == "CR"


@pytest.mark.parametrize("which", ["test1.dcm", "siim"])
def test_truncated_real_file_is_not_an_image(udacity: Path, siim: Path, tmp_path: Path, which: str) -> None:
    source = siim if which == "siim" else udacity / which
    data = source.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(NotAnImageError, match="cut.dcm"):
        read_radiograph(cut)


# ---------------------------------------------------------------------------- grey-scale pipeline
def test_12bit_rescale_then_window(make_dicom: MakeDicom) -> None:
    center, width = 1000.0, 2001.0
    path = make_dicom(RAMP_12BIT, bits_stored=12, RescaleSlope="2", RescaleIntercept="-1024",
                      WindowCenter=str(center), WindowWidth=str(width))
    rg = read_radiograph(path)
    values = RAMP_12BIT.astype(np.float64) * 2 - 1024
    expected = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    assert rg.pixels.dtype == np.float32
    np.testing.assert_allclose(rg.pixels, expected, atol=1e-6)
    assert rg.pixels.min() == 0.0 and rg.pixels.max() == 1.0  # the ramp spans past both window edges
    assert rg.meta.bits_stored == 12


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom(
    build_dataset: Callable[..., Dataset], write_dataset: Callable[..., Path], function: str
) -> None:
    ds = build_dataset(RAMP_12BIT, bits_stored=12, RescaleSlope="2", RescaleIntercept="-1024",
                       WindowCenter=["3000", "100"], WindowWidth=["4000", "50"], VOILUTFunction=function)
    ours = read_radiograph(write_dataset(ds)).pixels
    # pydicom windows onto the rescaled stored range [y_min, y_max]; bring that onto [0, 1]
    y_min, y_max = 0 * 2 - 1024, 4095 * 2 - 1024
    theirs = (apply_voi_lut(apply_modality_lut(RAMP_12BIT, ds), ds) - y_min) / (y_max - y_min)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_window_center_maps_to_half(function: str) -> None:
    assert apply_window(np.array([500]), 500, 200, function)[0] == pytest.approx(0.5)


def test_invalid_window_width_warns_and_uses_data_range(make_dicom: MakeDicom) -> None:
    path = make_dicom(RAMP_12BIT, bits_stored=12, WindowCenter="100", WindowWidth="0")
    with pytest.warns(RadiographWarning, match="Window Width"):
        rg = read_radiograph(path)
    np.testing.assert_allclose(rg.pixels, RAMP_12BIT / RAMP_12BIT.max(), atol=1e-6)


def test_monochrome1_inverted_after_window(make_dicom: MakeDicom) -> None:
    window = {"bits_stored": 12, "WindowCenter": "2000", "WindowWidth": "1001"}
    mono2 = read_radiograph(make_dicom(RAMP_12BIT, name="m2.dcm", **window)).pixels
    mono1 = read_radiograph(make_dicom(RAMP_12BIT, name="m1.dcm", photometric="MONOCHROME1", **window)).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def voi_lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUT Descriptor
    item.add_new(0x00283006, "US", data)  # LUT Data
    return item


def test_voi_lut_sequence_16bit_beats_window(
    build_dataset: Callable[..., Dataset], write_dataset: Callable[..., Path]
) -> None:
    ds = build_dataset(RAMP_12BIT, bits_stored=12, WindowCenter="10", WindowWidth="2")
    ds.VOILUTSequence = [voi_lut_item([4096, 0, 16], (np.arange(4096) * 16).tolist())]
    rg = read_radiograph(write_dataset(ds))
    np.testing.assert_allclose(rg.pixels, RAMP_12BIT * 16 / 65535, atol=1e-6)


def test_voi_lut_sequence_8bit_with_first_mapped(
    build_dataset: Callable[..., Dataset], write_dataset: Callable[..., Path]
) -> None:
    ds = build_dataset(RAMP_12BIT, bits_stored=12)
    ds.VOILUTSequence = [voi_lut_item([256, 1000, 8], list(range(256)))]
    rg = read_radiograph(write_dataset(ds))
    expected = np.clip(RAMP_12BIT.astype(np.int64) - 1000, 0, 255) / 255
    np.testing.assert_allclose(rg.pixels, expected, atol=1e-6)


def test_unusable_voi_lut_falls_back_to_window(
    build_dataset: Callable[..., Dataset], write_dataset: Callable[..., Path]
) -> None:
    ds = build_dataset(RAMP_12BIT, bits_stored=12, WindowCenter="2000", WindowWidth="1001")
    ds.VOILUTSequence = [voi_lut_item([4096, 0, 3], list(range(4096)))]  # 3 bits: not a legal depth
    with pytest.warns(RadiographWarning, match="VOI LUT"):
        rg = read_radiograph(write_dataset(ds))
    np.testing.assert_allclose(rg.pixels, apply_window(RAMP_12BIT, 2000, 1001), atol=1e-6)


def test_modality_lut_sequence(
    build_dataset: Callable[..., Dataset], write_dataset: Callable[..., Path]
) -> None:
    ds = build_dataset(RAMP_12BIT, bits_stored=12)
    ds.ModalityLUTSequence = [voi_lut_item([4096, 0, 16], (4095 - np.arange(4096)).tolist())]
    rg = read_radiograph(write_dataset(ds))
    inverted = 4095 - RAMP_12BIT.astype(np.float64)
    np.testing.assert_allclose(rg.pixels, (inverted - inverted.min()) / np.ptp(inverted), atol=1e-6)


def test_no_window_uses_data_range(make_dicom: MakeDicom) -> None:
    pixels = np.arange(50, 150, dtype=np.uint8).reshape(10, 10)
    rg = read_radiograph(make_dicom(pixels))
    np.testing.assert_allclose(rg.pixels, (pixels - 50.0) / 99.0, atol=1e-6)


def test_constant_image_is_zero(make_dicom: MakeDicom) -> None:
    rg = read_radiograph(make_dicom(np.full((4, 4), 7, dtype=np.uint8)))
    assert rg.pixels.dtype == np.float32 and not rg.pixels.any()


def test_signed_16bit(make_dicom: MakeDicom) -> None:
    pixels = np.linspace(-1000, 1000, 64).astype(np.int16).reshape(8, 8)
    rg = read_radiograph(make_dicom(pixels))
    np.testing.assert_allclose(rg.pixels, (pixels + 1000.0) / 2000.0, atol=1e-6)


def test_signed_12bit_is_sign_extended(
    build_dataset: Callable[..., Dataset], write_dataset: Callable[..., Path]
) -> None:
    values = np.array([[-2048, -5], [0, 2047]], dtype=np.int16)
    ds = build_dataset(values, bits_stored=12)
    ds.PixelData = (values.astype(np.uint16) & 0x0FFF).tobytes()  # sign bits above bit 11 left clear
    rg = read_radiograph(write_dataset(ds))
    np.testing.assert_allclose(rg.pixels, (values + 2048.0) / 4095.0, atol=1e-6)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_dicom_becomes_luminance(make_dicom: MakeDicom, photometric: str) -> None:
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    pixels[1, 1] = (255, 255, 255)
    stored = convert_color_space(pixels, "RGB", photometric) if photometric != "RGB" else pixels
    rg = read_radiograph(make_dicom(stored, photometric=photometric))
    assert rg.pixels.shape == (2, 2)
    assert rg.pixels[0, 0] == pytest.approx(0.299, abs=2 / 255)
    assert rg.pixels[1, 1] == pytest.approx(1.0, abs=2 / 255)


# ------------------------------------------------------------------------------------------- codecs
@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_lossless_codecs_match_native(
    build_dataset: Callable[..., Dataset], write_dataset: Callable[..., Path], syntax: UID, dtype: type
) -> None:
    rng = np.random.default_rng(0)
    low = -2048 if dtype is np.int16 else 0
    pixels = rng.integers(low, low + 4096, size=(64, 64)).astype(dtype)
    window = {"bits_stored": 12, "WindowCenter": "300", "WindowWidth": "1500"}
    native = read_radiograph(write_dataset(build_dataset(pixels, **window), "native.dcm")).pixels
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no installed plugin encodes {syntax.name}")
    ds = build_dataset(pixels, **window)
    try:
        ds.compress(syntax, pixels)
    except RuntimeError as exc:
        pytest.skip(f"{syntax.name} encoder refused this test image: {exc}")
    rg = read_radiograph(write_dataset(ds, "compressed.dcm"))
    assert rg.meta.extra["transfer_syntax"] == syntax.name
    np.testing.assert_array_equal(rg.pixels, native)


def test_missing_codec_names_file_and_transfer_syntax(
    build_dataset: Callable[..., Dataset], write_dataset: Callable[..., Path]
) -> None:
    ds = build_dataset(RAMP_12BIT, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.92")  # JPEG 2000 Part 2: no decoder exists
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    with pytest.raises(NotAnImageError) as err:
        read_radiograph(write_dataset(ds, "part2.dcm"))
    assert "part2.dcm" in str(err.value) and "JPEG 2000 Part 2" in str(err.value)


# ---------------------------------------------------------------------------------- refusals, bad input
def test_no_pixel_data(make_dicom: MakeDicom) -> None:
    path = make_dicom(None, name="header_only.dcm")
    with pytest.raises(NoPixelDataError, match="header_only.dcm"):
        read_radiograph(path)
    assert read_metadata(path).sex == "F"  # its header is still readable


def test_multi_frame(make_dicom: MakeDicom) -> None:
    frames = np.zeros((2, 4, 4), dtype=np.uint16)
    with pytest.raises(MultiFrameError, match="2 frames"):
        read_radiograph(make_dicom(frames, name="cine.dcm", NumberOfFrames="2"))


@pytest.mark.parametrize("modality", [None, "OT", "CR", "DX", "RG"])
def test_projection_modalities_accepted(make_dicom: MakeDicom, modality: str | None) -> None:
    assert read_radiograph(make_dicom(RAMP_12BIT, modality=modality)).pixels.shape == (16, 16)


def test_mr_refused_unless_allowed(make_dicom: MakeDicom) -> None:
    path = make_dicom(RAMP_12BIT, name="brain.dcm", modality="MR")
    with pytest.raises(UnsupportedModalityError, match="MR"):
        read_radiograph(path)
    assert read_radiograph(path, allow_modality={"mr"}).meta.modality == "MR"


@pytest.mark.parametrize("part", ["CHEST", "chest", "THORAX", "CHEST_LAT", "PORTABLE CHEST"])
def test_chest_body_parts_do_not_warn(make_dicom: MakeDicom, part: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_radiograph(make_dicom(RAMP_12BIT, BodyPartExamined=part))
    assert not radiograph_warnings(caught)


def test_garbage_age_is_none_with_one_warning(
    build_dataset: Callable[..., Dataset], write_dataset: Callable[..., Path]
) -> None:
    ds = build_dataset(RAMP_12BIT, PatientName="Doe^Jane", PatientBirthDate="19700101")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom flags the invalid AS value as we write it
        ds.PatientAge = "abc"
    path = write_dataset(ds, "bad_age.dcm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rg = read_radiograph(path)
    texts = radiograph_warnings(caught)
    assert rg.age_years is None
    assert len(texts) == 1 and "bad_age.dcm" in texts[0] and "abc" in texts[0]
    assert "Doe" not in texts[0] and "1970" not in texts[0]
    assert "Doe" not in repr(rg.meta) and "19700101" not in repr(rg.meta)


def test_imager_pixel_spacing_fallback(make_dicom: MakeDicom) -> None:
    meta = read_metadata(make_dicom(RAMP_12BIT, ImagerPixelSpacing=["0.1", "0.2"]))
    assert meta.pixel_spacing == pytest.approx((0.1, 0.2))


def test_preambleless_dicom_is_read(make_dicom: MakeDicom) -> None:
    window = {"bits_stored": 12, "WindowCenter": "2000", "WindowWidth": "1001"}
    bare = make_dicom(RAMP_12BIT, name="bare", preamble=False, **window)
    assert bare.read_bytes()[128:132] != b"DICM"
    full = make_dicom(RAMP_12BIT, name="full.dcm", **window)
    np.testing.assert_array_equal(read_radiograph(bare).pixels, read_radiograph(full).pixels)
    assert read_metadata(bare).modality == "DX"


def test_truncated_synthetic_dicom(make_dicom: MakeDicom) -> None:
    path = make_dicom(np.zeros((64, 64), dtype=np.uint16), name="short.dcm")
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(NotAnImageError, match="short.dcm"):
        read_radiograph(path)


@pytest.mark.parametrize("content", [b"hello, this is a text file\n" * 20, b"", b"\x00" * 300])
def test_non_image_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.dcm"
    path.write_bytes(content)
    for reader in (read_radiograph, read_metadata):
        with pytest.raises(NotAnImageError, match="notes.dcm"):
            reader(path)


def test_errors_are_radiograph_errors() -> None:
    for error in (NotAnImageError, NoPixelDataError, MultiFrameError, UnsupportedModalityError):
        assert issubclass(error, RadiographError)


def test_read_header_reads_only_the_asked_tags_and_refuses_non_dicom(siim: Path, tmp_path: Path) -> None:
    from hybridcxr.io.dicom import header_text, read_header

    ds = read_header(siim, ["Rows", "Columns"])
    assert int(ds.Rows) > 0 and int(ds.Columns) > 0 and "PixelData" not in ds and "PatientAge" not in ds
    assert header_text(read_header(siim), "Modality") is not None
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x89PNG not a dicom at all")
    with pytest.raises(NotAnImageError, match="junk.dcm"):
        read_header(junk)
