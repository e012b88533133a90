"""The CXR-safe augmentation core both trainers share (the lung segmenter's image/mask pairs and the classifier's
images): albumentations transforms with small magnitudes, and a compose reseeded for every sample.

What is CXR-safe: small rotation, zoom and shift (filled with black, the air and collimation around a film),
brightness, contrast and gamma (exposure and processing differ between machines), optionally CLAHE (local
contrast equalisation, as some PACS viewers show films) and mild Gaussian noise (quantum mottle). A horizontal
flip is not safe by default: on a frontal radiograph left and right are anatomy (the heart and the aortic knob
are on the patient's left), and a flipped chest is a situs inversus a model should not learn as normal.

Each sample is augmented with a seed made of the run's seed, an "epoch" and the sample's index
(``SeedSequence([seed, epoch, index])``), so one sample's augmentation is the same in one process or in
DataLoader workers, a resumed run repeats it exactly, and a cached view can be recomputed bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def _albumentations():
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would look for updates online
    import albumentations as A

    return A


def cxr_transforms(*, rotate: float, scale: float, shift: float, brightness: float, contrast: float, gamma: float,
                   p: float, clahe: float = 0.0, noise: float = 0.0, hflip: bool = False) -> list[Any]:
    """The albumentations transforms of a CXR-safe augmentation, in the order they apply.

    Args:
        rotate: largest rotation, degrees.  scale: zoom by up to ``1 +/- scale``.  shift: up to this fraction
            of the side.  brightness, contrast: fractions of the range.  gamma: gamma in ``1 +/- gamma``.
        p: the probability of each of those (and of the noise).
        clahe: the probability of CLAHE (0: never, and the transform is left out).
        noise: the largest Gaussian noise standard deviation, a fraction of the range (0: left out).
        hflip: flip half of the samples left to right (off by default: see the module doc).
    """
    import cv2

    A = _albumentations()
    out = [
        A.Affine(scale=(1 - scale, 1 + scale), translate_percent=(-shift, shift), rotate=(-rotate, rotate),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=p),
        A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast, p=p),
        A.RandomGamma(gamma_limit=(100 * (1 - gamma), 100 * (1 + gamma)), p=p),
    ]
    if clahe > 0:
        out.append(A.CLAHE(clip_limit=(1.0, 2.0), tile_grid_size=(8, 8), p=clahe))
    if noise > 0:
        out.append(A.GaussNoise(std_range=(0.0, noise), p=p))
    if hflip:
        out.append(A.HorizontalFlip(p=0.5))
    return out


class SeededCompose:
    """The :func:`cxr_transforms` of ``settings`` composed, with randomness fixed per ``(epoch, index)`` (see the
    module doc).

    Plain data (the settings and the seed) until first used: the compose is built then, and dropped when
    pickled, so the callable travels to DataLoader worker processes as it is.
    """

    def __init__(self, settings: Mapping[str, Any], seed: int) -> None:
        self.settings = dict(settings)
        self.seed = int(seed)
        self._compose: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_compose": None}

    def __call__(self, epoch: int, index: int, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        """``arrays`` (albumentations' names: ``image``, ``mask``) augmented as sample ``index`` of ``epoch``;
        the same every time it is asked for."""
        if self._compose is None:
            self._compose = _albumentations().Compose(cxr_transforms(**self.settings), seed=self.seed)
        self._compose.set_random_seed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
        return self._compose(**arrays)
