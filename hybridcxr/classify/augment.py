"""The classifier's image augmentation: per-epoch in end-to-end training, and K cached views per training image.

The transforms are the CXR-safe set of :mod:`hybridcxr.data.augment` (small rotation, zoom and shift,
brightness/contrast/gamma, CLAHE, mild noise; no horizontal flip unless ``hflip=true``) with the magnitudes of
``configs/classifier.yaml`` (``aug_*``), applied to grey float pixels in [0, 1] at their own size.

Cached views (``augment_views=K``, the "augmented dataset"): view ``v`` (1..) of an image is the image augmented
with the seed ``(seed, v, crc32(image_id))``, so a view never depends on which other images or how many views
there are, and a cache asked for more views later computes only the new ones. With ``oversample=rare`` the
images carrying the rarer findings get more views (:func:`view_counts`). Views are for training only: validation
and test features are never augmented.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hybridcxr.classify.loop import SplitData
from hybridcxr.config import to_plain
from hybridcxr.data.augment import SeededCompose
from hybridcxr.findings import NO_FINDING

#: The settings that change what an augmented image looks like (a view cache made with others is stale).
MAGNITUDES = ("aug_p", "aug_rotate", "aug_scale", "aug_shift", "aug_brightness", "aug_contrast", "aug_gamma",
              "aug_clahe", "aug_noise", "hflip", "seed")
VIEW_MARK = "~aug"


class ImageAugment:
    """Callable ``(pixels, epoch, index) -> pixels``: one grey float image in [0, 1], augmented as sample
    ``index`` of ``epoch`` (the same every time), same size, float32 in [0, 1]. Picklable (DataLoader workers)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.compose = SeededCompose({
            "rotate": config["aug_rotate"], "scale": config["aug_scale"], "shift": config["aug_shift"],
            "brightness": config["aug_brightness"], "contrast": config["aug_contrast"], "gamma": config["aug_gamma"],
            "p": config["aug_p"], "clahe": config["aug_clahe"], "noise": config["aug_noise"],
            "hflip": bool(config["hflip"])}, int(config["seed"]))

    def __call__(self, pixels: np.ndarray, epoch: int, index: int) -> np.ndarray:
        image = np.ascontiguousarray(pixels, dtype=np.float32)
        out = self.compose(epoch, index, image=image)["image"]
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def image_index(image_id: str) -> int:
    """The per-image part of a view's seed: a stable hash of the image id (not its row, which can change)."""
    return zlib.crc32(str(image_id).encode())


def view_id(image_id: str, view: int) -> str:
    """The cache id of view ``view`` (1..) of ``image_id``."""
    return f"{image_id}{VIEW_MARK}{view}"


def settings_key(config: Mapping[str, Any]) -> str:
    """The magnitudes and seed as one canonical string: the view cache's fingerprint entry."""
    return json.dumps({k: config[k] for k in MAGNITUDES}, sort_keys=True, default=str)


def augmentation_card(config: Mapping[str, Any], training_ids: Sequence[str] = ()) -> dict[str, Any]:
    """What a classifier card records of its augmentation: every setting, and the training rows it gave
    (``training_ids``: the head's training rows, views included)."""
    card = {k: to_plain(config[k]) for k in ("augment", "augment_views", "oversample", "oversample_max", *MAGNITUDES)
            if k != "seed"}
    card["applied"] = ("every epoch (end to end)" if config["end_to_end"] and config["augment"]
                       else "cached views" if config["augment_views"] and not config["end_to_end"] else "none")
    views = sum(VIEW_MARK in i for i in training_ids)
    card["training_rows"] = {"images": len(training_ids) - views, "views": views}
    return card


def view_counts(labels: np.ndarray, findings: Sequence[str], views: int, oversample: str = "none",
                most: int = 4) -> np.ndarray:
    """Views per training image: ``views`` each, or with ``oversample="rare"`` ``views * min(most, floor(median /
    n))`` for an image whose rarest positive finding has ``n`` training positives, ``median`` being the median
    positive count over the findings that have any ("No finding" is not a finding here). Images with no positive
    finding, or only common ones (``n >= median / 2``), keep ``views``.

    >>> labels = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0]])
    >>> view_counts(labels, ["A", "B"], 2, "rare").tolist()   # B: 1 positive, median of (4, 1) = 2.5
    [2, 2, 2, 4, 2]
    """
    n = len(labels)
    counts = np.full(n, int(views), dtype=np.int64)
    if oversample == "none" or views == 0 or n == 0:
        return counts
    columns = [i for i, f in enumerate(findings) if f != NO_FINDING]
    positive = np.nan_to_num(np.asarray(labels, dtype=float)[:, columns]) > 0
    n_pos = positive.sum(axis=0).astype(float)
    if not (n_pos > 0).any():
        return counts
    median = float(np.median(n_pos[n_pos > 0]))
    rarest = np.where(positive, n_pos[None, :], np.inf).min(axis=1)
    factor = np.where(np.isfinite(rarest), np.floor(median / np.maximum(rarest, 1)), 1)
    return counts * np.clip(factor, 1, most).astype(np.int64)


def with_views(split: SplitData, arrays: Mapping[str, np.ndarray], counts: np.ndarray) -> SplitData:
    """``split`` followed by its images' views: ``arrays`` holds the views' vectors, image by image and view by
    view (``counts[i]`` rows for image ``i``); their labels, age and sex are their image's."""
    source = np.repeat(np.arange(len(split.image_ids)), counts)
    ids = [view_id(split.image_ids[i], v) for i, n in enumerate(counts) for v in range(1, int(n) + 1)]
    features = {g: np.concatenate([x, np.asarray(arrays[g], dtype=x.dtype)]) for g, x in split.features.items()}
    return SplitData(list(split.image_ids) + ids, features,
                     np.concatenate([split.age_years, split.age_years[source]]),
                     list(split.sex) + [split.sex[i] for i in source],
                     np.concatenate([split.labels, split.labels[source]]))
