"""Recent analyses kept for their overlays: a bounded LRU, so the service's memory does not grow with traffic.

Each entry keeps the radiograph shrunk to the overlay's size as 8-bit grey (at most 1 MiB for the default
1024 px), its boxes and probabilities and, for a DICOM upload, its Structured Report (made on first request
from the kept header, boxes and calls: a few kB), never the float pixels (4 MiB per 1024 px image) or the
upload.
Overlays are drawn on request with :func:`hybridcxr.viz.overlay.draw_overlay`.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Long side of the image panel of an overlay; smaller radiographs are never enlarged.
OVERLAY_MAX_SIDE = 1024


@dataclass(frozen=True)
class StoredResult:
    """What an overlay needs: the shrunk grey image, boxes in its frame, the classifier's outputs."""

    grey: np.ndarray  # (h, w) uint8, the overlay's image panel
    boxes: pd.DataFrame  # finding, score, x_min..y_max in the panel's pixels
    probabilities: dict[str, float]
    decisions: dict[str, bool]
    findings: tuple[str, ...]
    sr: LazyReport | None = None  # the DICOM SR of a DICOM upload, made when first asked for; None for PNG/JPEG


class LazyReport:
    """A DICOM SR made on first request and kept (a few kB): building one costs far more CPU than analysing
    the image (highdicom, pure Python), and most clients never ask for it."""

    def __init__(self, make: Callable[[], bytes | None]) -> None:
        self._make: Callable[[], bytes | None] | None = make
        self._bytes: bytes | None = None
        self._lock = threading.Lock()

    def get(self) -> bytes | None:
        """The SR's bytes (None where the source has no instance to reference)."""
        with self._lock:
            if self._make is not None:
                self._bytes, self._make = self._make(), None  # the inputs go once the SR is made
            return self._bytes


def shrink(pixels: np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """[0, 1] float pixels as uint8 grey with long side at most ``max_side`` (area interpolation)."""
    import cv2

    height, width = pixels.shape
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def stored_result(pixels: np.ndarray, boxes: pd.DataFrame, probabilities: Mapping[str, float],
                  decisions: Mapping[str, bool], findings: Sequence[str]) -> StoredResult:
    """Shrink the image and map the boxes (original pixels) into the shrunk frame."""
    grey = shrink(pixels)
    sx, sy = grey.shape[1] / pixels.shape[1], grey.shape[0] / pixels.shape[0]
    table = boxes.loc[:, ["finding", "score", "x_min", "y_min", "x_max", "y_max"]].copy()
    table[["x_min", "x_max"]] *= sx
    table[["y_min", "y_max"]] *= sy
    return StoredResult(grey, table.reset_index(drop=True), dict(probabilities), dict(decisions), tuple(findings))


def overlay_png(result: StoredResult, *, boxes: bool = True) -> bytes:
    """The overlay as PNG bytes: the image at top-left (one pixel per panel pixel), the legend to its right.

    ``boxes=False`` leaves the boxes out (the viewer draws them itself, toggleable, over the same panel).
    """
    from hybridcxr.viz.overlay import draw_overlay, encode_png

    rgb = draw_overlay(result.grey, predictions=result.boxes if boxes else None, probabilities=result.probabilities,
                       findings=result.findings, decisions=result.decisions)
    buffer = io.BytesIO()
    encode_png(rgb, buffer)
    return buffer.getvalue()


class ResultStore:
    """The last ``capacity`` results by id, least recently used dropped first; safe across threads."""

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: StoredResult) -> None:
        """Keep ``value`` under ``key``, dropping the least recently used entry when full."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, key: str) -> StoredResult | None:
        """The result under ``key`` (now the most recently used), or None where unknown or dropped."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
