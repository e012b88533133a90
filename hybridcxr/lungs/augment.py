"""CXR-safe augmentation of image/mask pairs for the lung segmenter: small rotation, scale and shift (the mask
moves with the image, filled with background), brightness, contrast and gamma (the image only). No flips: on a
frontal radiograph left and right are anatomy (the heart is on the patient's left), and a flipped chest is a
situs inversus the model should not learn as normal.

The transforms and their per-sample seeding (the run's seed, the epoch and the sample's index, so an epoch's
augmentations are the same in one process or in DataLoader workers, and a resumed run repeats them exactly) are
the shared core of :mod:`hybridcxr.data.augment`.
"""

from __future__ import annotations

import numpy as np

from hybridcxr.config import LungsConfig
from hybridcxr.data.augment import SeededCompose


class PairAugment:
    """Callable ``(image, mask, epoch, index) -> (image, mask)`` on uint8 arrays of one size."""

    def __init__(self, config: LungsConfig) -> None:
        self.seed = config.seed
        self.compose = SeededCompose({
            "rotate": config.rotate, "scale": config.scale, "shift": config.shift, "brightness": config.brightness,
            "contrast": config.contrast, "gamma": config.gamma, "p": config.aug_p}, config.seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The pair augmented as sample ``index`` of ``epoch`` is (the same every time it is asked for)."""
        out = self.compose(epoch, index, image=image, mask=mask)
        return out["image"], out["mask"]
