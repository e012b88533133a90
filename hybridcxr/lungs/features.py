"""The lung fields as classifier inputs: the ``lungs`` feature group and the lung-field crop of the CNN.

Why: the fused classifier reads anatomy only through a CNN trained from scratch on a few hundred images, and
on real radiographs that learns little. The lung segmenter measures what radiologists read directly (how
much of the chest is aerated lung, left against right, how white each base is, how wide the heart's shadow
is), so those numbers go into the fusion as a group of their own; and the CNN can be shown only the lung
fields (their box with a margin), which is the "segment, crop, classify" workflow this replaces.

The vector is scale-free (areas over the image's area, sizes over its sides), so it means the same at
prepare's cached size and at a DICOM's full matrix. When the quality flag is raised (no plausible pair of
lungs) the values are zero and the last entry, ``missing``, is 1; the head learns what a failed
segmentation means instead of reading garbage.

>>> len(LUNG_FEATURES)
24
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hybridcxr.lungs.measures import SIDES, LungMeasures, measure_lungs

if TYPE_CHECKING:
    from hybridcxr.lungs.predict import Segmenter

#: Names of the ``lungs`` group's entries, in order (``missing`` last).
LUNG_FEATURES: tuple[str, ...] = (
    tuple(f"{s}_{m}" for s in SIDES for m in ("area_frac", "height_frac", "width_frac"))
    + ("left_right_area_ratio",)
    + tuple(f"{s}_{m}" for s in SIDES for m in ("mean", "std", "lower_mean", "lower_std"))
    + ("ctr_estimate", "ctr_profile", "thorax_width_frac", "box_x_min", "box_y_min", "box_x_max", "box_y_max",
       "lung_box_area_frac", "missing")
)
LUNG_DIM = len(LUNG_FEATURES)


def lung_vector(measures: LungMeasures, shape: tuple[int, int]) -> np.ndarray:
    """The ``lungs`` group of one image, float32 ``(LUNG_DIM,)``: zeros and ``missing = 1`` unless quality is ok."""
    out = np.zeros(LUNG_DIM, dtype=np.float32)
    if not measures.ok:
        out[-1] = 1.0
        return out
    h, w = shape
    v = {k: (0.0 if x is None else float(x)) for k, x in measures.values.items()}
    values: dict[str, float] = {}
    for s in SIDES:
        values |= {f"{s}_area_frac": v.get(f"{s}_area_px", 0) / (h * w),
                   f"{s}_height_frac": v.get(f"{s}_height_px", 0) / h, f"{s}_width_frac": v.get(f"{s}_width_px", 0) / w}
        values |= {f"{s}_{m}": v.get(f"{s}_{m}", 0.0) for m in ("mean", "std", "lower_mean", "lower_std")}
    x0, y0, x1, y1 = (v.get(k, 0.0) for k in ("box_x_min", "box_y_min", "box_x_max", "box_y_max"))
    values |= {"left_right_area_ratio": v.get("left_right_area_ratio", 0.0), "ctr_estimate": v.get("ctr_estimate", 0.0),
               "ctr_profile": v.get("ctr_profile", 0.0),
               "thorax_width_frac": v.get("thorax_width_px", 0.0) / w,
               "box_x_min": x0 / w, "box_y_min": y0 / h, "box_x_max": (x1 + 1) / w, "box_y_max": (y1 + 1) / h,
               "lung_box_area_frac": (x1 - x0 + 1) * (y1 - y0 + 1) / (h * w)}
    for k, name in enumerate(LUNG_FEATURES[:-1]):
        out[k] = values[name]
    return out


def crop_box(measures: LungMeasures, shape: tuple[int, int], margin: float) -> tuple[int, int, int, int] | None:
    """The lung-field box widened by ``margin`` (a fraction of its size, each side), clipped to the image;
    None when the quality flag is raised (the CNN then sees the whole radiograph)."""
    if not measures.ok:
        return None
    h, w = shape
    v = measures.values
    x0, y0, x1, y1 = (int(v[k]) for k in ("box_x_min", "box_y_min", "box_x_max", "box_y_max"))
    dx, dy = margin * (x1 - x0 + 1), margin * (y1 - y0 + 1)
    return (max(0, int(x0 - dx)), max(0, int(y0 - dy)), min(w, int(np.ceil(x1 + 1 + dx))),
            min(h, int(np.ceil(y1 + 1 + dy))))


def lung_inputs(segmenter: Segmenter, pixels: Sequence[np.ndarray], *, crop: bool,
                margin: float) -> tuple[np.ndarray, list[np.ndarray], list[LungMeasures]]:
    """Segment each image once: its ``lungs`` vectors ``(N, LUNG_DIM)``, the pixels the CNN should see (the
    lung-field crop when ``crop``, else the image itself) and the measurements."""
    vectors, seen, measured = [], [], []
    for image in pixels:
        m = measure_lungs(segmenter.predict(image), image, min_area=segmenter.config.min_area,
                          min_lung_share=segmenter.config.min_lung_share)
        vectors.append(lung_vector(m, image.shape))
        box = crop_box(m, image.shape, margin) if crop else None
        seen.append(image if box is None else image[box[1]:box[3], box[0]:box[2]])
        measured.append(m)
    return np.stack(vectors) if vectors else np.zeros((0, LUNG_DIM), np.float32), seen, measured


def segmenter_fingerprint(run: str | Path) -> str:
    """The first 16 hex digits of a lung run's weights SHA-256 (as its card records it)."""
    from hybridcxr.lungs.card import read_card

    return str(read_card(run)["weights_sha256"])[:16]
