"""Anatomy read from a lung mask: per lung area, height and width, the left/right ratio, intensity inside each
lung and its lower third, a cardiothoracic ratio *estimate*, the lung-field box, and a quality flag.

Sides are the patient's: on a frontal (PA or AP) radiograph shown as radiologists read it, the patient's left
is on the image's right. So the lung nearer the image's left edge is the **right** lung.

**Cardiothoracic ratio estimate.** The heart's shadow is the gap between the two lung masks, widest in their
lower half; the thorax is the widest outer extent of the lungs. The estimate is the widest gap between the
lungs' inner edges in the lower half of their vertical extent, counted only on rows where *both* lungs are
present (a row where one lung has already ended is not a gap, and was what made a naive estimate read about
0.75) and where neither lung is narrower than :data:`MIN_ROW_SHARE` of its own widest row (such a row is a
costophrenic tip below the heart, where the "gap" spans nearly the whole chest), divided by the widest outer
extent (the right lung's outer edge to the left lung's). It comes from lung
masks, not from a heart segmentation: mediastinal fat, a lung the mask cuts short or a rotated patient move it,
so read it as a feature, not a clinical CTR (whose cut-off is 0.5 on a PA film). It can only see the heart
where the masks stop at the heart's border: the V7 Labs masks of ``../shared/data/lung-masks`` (and so a model
trained on them) include the lung behind the heart, so there the gap is the mediastinum and spine (on those
hand-drawn masks the estimate is 0.22 for the median image, 0.48 at the 90th percentile); counting the
tips' rows too made it read large instead (median 0.59, 39% of images above 0.7). Masks that exclude the
heart (Montgomery, Shenzhen, JSRT/SCR) or the heart's borders found from the image are what a real CTR needs.

**Profile CTR** (:func:`ctr_profile`, ``ctr_profile``): the heart's borders found from the image. On each row
of the lungs' lower half where both lungs are present, the grey profile between the lungs' outer edges is
split at halfway between aerated lung (the outer half of each lung on that row) and the mediastinum (the
middle tenth); the dense span around the middle is the heart's shadow, and its width at the 90th percentile
of rows over the thorax is the estimate. It works whether or not the masks include the lung behind the heart.
With the segmenter of ``tools/bench_lungs.py`` on the 470 NIH images whose lungs pass the quality flag (41
with Cardiomegaly), its AUROC for Cardiomegaly is 0.696, against 0.477 for the mask-gap estimate (both
parameters were fixed before looking at NIH labels; ``tools/bench_lungs.py --nih`` prints the table).

**Quality flag.** ``"ok"``, or why the lungs found are implausible: a tiny total area, one lung missing (the
smaller holds too little of the two), an implausible shape (a lung wider than tall or far from lung-like, lungs
not side by side), or a view that is not frontal. Outputs then say so and give no measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SIDES = ("right", "left")
#: Shape limits of one lung on a frontal radiograph (generous: they catch failures, not disease).
MIN_ASPECT, MAX_ASPECT = 0.8, 5.0  # height / width of its box
MIN_FILL = 0.3  # area / box area
MIN_VERTICAL_OVERLAP = 0.5  # rows both lungs share / rows of the shorter
MAX_WIDTH_SHARE = 0.65  # one lung's width / the lungs' outer extent (each is about 0.45 of it)
#: A row counts for the CTR estimate only where each lung is at least this share of its widest row wide.
MIN_ROW_SHARE = 0.3
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
#: Column names of the measurements, in the order ``lungs.csv`` writes them.
COLUMNS = (
    ["right_area_px", "left_area_px", "right_area_cm2", "left_area_cm2",
     "box_x_min", "box_y_min", "box_x_max", "box_y_max"]
    + [f"{s}_{m}" for s in SIDES for m in ("height_px", "width_px", "height_mm", "width_mm")]
    + ["left_right_area_ratio"]
    + [f"{s}_{m}" for s in SIDES for m in ("mean", "std", "lower_mean", "lower_std")]
    + ["ctr_estimate", "heart_width_px", "thorax_width_px", "ctr_row", "ctr_profile", "heart_width_profile_px"]
)


@dataclass
class LungMeasures:
    """The measurements of one mask (``values``, all of :data:`COLUMNS` that could be computed) and ``quality``."""

    quality: str
    values: dict[str, float | int | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.quality == "ok"

    def record(self) -> dict[str, Any]:
        """The values to report: every column, None throughout when the quality flag is raised."""
        return {c: (self.values.get(c) if self.ok else None) for c in COLUMNS}


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(right, left)`` lung masks (the patient's sides) from a mask of both lungs.

    The two largest connected regions, ordered by their centre column; one region spanning both sides (lungs
    touching above the heart) is cut at its narrowest column in its middle 40% when that column is thin.
    """
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    labels, count = ndimage.label(mask)
    empty = np.zeros_like(mask)
    if count == 0:
        return empty, empty.copy()
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1] + 1
    if count >= 2:
        a, b = labels == order[0], labels == order[1]
    else:
        a, b = _cut(labels == order[0])
    if not b.any():
        return a, b
    ca, cb = np.nonzero(a)[1].mean(), np.nonzero(b)[1].mean()
    return (a, b) if ca < cb else (b, a)


def _cut(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One region as two halves at its thinnest middle column, or itself and nothing when it has no waist."""
    columns = region.sum(axis=0)
    xs = np.flatnonzero(columns)
    lo, hi = xs[0] + int(0.3 * (xs[-1] - xs[0])), xs[0] + int(0.7 * (xs[-1] - xs[0]))
    if hi <= lo:
        return region, np.zeros_like(region)
    at = lo + int(np.argmin(columns[lo:hi + 1]))
    if columns[at] > 0.15 * columns.max():
        return region, np.zeros_like(region)
    left_part, right_part = region.copy(), region.copy()
    left_part[:, at:] = False
    right_part[:, :at] = False
    return left_part, right_part


def ctr_estimate(right: np.ndarray, left: np.ndarray) -> dict[str, float | int] | None:
    """The cardiothoracic ratio estimate (see the module doc): ``ctr_estimate``, ``heart_width_px``,
    ``thorax_width_px`` and the row of the widest gap; None when no row of the lower half has both lungs.

    >>> r = np.zeros((10, 20), bool); lf = r.copy(); r[1:9, 2:8] = True; lf[1:9, 12:18] = True
    >>> ctr_estimate(r, lf)["heart_width_px"], ctr_estimate(r, lf)["thorax_width_px"]
    (4, 16)
    """
    right, left = np.asarray(right, bool), np.asarray(left, bool)
    both = _both_lung_rows(right, left)
    if not len(both):
        return None
    width = right.shape[1]
    inner_r = width - 1 - np.argmax(right[both, ::-1], axis=1)  # the right lung's last column, per row
    inner_l = np.argmax(left[both], axis=1)  # the left lung's first column
    gaps = np.maximum(inner_l - inner_r - 1, 0)
    widest = int(np.argmax(gaps))
    outer = int(np.flatnonzero(left.any(axis=0))[-1] - np.flatnonzero(right.any(axis=0))[0] + 1)
    return {"ctr_estimate": round(float(gaps[widest]) / outer, 4), "heart_width_px": int(gaps[widest]),
            "thorax_width_px": outer, "ctr_row": int(both[widest])}


def _both_lung_rows(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Rows of the lower half of the lungs' extent where both lungs are at least :data:`MIN_ROW_SHARE` of their
    widest row wide (no costophrenic tips, no row where one lung has ended)."""
    width_r, width_l = right.sum(axis=1), left.sum(axis=1)
    if not width_r.any() or not width_l.any():
        return np.zeros(0, dtype=int)
    rows = np.flatnonzero((width_r > 0) | (width_l > 0))
    lower = np.arange(right.shape[0]) >= (rows[0] + rows[-1]) / 2
    wide = (width_r >= max(1, MIN_ROW_SHARE * width_r.max())) & (width_l >= max(1, MIN_ROW_SHARE * width_l.max()))
    return np.flatnonzero(wide & lower)


#: The heart's width in the profile estimate: this quantile of the rows' dense-span widths (the widest
#: row alone is noise).
PROFILE_QUANTILE = 0.9


def ctr_profile(right: np.ndarray, left: np.ndarray, pixels: np.ndarray) -> dict[str, float | int] | None:
    """A cardiothoracic ratio estimate from the image's intensity between the lungs' outer edges, for masks
    that include the lung behind the heart (the V7 Labs masks) as well as masks that stop at its border.

    On each row of the lungs' lower half (where both lungs are present), the grey profile from the right lung's
    outer edge to the left lung's is smoothed; aerated lung is the median of the outer half of each lung on that
    row, the mediastinum the median of the middle tenth; the heart's shadow is the span around the middle that
    stays denser than halfway between the two. Its width at the :data:`PROFILE_QUANTILE` of rows, over the
    lungs' widest outer extent, is ``ctr_profile``. An estimate, not a heart segmentation.
    """
    from scipy import ndimage

    right, left = np.asarray(right, bool), np.asarray(left, bool)
    rows = _both_lung_rows(right, left)
    if not len(rows):
        return None
    x0 = int(np.flatnonzero(right.any(axis=0))[0])
    x1 = int(np.flatnonzero(left.any(axis=0))[-1])
    outer = x1 - x0 + 1
    profile = ndimage.uniform_filter1d(pixels[rows, x0:x1 + 1].astype(np.float32), max(3, outer // 50), axis=1)
    middle = outer // 2
    band = max(1, outer // 20)
    widths = []
    for k, row in enumerate(rows):
        r_cols = np.flatnonzero(right[row, x0:x1 + 1])
        l_cols = np.flatnonzero(left[row, x0:x1 + 1])
        aerated = np.median(np.r_[profile[k, r_cols[: max(1, len(r_cols) // 2)]],
                                  profile[k, l_cols[len(l_cols) // 2:]]])
        dense = np.median(profile[k, max(0, middle - band):middle + band + 1])
        if dense <= aerated:
            continue
        above = profile[k] > (aerated + dense) / 2
        a = middle - int(np.argmin(above[middle::-1])) if not above[middle::-1].all() else 0
        b = middle + int(np.argmin(above[middle:])) if not above[middle:].all() else outer
        widths.append(b - a)
    if not widths:
        return None
    width = int(round(float(np.quantile(widths, PROFILE_QUANTILE))))
    return {"ctr_profile": round(width / outer, 4), "heart_width_profile_px": width}


def _extent(lung: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(lung)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _side_values(side: str, lung: np.ndarray, pixels: np.ndarray | None,
                 spacing: tuple[float, float] | None) -> dict[str, Any]:
    """Area, extents and intensities of one lung (``lung`` not empty)."""
    x0, y0, x1, y1 = _extent(lung)
    height, width = y1 - y0 + 1, x1 - x0 + 1
    area = int(lung.sum())
    out: dict[str, Any] = {f"{side}_area_px": area, f"{side}_height_px": height, f"{side}_width_px": width}
    if spacing is not None:
        out |= {f"{side}_area_cm2": round(area * spacing[0] * spacing[1] / 100, 2),
                f"{side}_height_mm": round(height * spacing[0], 1), f"{side}_width_mm": round(width * spacing[1], 1)}
    if pixels is not None:
        inside = pixels[lung]
        lower = lung.copy()
        lower[: y1 + 1 - max(1, height // 3)] = False
        below = pixels[lower]
        out |= {f"{side}_mean": round(float(inside.mean()), 4), f"{side}_std": round(float(inside.std()), 4),
                f"{side}_lower_mean": round(float(below.mean()), 4), f"{side}_lower_std": round(float(below.std()), 4)}
    return out


def _quality(right: np.ndarray, left: np.ndarray, view: str | None, min_area: float, min_lung_share: float) -> str:
    """"ok", or the first reason the lungs found are implausible."""
    if view is not None and str(view).upper().replace(" ", "") in LATERAL_VIEWS:
        return f"not a frontal view (view {view}): lung measurements need a PA or AP radiograph"
    total = right.sum() + left.sum()
    if total < min_area * right.size:
        return f"tiny lung area: the lungs found cover {100 * total / right.size:.1f}% of the image"
    if not right.any() or not left.any() or min(right.sum(), left.sum()) < min_lung_share * total:
        return "one lung missing: only one lung field was found"
    boxes = [_extent(lung) for lung in (right, left)]
    for side, lung, (x0, y0, x1, y1) in zip(SIDES, (right, left), boxes):
        height, width = y1 - y0 + 1, x1 - x0 + 1
        if not MIN_ASPECT <= height / width <= MAX_ASPECT or lung.sum() < MIN_FILL * height * width:
            return f"implausible shape: the {side} lung's outline is not lung-like"
    outer = boxes[1][2] - boxes[0][0] + 1
    if max(b[2] - b[0] + 1 for b in boxes) > MAX_WIDTH_SHARE * outer:
        return "implausible shape: one lung spans most of the chest's width"
    shared = min(boxes[0][3], boxes[1][3]) - max(boxes[0][1], boxes[1][1]) + 1
    if shared < MIN_VERTICAL_OVERLAP * min(b[3] - b[1] + 1 for b in boxes):
        return "implausible shape: the two lungs are not side by side"
    return "ok"


def measure_lungs(mask: np.ndarray, pixels: np.ndarray | None = None, *,
                  spacing: tuple[float, float] | None = None, view: str | None = None,
                  min_area: float = 0.05, min_lung_share: float = 0.15) -> LungMeasures:
    """Measure a mask of both lungs (``pixels``, the radiograph's [0, 1] grey values of the same shape, give the
    intensities; ``spacing``, (row, column) mm, the physical sizes). ``min_area`` and ``min_lung_share`` are the
    quality rules of ``configs/lungs.yaml``."""
    mask = np.asarray(mask, bool)
    if pixels is not None and pixels.shape != mask.shape:
        raise ValueError(f"pixels {pixels.shape} and mask {mask.shape} differ in shape")
    right, left = split_lungs(mask)
    quality = _quality(right, left, view, min_area, min_lung_share)
    values: dict[str, Any] = {}
    for side, lung in zip(SIDES, (right, left)):
        if lung.any():
            values |= _side_values(side, lung, pixels, spacing)
    if mask.any():
        x0, y0, x1, y1 = _extent(mask)
        values |= {"box_x_min": x0, "box_y_min": y0, "box_x_max": x1, "box_y_max": y1}
    if right.any() and left.any():
        values["left_right_area_ratio"] = round(values["left_area_px"] / values["right_area_px"], 4)
    values |= ctr_estimate(right, left) or {}
    if pixels is not None:
        values |= ctr_profile(right, left, pixels) or {}
    return LungMeasures(quality, values)
