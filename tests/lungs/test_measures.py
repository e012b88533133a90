"""hybridcxr.lungs.measures: sides, the CTR estimate on drawn masks, the quality flag."""

from __future__ import annotations

import numpy as np
import pytest

from hybridcxr.lungs.measures import COLUMNS, ctr_estimate, ctr_profile, measure_lungs, split_lungs


def _two_boxes(height=200, width=200, gap=40, short_left=False):
    """Two rectangular lungs, rows 20..179; the image-left (patient's right) one at columns 20..79."""
    mask = np.zeros((height, width), bool)
    mask[20:180, 20:80] = True  # patient's right lung (image left)
    left_bottom = 120 if short_left else 180
    mask[20:left_bottom, 80 + gap:80 + gap + 60] = True  # patient's left lung (image right)
    return mask


def test_ctr_estimate_known_gap():
    mask = _two_boxes(gap=40)
    right, left = split_lungs(mask)
    ctr = ctr_estimate(right, left)
    assert ctr["heart_width_px"] == 40  # columns 80..119 are between the lungs
    assert ctr["thorax_width_px"] == 180 - 20  # column 20 to column 179
    assert ctr["ctr_estimate"] == pytest.approx(40 / 160, abs=1e-4)
    assert 100 <= ctr["ctr_row"] < 180  # the lower half


def test_ctr_counts_only_rows_with_both_lungs():
    """A heart-shaped gap that widens downwards, and a left lung that ends early: the widest gap is taken on the
    rows both lungs reach, not below the short lung (where the "gap" would run to the image edge)."""
    mask = np.zeros((200, 200), bool)
    for row in range(20, 180):
        widen = (row - 20) // 8  # inner edges move apart lower down
        mask[row, 20:80 - widen] = True
        if row < 150:
            mask[row, 120 + widen:180] = True
    right, left = split_lungs(mask)
    ctr = ctr_estimate(right, left)
    assert 140 <= ctr["ctr_row"] <= 149  # at the bottom of the rows with both lungs, not below them
    widen = (149 - 20) // 8
    assert ctr["heart_width_px"] == (120 + widen) - (80 - widen)


def test_ctr_ignores_the_costophrenic_tips():
    """Lungs tapering into lateral tips at their bases: the tips' rows would give a "gap" nearly as wide as the
    chest; the estimate takes the widest gap on rows where both lungs are still wide."""
    mask = _two_boxes(gap=40)
    mask[180:195, 20:30] = True  # the right lung's tip, at the image's left edge
    mask[180:195, 170:180] = True  # the left lung's tip
    right, left = split_lungs(mask)
    ctr = ctr_estimate(right, left)
    assert ctr["heart_width_px"] == 40 and ctr["ctr_row"] < 180


def test_sides_are_the_patients():
    mask = _two_boxes()
    mask[20:180, 140:200] = False
    mask[100:180, 140:200] = True  # make the image-right lung smaller
    right, left = split_lungs(mask)
    assert right[:, :80].all(axis=None) or right[20:180, 20:80].all()
    assert left[:, :100].sum() == 0  # the patient's left lung is on the image's right
    values = measure_lungs(mask).values
    assert values["left_area_px"] < values["right_area_px"]


def test_touching_lungs_are_cut_at_the_waist():
    mask = _two_boxes(gap=40)
    mask[20:30, 80:120] = True  # the lungs meet above the heart: one connected region
    right, left = split_lungs(mask)
    assert right[20:180, 20:80].all() and left[20:180, 120:180].all()
    assert not (right & left).any() and (right | left).sum() == mask.sum()


def test_quality_flag_on_empty_and_one_lung_masks():
    empty = measure_lungs(np.zeros((100, 100), bool))
    assert not empty.ok and "tiny lung area" in empty.quality
    assert all(v is None for v in empty.record().values())
    one = _two_boxes()
    one[:, 100:] = False
    single = measure_lungs(one)
    assert not single.ok and "one lung missing" in single.quality
    assert set(single.record()) == set(COLUMNS) and single.record()["ctr_estimate"] is None


def test_quality_flag_on_implausible_shape_and_lateral_view():
    flat = np.zeros((200, 200), bool)
    flat[90:110, 10:90] = True
    flat[90:110, 110:190] = True  # two wide, flat slabs
    assert "implausible shape" in measure_lungs(flat, min_area=0.01).quality
    assert "not a frontal view" in measure_lungs(_two_boxes(), view="LL").quality
    assert measure_lungs(_two_boxes(), view="PA").ok


def test_areas_extents_and_intensities():
    mask = _two_boxes()
    pixels = np.full(mask.shape, 0.2, np.float32)
    pixels[130:180] = 0.8  # the lower third of both lungs (rows 127..179) whitened
    m = measure_lungs(mask, pixels, spacing=(0.5, 0.5))
    assert m.ok
    v = m.record()
    assert v["right_area_px"] == 160 * 60 and v["right_area_cm2"] == pytest.approx(160 * 60 * 0.25 / 100)
    assert (v["right_height_px"], v["right_width_px"], v["right_height_mm"]) == (160, 60, 80.0)
    assert (v["box_x_min"], v["box_y_min"], v["box_x_max"], v["box_y_max"]) == (20, 20, 179, 179)
    assert v["left_right_area_ratio"] == pytest.approx(1.0)
    assert v["right_lower_mean"] > v["right_mean"] > 0.2
    assert m.record()["right_area_cm2"] is not None
    assert measure_lungs(mask).record()["right_area_cm2"] is None  # no spacing: no physical sizes


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        measure_lungs(np.zeros((10, 10), bool), np.zeros((10, 12), np.float32))


@pytest.mark.parametrize("heart", [40, 64, 90])
def test_ctr_profile_finds_a_dense_heart_inside_masks_that_include_it(heart):
    """Masks drawn over the heart (as the V7 Labs masks are) leave no gap; the profile finds the heart's
    borders in the image: a dense band of known width across the middle of the lower half."""
    h, w = 200, 200
    mask = np.zeros((h, w), bool)
    mask[20:180, 20:99] = True   # the right lung, reaching the midline
    mask[20:180, 101:180] = True  # the left lung
    right, left = split_lungs(mask)
    pixels = np.full((h, w), 0.2, dtype=np.float32)  # aerated lung
    x0 = 100 - heart // 2
    pixels[100:180, x0:x0 + heart] = 0.8  # the heart's shadow, lower half only
    found = ctr_profile(right, left, pixels)
    assert found is not None
    assert abs(found["heart_width_profile_px"] - heart) <= 3
    assert found["ctr_profile"] == pytest.approx(heart / 160, abs=0.02)
    assert ctr_estimate(right, left)["ctr_estimate"] < 0.02, "the mask gap misses such a heart entirely"
    assert measure_lungs(mask, pixels).values["ctr_profile"] == found["ctr_profile"]


def test_ctr_profile_is_none_without_rows_holding_both_lungs():
    mask = np.zeros((50, 50), bool)
    mask[5:45, 5:20] = True
    right, left = split_lungs(mask)
    assert ctr_profile(right, left, np.zeros((50, 50), np.float32)) is None
