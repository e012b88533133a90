"""Radiologists' boxes: validation against the image, fusion across readers, image labels from readers.

VinDr-CXR has three readers per training image; their boxes for one finding are fused into one set with
Weighted Boxes Fusion (ensemble-boxes, IoU 0.4 as in the VinDr papers and the Kaggle competition's metric),
or NMS, or kept as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

LabelRule = Literal["any", "majority"]


def labels_from_readers(
    reader_labels: pd.DataFrame,
    image_ids: Iterable[str],
    findings: Sequence[str],
    rule: LabelRule = "any",
    readers_per_image: pd.Series | None = None,
) -> pd.DataFrame:
    """Turn per-reader positive labels (``image_id, reader, finding``) into one 0/1 column per finding.

    ``rule="any"`` marks a finding when at least one reader saw it; ``"majority"`` when more than half of
    that image's readers did. The number of readers of an image is ``readers_per_image[image_id]`` where
    given, else the count of distinct readers that left any row (positive or "No finding") for it.
    Returns a frame indexed by ``image_id`` with one int column per finding, rows in ``image_ids`` order.
    """
    ids = pd.Index(list(image_ids), name="image_id").astype(str)
    out = pd.DataFrame(0, index=ids, columns=list(findings), dtype=int)
    if reader_labels.empty:
        return out
    table = reader_labels.astype({"image_id": str})
    if readers_per_image is None:
        readers_per_image = table.groupby("image_id")["reader"].nunique()
    positive = table[table["finding"].isin(findings)].drop_duplicates(["image_id", "reader", "finding"])
    votes = positive.groupby(["image_id", "finding"]).size().unstack(fill_value=0)
    votes = votes.reindex(index=ids, columns=list(findings), fill_value=0)
    if rule == "any":
        marked = votes > 0
    elif rule == "majority":
        n_readers = readers_per_image.reindex(ids).fillna(1).clip(lower=1)
        marked = votes.gt(n_readers / 2, axis=0)
    else:
        raise ValueError(f"label rule must be 'any' or 'majority', not {rule!r}")
    return marked.astype(int)


FusionMethod = Literal["wbf", "nms", "none"]
_COORDS = ["x_min", "y_min", "x_max", "y_max"]


@dataclass
class BoxStats:
    """What validation and fusion did to a Box table, for the prepare summary."""

    raw: int = 0
    clipped: int = 0
    dropped: int = 0
    unchecked: int = 0
    fused: int = 0
    readers: int = 0

    def describe(self) -> str:
        return (
            f"{self.raw} reader boxes from {self.readers} readers -> {self.fused} fused; "
            f"{self.clipped} clipped to the image, {self.dropped} degenerate dropped"
            + (f", {self.unchecked} not checked (image size unknown)" if self.unchecked else "")
        )


def clip_boxes(
    boxes: pd.DataFrame, sizes: pd.DataFrame, *, min_size: float = 1.0, stats: BoxStats | None = None
) -> pd.DataFrame:
    """Clip boxes to their image and drop degenerate ones.

    ``sizes`` is indexed by image_id with ``width`` and ``height`` columns (original pixels; NaN = unknown).
    A box is clipped to ``[0, width] x [0, height]``; one that is then narrower or shorter than ``min_size``
    pixels, or was reversed (``x_max < x_min``), is dropped. Boxes of images of unknown size are kept as
    they are and counted as unchecked. Counts go into ``stats`` when given.
    """
    stats = stats if stats is not None else BoxStats()
    if boxes.empty:
        return boxes.copy()
    out = boxes.copy()
    size = sizes.reindex(out["image_id"].astype(str))[["width", "height"]].to_numpy(dtype=float)
    width, height = size[:, 0], size[:, 1]
    known = ~(np.isnan(width) | np.isnan(height))
    xy = out[_COORDS].to_numpy(dtype=float)
    reversed_ = (xy[:, 2] < xy[:, 0]) | (xy[:, 3] < xy[:, 1])
    clipped = xy.copy()
    upper_x = np.where(known, width, np.inf)
    upper_y = np.where(known, height, np.inf)
    clipped[:, 0] = np.clip(xy[:, 0], 0, upper_x)
    clipped[:, 2] = np.clip(xy[:, 2], 0, upper_x)
    clipped[:, 1] = np.clip(xy[:, 1], 0, upper_y)
    clipped[:, 3] = np.clip(xy[:, 3], 0, upper_y)
    changed = known & ~reversed_ & (np.abs(clipped - xy) > 1e-6).any(axis=1)
    too_small = ((clipped[:, 2] - clipped[:, 0]) < min_size) | ((clipped[:, 3] - clipped[:, 1]) < min_size)
    drop = reversed_ | too_small
    out[_COORDS] = clipped
    stats.clipped += int((changed & ~drop).sum())
    stats.dropped += int(drop.sum())
    stats.unchecked += int((~known & ~drop).sum())
    return out[~drop].reset_index(drop=True)


def fuse_readers(
    boxes: pd.DataFrame,
    sizes: pd.DataFrame | None = None,
    *,
    method: FusionMethod = "wbf",
    iou_thr: float = 0.4,
    stats: BoxStats | None = None,
) -> pd.DataFrame:
    """Fuse each image's boxes across readers, per finding, into one set with reader ``"fused"``.

    ``wbf`` averages overlapping boxes (Weighted Boxes Fusion, Solovyev et al. 2021); ``nms`` keeps the
    first of overlapping boxes; ``none`` keeps every reader's box. The ``score`` column says which fraction
    of the image's readers drew the fused box (1.0 = all agreed). Coordinates stay in original pixels;
    ``sizes`` (width, height by image_id) normalises them for ensemble-boxes, falling back to the largest
    coordinate of the image's boxes where the size is unknown.
    """
    from ensemble_boxes import nms, weighted_boxes_fusion

    stats = stats if stats is not None else BoxStats()
    stats.raw += len(boxes)
    stats.readers = max(stats.readers, int(boxes["reader"].nunique()) if len(boxes) else 0)
    if boxes.empty:
        out = boxes.assign(score=pd.Series(dtype=float))
        return out
    if method == "none":
        out = boxes.assign(score=1.0)
        stats.fused += len(out)
        return out.reset_index(drop=True)
    if method not in ("wbf", "nms"):
        raise ValueError(f"fusion method must be 'wbf', 'nms' or 'none', not {method!r}")
    findings = sorted(boxes["finding"].unique())
    finding_index = {f: i for i, f in enumerate(findings)}
    rows: list[dict] = []
    for image_id, group in boxes.groupby("image_id", sort=False):
        xy = group[_COORDS].to_numpy(dtype=float)
        scale_x, scale_y = xy[:, 2].max(), xy[:, 3].max()
        if sizes is not None and image_id in sizes.index:
            w, h = sizes.at[image_id, "width"], sizes.at[image_id, "height"]
            scale_x = max(scale_x, w) if w == w else scale_x
            scale_y = max(scale_y, h) if h == h else scale_y
        scale = np.array([scale_x, scale_y, scale_x, scale_y])
        readers = list(group["reader"].unique())
        box_list, score_list, label_list = [], [], []
        for reader in readers:
            mine = (group["reader"] == reader).to_numpy()
            box_list.append((xy[mine] / scale).tolist())
            score_list.append([1.0] * int(mine.sum()))
            label_list.append([finding_index[f] for f in group["finding"][mine]])
        if method == "wbf":
            fused, scores, labels = weighted_boxes_fusion(box_list, score_list, label_list, iou_thr=iou_thr)
        else:
            fused, scores, labels = nms(box_list, score_list, label_list, iou_thr=iou_thr)
            scores = _agreement(fused, box_list, label_list, labels, iou_thr)
        for box, score, label in zip(np.asarray(fused) * scale, scores, labels):
            rows.append({
                "image_id": image_id, "finding": findings[int(label)], "reader": "fused",
                **dict(zip(_COORDS, np.round(box, 2).tolist())),
                "score": min(float(score), 1.0),
            })
    out = pd.DataFrame(rows, columns=[*boxes.columns.drop("score", errors="ignore"), "score"])
    stats.fused += len(out)
    return out


def _agreement(fused, box_list, label_list, labels, iou_thr: float) -> list[float]:
    """Fraction of readers with a same-finding box overlapping each kept box above ``iou_thr``."""
    out = []
    for box, label in zip(fused, labels):
        hits = 0
        for reader_boxes, reader_labels in zip(box_list, label_list):
            hits += any(lab == label and iou(box, b) > iou_thr for b, lab in zip(reader_boxes, reader_labels))
        out.append(hits / len(box_list))
    return out


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x_min, y_min, x_max, y_max)`` boxes."""
    return float(pair_iou(np.asarray([a], dtype=float), np.asarray([b], dtype=float))[0])


def pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each row of ``a`` with the same row of ``b`` (boxes x_min, y_min, x_max, y_max)."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)
