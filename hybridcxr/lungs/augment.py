"""CXR-safe augmentation of image/mask pairs through albumentations: small rotation, scale and shift (the mask
moves with the image, filled with background), brightness, contrast and gamma (the image only). No flips: on a
frontal radiograph left and right are anatomy (the heart is on the patient's left), and a flipped chest is a
situs inversus the model should not learn as normal.

Each sample is augmented with a seed made of the run's seed, the epoch and the sample's index, so an epoch's
augmentations are the same in one process or in DataLoader workers, and a resumed run repeats them exactly.
"""

from __future__ import annotations

import numpy as np

from hybridcxr.config import LungsConfig


class PairAugment:
    """Callable ``(image, mask, epoch, index) -> (image, mask)`` on uint8 arrays of one size."""

    def __init__(self, config: LungsConfig) -> None:
        import os

        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would look for updates online
        import albumentations as A
        import cv2

        p = config.aug_p
        self.seed = config.seed
        self.compose = A.Compose([
            A.Affine(scale=(1 - config.scale, 1 + config.scale),
                     translate_percent=(-config.shift, config.shift), rotate=(-config.rotate, config.rotate),
                     border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=p),
            A.RandomBrightnessContrast(brightness_limit=config.brightness, contrast_limit=config.contrast, p=p),
            A.RandomGamma(gamma_limit=(100 * (1 - config.gamma), 100 * (1 + config.gamma)), p=p),
        ], seed=config.seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The pair augmented as sample ``index`` of ``epoch`` is (the same every time it is asked for)."""
        self.compose.set_random_seed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
        out = self.compose(image=image, mask=mask)
        return out["image"], out["mask"]
