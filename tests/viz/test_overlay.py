from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageColor

from hybridcxr.errors import DatasetError, DataWarning
from hybridcxr.findings import NIH14, VINDR_CXR, colour
from hybridcxr.viz.overlay import draw_overlay, save_overlay

H, W = 500, 600  # the synthetic image: 600 wide, 500 high, constant grey
NIH_IMAGE = "nih/images/00002578_000.png"
SIIM_DICOM = "dicom/siim-acr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def rgb(finding: str, findings=VINDR_CXR) -> tuple[int, int, int]:
    return ImageColor.getrgb(colour(finding, findings))[:3]


def table(*rows, score: float | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["finding", "x_min", "y_min", "x_max", "y_max"])
    if score is not None:
        frame["score"] = score
    return frame


def pixels_equal(region: np.ndarray, colour_: tuple[int, int, int]) -> np.ndarray:
    return (region == np.array(colour_, dtype=np.uint8)).all(axis=-1)


@pytest.fixture
def grey_image() -> np.ndarray:
    return np.full((H, W), 0.3, dtype=np.float32)


@pytest.fixture
def grey(grey_image) -> tuple[int, int, int]:
    """The grey the synthetic image is shown in (0.3 of full scale)."""
    value = draw_overlay(grey_image)[H // 2, W // 2]
    assert value[0] == value[1] == value[2] and abs(int(value[0]) - 0.3 * 255) <= 1
    return tuple(int(v) for v in value)


PRED = table(("Cardiomegaly", 100, 150, 300, 350), score=0.87)
TRUTH = table(("Nodule/Mass", 380, 150, 560, 350))


def test_prediction_is_a_solid_outline_in_its_colour_with_a_tag(grey_image, grey):
    out = draw_overlay(grey_image, predictions=PRED, truth=TRUTH)
    yellow = rgb("Cardiomegaly")
    # every pixel of the four edges (inclusive pixels 100..299 x 150..349), away from the corners
    assert pixels_equal(out[160:340, 100], yellow).all()
    assert pixels_equal(out[160:340, 299], yellow).all()
    assert pixels_equal(out[150, 110:290], yellow).all()
    assert pixels_equal(out[349, 110:290], yellow).all()
    assert (out[250, 99] == 0).all()  # a black halo outside the line keeps it visible on bright bone
    # an outline, not a fill: the inside is the image
    assert pixels_equal(out[160:340, 110:290], grey).all()
    # the tag "Cardiomegaly 0.87" sits on the top edge, filled yellow, with black text (yellow is light)
    tag = out[138:150, 100:190]
    assert pixels_equal(tag, yellow).mean() > 0.4
    assert tag.sum(axis=-1).min() < 60


def test_truth_is_dashed_in_its_colour_with_the_image_between_dashes(grey_image, grey):
    out = draw_overlay(grey_image, predictions=PRED, truth=TRUTH)
    blue = rgb("Nodule/Mass")
    for edge in (out[150, 380:560], out[349, 380:560], out[150:350, 380], out[150:350, 559]):
        on, off = pixels_equal(edge, blue), pixels_equal(edge, grey)
        assert on.sum() > 0.4 * len(edge) and off.sum() > 0.15 * len(edge)
        halo = (edge == 0).all(axis=-1)
        assert (on | off | halo).all()  # nothing else along the edge: crisp dashes
        assert on[0] and on[-1]  # a dash at each corner
    assert pixels_equal(out[160:340, 392:548], grey).all()
    # its tag "Nodule/Mass (truth)" hangs below the box, not over the prediction's tag
    assert pixels_equal(out[351:362, 380:460], blue).mean() > 0.4
    assert not pixels_equal(out[130:150, 380:560], blue).any()


def test_text_contrasts_with_its_tag(grey_image):
    dark = rgb("Lung Opacity")  # indigo: white text
    out = draw_overlay(grey_image, predictions=table(("Lung Opacity", 100, 150, 300, 350), score=0.5))
    tag = out[136:150, 100:200].astype(int)
    assert pixels_equal(out[136:150, 100:200], dark).mean() > 0.4
    assert tag.min(axis=-1).max() > 230  # white strokes
    assert tag.sum(axis=-1).min() > 60  # and no black ones


def test_legend_and_heatmap_widen_the_picture(grey_image):
    bare = draw_overlay(grey_image)
    assert bare.shape[1] == W and bare.shape[0] > H  # the footer line only
    assert bare.dtype == np.uint8 and bare.shape[2] == 3
    probabilities = {"Cardiomegaly": 0.91, "Pleural effusion": 0.12, "Pneumothorax": 0.6}
    legend = draw_overlay(grey_image, probabilities=probabilities,
                          decisions={"Cardiomegaly": True, "Pleural effusion": False, "Pneumothorax": True})
    assert legend.shape[1] > W
    for finding in probabilities:  # one swatch per listed finding, right of the image
        assert pixels_equal(legend[:, W:], rgb(finding)).sum() >= 25
    boxed = draw_overlay(grey_image, predictions=PRED)
    assert boxed.shape[1] > W and pixels_equal(boxed[:, W:], rgb("Cardiomegaly")).sum() >= 25

    heat = np.zeros((4, 4))
    heat[:, 2:] = 1.0  # hot on the right half, at a lower resolution than the image
    with_heat = draw_overlay(grey_image, probabilities=probabilities, heatmap=heat)
    assert with_heat.shape[1] > legend.shape[1] + W - 1
    left = with_heat.shape[1] - legend.shape[1]  # where the heatmap panel starts
    hot, cold = with_heat[250, left + 500].astype(int), with_heat[250, left + 100].astype(int)
    assert hot[0] > hot[2] + 60  # turbo's hot end is red
    assert cold[2] >= cold[0]  # its cold end is blue
    assert pixels_equal(with_heat[:H, :W], draw_overlay(grey_image)[0, 0]).all()  # the image itself untouched
    with pytest.raises(ValueError, match="2-D"):
        draw_overlay(grey_image, heatmap=np.zeros((2, 2, 2)))


def test_max_side_scales_picture_and_boxes(grey_image, grey):
    full = draw_overlay(grey_image, predictions=PRED)
    half = draw_overlay(grey_image, predictions=PRED, max_side=300)
    yellow = rgb("Cardiomegaly")
    assert half.shape[0] < full.shape[0] and half.shape[1] < full.shape[1]
    # the box 100..300 x 150..350 is now 50..150 x 75..175 of a 300x250 panel
    assert pixels_equal(half[85:165, 50], yellow).all() and pixels_equal(half[85:165, 149], yellow).all()
    assert pixels_equal(half[75, 60:140], yellow).all() and pixels_equal(half[174, 60:140], yellow).all()
    assert pixels_equal(half[85:165, 60:140], grey).all()
    assert not pixels_equal(half[180:250, 100], yellow).any()  # nothing left at the unscaled place
    # never enlarged
    assert draw_overlay(grey_image, predictions=PRED, max_side=5000).shape == full.shape
    with pytest.raises(ValueError, match="max_side"):
        draw_overlay(grey_image, max_side=0)


def test_boxes_partly_outside_are_clipped_wholly_outside_skipped(grey_image):
    partly = pd.concat([table(("Cardiomegaly", -50, -30, 200, 120), score=0.7),
                        table(("Pneumothorax", 450, 380, 900, 800), score=0.6)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clipping is silent
        out = draw_overlay(grey_image, predictions=partly)
    yellow, sand = rgb("Cardiomegaly"), rgb("Pneumothorax")
    assert pixels_equal(out[40:110, 0], yellow).all() and pixels_equal(out[40:110, 199], yellow).all()
    assert pixels_equal(out[0, 150:195], yellow).all()  # the clipped top edge runs along the image's top
    assert pixels_equal(out[390:490, W - 1], sand).all() and pixels_equal(out[H - 1, 470:590], sand).all()
    # the first tag has no room above its box: it hangs under it (inside, it would hide the finding)
    assert pixels_equal(out[121:132, 0:80], yellow).mean() > 0.4
    assert not pixels_equal(out[10:110, 10:190], yellow).any()
    # a box over the whole image leaves no room outside: its tag goes inside, still in the picture
    whole = draw_overlay(grey_image, predictions=table(("Cardiomegaly", -10, -10, 700, 600), score=0.7))
    assert pixels_equal(whole[2:12, 2:80], yellow).mean() > 0.4

    with pytest.warns(DataWarning, match="Atelectasis.*outside"):
        out = draw_overlay(grey_image, predictions=table(("Atelectasis", 700, 10, 800, 90), score=0.9))
    assert not pixels_equal(out, rgb("Atelectasis")).any()


def test_bad_boxes_are_skipped_with_a_warning_naming_the_finding(grey_image):
    boxes = table(("Pneumothorax", np.nan, 10, 50, 50), ("ILD", 200, 10, 150, 50),
                  ("Calcification", 300, 80, 340, 60), ("Cardiomegaly", 100, 150, 300, 350))
    with pytest.warns(DataWarning) as caught:
        out = draw_overlay(grey_image, truth=boxes)
    messages = " ".join(str(w.message) for w in caught)
    assert "'Pneumothorax'" in messages and "NaN" in messages
    assert "'ILD'" in messages and "'Calcification'" in messages
    assert pixels_equal(out[:, :W][150:350, 100], rgb("Cardiomegaly")).any()
    for finding in ("Pneumothorax", "ILD", "Calcification"):
        assert not pixels_equal(out[:H, :W], rgb(finding)).any()


def test_several_readers_are_named_in_truth_tags(grey_image):
    one = draw_overlay(grey_image, truth=TRUTH.assign(reader="R1"))
    two = draw_overlay(grey_image, truth=pd.concat([TRUTH.assign(reader="R1"), TRUTH.assign(reader="R22")]))
    blue = rgb("Nodule/Mass")
    first_tag = pixels_equal(one[351:362, 380:600], blue).sum(axis=0)
    named_tag = pixels_equal(two[351:362, 380:600], blue).sum(axis=0)
    assert np.count_nonzero(named_tag) > np.count_nonzero(first_tag) + 15  # ", R1" widens the tag
    # the second reader's tag, with the first's below the box taken, goes on top of it
    assert not pixels_equal(one[130:149, 380:600], blue).any()
    assert pixels_equal(two[138:149, 380:460], blue).mean() > 0.4


def test_unknown_findings_still_drawn_in_their_stable_colour(grey_image):
    out = draw_overlay(grey_image, predictions=table(("Rib fracture", 100, 150, 300, 350), score=0.4))
    assert pixels_equal(out[160:340, 100], rgb("Rib fracture")).all()


def test_tables_of_several_images_need_a_radiograph_to_choose(grey_image):
    from hybridcxr.io.radiograph import Radiograph, RadiographMeta

    boxes = pd.concat([PRED.assign(image_id="a"), TRUTH.assign(image_id="b")])
    with pytest.raises(DatasetError, match="2 images"):
        draw_overlay(grey_image, predictions=boxes)
    radiograph = Radiograph(grey_image, RadiographMeta(path="b.png", image_id="b"))
    out = draw_overlay(radiograph, predictions=boxes)
    assert not pixels_equal(out[:H, :W], rgb("Cardiomegaly")).any()
    assert pixels_equal(out[160:340, 380], rgb("Nodule/Mass")).all()
    with pytest.raises(DatasetError, match="lacks columns"):
        draw_overlay(grey_image, truth=PRED.drop(columns="y_max"))


def test_pixel_inputs(grey_image):
    as_uint8 = draw_overlay((grey_image * 255 + 0.5).astype(np.uint8))
    np.testing.assert_array_equal(as_uint8, draw_overlay(grey_image))
    ramp = np.linspace(0, 1, W, dtype=np.float32)[None].repeat(H, axis=0)
    out = draw_overlay(ramp)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, W - 1].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="2-D"):
        draw_overlay(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        draw_overlay(np.zeros((10, 10), dtype=np.int32))


def test_save_overlay_writes_the_png_atomically(tmp_path, grey_image):
    path = save_overlay(tmp_path / "out" / "overlay.png", grey_image, predictions=PRED, truth=TRUTH,
                        title="synthetic")
    assert path == tmp_path / "out" / "overlay.png"
    with Image.open(path) as png:
        assert png.format == "PNG"
        saved = np.asarray(png.convert("RGB"))
    np.testing.assert_array_equal(saved, draw_overlay(grey_image, PRED, TRUTH, title="synthetic"))
    assert [p.name for p in path.parent.iterdir()] == ["overlay.png"]  # no temporary left behind


def test_sizes_scale_with_the_image():
    small = draw_overlay(np.full((512, 512), 0.5, np.float32), predictions=table(("ILD", 100, 100, 400, 400),
                                                                                 score=0.5))
    big = draw_overlay(np.full((3000, 3000), 0.5, np.float32), predictions=table(("ILD", 600, 600, 2400, 2400),
                                                                                 score=0.5))
    colour_ = rgb("ILD")
    line_small = pixels_equal(small[250, 95:130], colour_).sum()
    line_big = pixels_equal(big[1500, 590:700], colour_).sum()
    assert 2 <= line_small < line_big and line_big >= 6
    tag_small = pixels_equal(small[:100, 100], colour_).sum()  # tag height plus the line
    tag_big = pixels_equal(big[:600, 600], colour_).sum()
    assert tag_big > 4 * tag_small >= 4 * 14


@pytest.fixture(scope="module")
def nih_image(shared_data: Path) -> Path:
    path = shared_data / NIH_IMAGE
    if not path.is_file():
        pytest.skip(f"NIH sample {path} not found")
    return path


def test_real_nih_image_with_both_readers_boxes(tmp_path, shared_data, nih_image):
    from hybridcxr.data.sources.chestx_det10 import read_boxes
    from hybridcxr.data.sources.nih import read_bbox_list
    from hybridcxr.io import read_radiograph

    radiograph = read_radiograph(nih_image)
    truth = pd.concat([read_bbox_list(shared_data / "nih" / "nih_bbox_list.csv"),
                       read_boxes(shared_data / "nih" / "chestx_det10_boxes.json")[1]])
    assert truth["image_id"].nunique() > 1  # the radiograph picks its own rows
    mine = truth[truth["image_id"] == radiograph.image_id]
    assert set(mine["finding"]) == {"Nodule", "Consolidation"}
    prediction = table(("Nodule", 790, 320, 880, 395), score=0.81)
    path = save_overlay(tmp_path / "nih.png", radiograph, predictions=prediction, truth=truth, findings=NIH14,
                        probabilities={"Nodule": 0.81, "Consolidation": 0.35})
    with Image.open(path) as png:
        out = np.asarray(png.convert("RGB"))
    assert out.shape[1] > 1024 and out.shape[0] > 1024
    panel = out[:1024, :1024]
    assert pixels_equal(panel[330:385, 790], rgb("Nodule", NIH14)).all()
    # ChestX-Det10's consolidation (588, 501, 965, 839), dashed over the real image
    edge = pixels_equal(panel[510:830, 588], rgb("Consolidation", NIH14))
    assert 0.3 < edge.mean() < 0.9


def test_real_compressed_dicom(tmp_path, shared_data):
    from hybridcxr.io import read_radiograph

    path = shared_data / SIIM_DICOM
    if not path.is_file():
        pytest.skip(f"SIIM-ACR sample {path} not found")
    radiograph = read_radiograph(path)
    assert radiograph.pixels.shape == (1024, 1024)
    saved = save_overlay(tmp_path / "siim.png", radiograph, max_side=512,
                         predictions=table(("Pneumothorax", 300, 300, 600, 700), score=0.42))
    with Image.open(saved) as png:
        out = np.asarray(png.convert("RGB"))
    assert out.shape[1] > 512 and 512 < out.shape[0] < 600  # a 512 panel, a legend, a footer
    assert pixels_equal(out[160:340, 150], rgb("Pneumothorax")).all()
    assert out[:512, :512].std() > 10  # the radiograph, not a blank


def _lab(rgb_: tuple[int, int, int]) -> np.ndarray:
    """sRGB to CIELAB (D65), for perceptual colour differences."""
    c = np.array(rgb_, dtype=float) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    f = np.cbrt(xyz / np.array([0.95047, 1.0, 1.08883]))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_vindr_findings_have_no_near_twin_colours():
    """Every pair of VinDr-CXR's 14 colours differs by more than 20 in CIELAB (Delta E 1976): the best any 14
    of the palette's 16 reach; before the reordering, Atelectasis and Nodule/Mass differed by less."""
    labs = [_lab(rgb(f)) for f in VINDR_CXR]
    closest = min(np.linalg.norm(a - b) for i, a in enumerate(labs) for b in labs[i + 1:])
    assert closest > 20
