"""hybridcxr.lungs.predict: masks at the original size, the clean-up."""

from __future__ import annotations

import numpy as np
import pytest

from hybridcxr.errors import NotAnImageError
from hybridcxr.lungs.predict import Segmenter, clean_mask, fill_holes

from .conftest import draw_lungs


def test_clean_mask_keeps_two_largest_and_fills_holes():
    mask = draw_lungs(80, 80, gap=10)
    holed = mask.copy()
    holed[40, 20] = False  # a hole inside the right lung
    holed[2:4, 2:4] = True  # a speck
    cleaned = clean_mask(holed)
    assert (cleaned == mask).all()


def _reference_clean_mask(mask):
    """The clean-up written with scipy's own binary_fill_holes, per region, on the whole image."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count > 2:
        keep = np.argsort(np.bincount(labels.ravel())[1:])[-2:] + 1
        mask = np.isin(labels, keep)
    labels, count = ndimage.label(mask)
    filled = np.zeros_like(mask, dtype=bool)
    for index in range(1, count + 1):
        filled |= ndimage.binary_fill_holes(labels == index)
    return filled


@pytest.mark.parametrize("seed", range(6))
def test_fill_holes_and_clean_mask_agree_with_scipy_on_random_masks(seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((90, 70)), 2) > 0.5)
    mask |= rng.random(mask.shape) > 0.97  # specks and holes of one pixel
    mask &= rng.random(mask.shape) > 0.03
    assert (fill_holes(mask) == ndimage.binary_fill_holes(mask)).all()
    assert (clean_mask(mask) == _reference_clean_mask(mask)).all()
    assert clean_mask(np.zeros((5, 4), bool)).shape == (5, 4)


def test_predict_at_the_original_size(tiny_lungs):
    segmenter = Segmenter.load(tiny_lungs.folder, device="cpu")
    truth = draw_lungs(150, 110, gap=12)
    pixels = np.clip(0.75 - 0.45 * truth, 0, 1).astype(np.float32)
    mask = segmenter.predict(pixels)
    assert mask.shape == (150, 110) and mask.dtype == bool
    assert np.logical_and(mask, truth).sum() > 0.5 * truth.sum()


def test_predict_paths_reports_bad_files(tiny_lungs, mask_dataset, tmp_path):
    segmenter = Segmenter.load(tiny_lungs.folder, device="cpu")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    good = mask_dataset / "images" / "img00.png"
    errors, done = [], []
    out = list(segmenter.predict_paths([bad, good], on_error=lambda p, e: errors.append(p),
                                       on_done=lambda: done.append(1)))
    assert [r.image_id for r, _ in out] == ["img00"] and errors == [bad] and len(done) == 2
    with pytest.raises(NotAnImageError):
        list(segmenter.predict_paths([bad]))
