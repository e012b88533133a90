"""hybridcxr.lungs.augment: the mask moves with the image, nothing is flipped, and each sample repeats exactly."""

from __future__ import annotations

import numpy as np

from hybridcxr.config import load_config
from hybridcxr.lungs.augment import PairAugment


def _pair():
    mask = np.zeros((64, 64), np.uint8)
    mask[10:50, 6:24] = 1  # one "lung" on the image's left only
    return (mask * 200 + 20).astype(np.uint8), mask


def test_mask_moves_with_the_image_and_is_never_flipped():
    augment = PairAugment(load_config("lungs", overrides={"aug_p": 1.0, "brightness": 0.0, "contrast": 0.0,
                                                          "gamma": 0.0}))
    image, mask = _pair()
    for index in range(20):
        out_image, out_mask = augment(image, mask, epoch=1, index=index)
        assert set(np.unique(out_mask)) <= {0, 1}
        assert np.mean((out_image > 120) == (out_mask == 1)) > 0.97
        assert out_mask[:, 32:].sum() < 0.05 * out_mask.sum()  # still on the left: no horizontal flip


def test_each_sample_repeats_and_epochs_differ():
    augment = PairAugment(load_config("lungs", overrides={"aug_p": 1.0}))
    image, mask = _pair()
    first = augment(image, mask, epoch=2, index=5)
    again = augment(image, mask, epoch=2, index=5)
    other = augment(image, mask, epoch=3, index=5)
    assert (first[0] == again[0]).all() and (first[1] == again[1]).all()
    assert not (first[0] == other[0]).all()
