"""Image-resampled (bootstrap) VinDr mAP: how sure a validation split is that one prediction set beats another.

A gating rule is chosen on a few dozen validation images (:func:`hybridcxr.detect.gating.choose_rule`); a gain
of 0.02 there can be one image's luck (on the demo's phantoms a rule that gained 0.019 on validation lost 0.019
on test). Resampling the images with replacement and scoring both prediction sets on every resample gives the
spread of the paired gain. Matching never crosses images, so each set is matched once
(:func:`~hybridcxr.detect.metrics.class_matches`) and a resample only re-weights the ranked predictions and the
truth counts by how often each image was drawn: the VOC2010 all-points AP of the weighted lists equals the AP
of the resampled set itself, wherever tied scores come from one image (tested). All resamples are computed
at once, in numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from hybridcxr.detect.metrics import class_matches

N_BOOT = 200
SEED = 0
CELLS = 2_000_000  # (resample, prediction) cells computed at once


def weighted_map(matches: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], weights: np.ndarray) -> np.ndarray:
    """``(B,)`` mAP of one prediction set under ``weights`` ``(B, n_images)``, each row how often every image
    counts, columns in the order of the image ids sorted (the codes of ``matches``; all ones: the plain mAP).
    A class absent from a resample (no truth box drawn) is left out of that resample's mean, as
    :func:`~hybridcxr.detect.metrics.evaluate_detections` leaves out classes without truth."""
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    aps = [_chunked_ap(pred_img, tp, gt_img, weights) for pred_img, tp, gt_img in matches.values()]
    stacked = np.vstack(aps) if aps else np.full((1, len(weights)), np.nan)
    present = ~np.isnan(stacked)
    counts = present.sum(axis=0)
    total = np.where(present, stacked, 0.0).sum(axis=0)
    return np.divide(total, counts, out=np.full(len(weights), np.nan), where=counts > 0)


def _chunked_ap(pred_img: np.ndarray, tp: np.ndarray, gt_img: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`_weighted_ap` over blocks of weight rows, each at most :data:`CELLS` (resample, prediction) cells:
    a VinDr-sized split (some 30,000 predictions of a class) stays within tens of MB."""
    rows = max(1, CELLS // max(len(pred_img), 1))
    return np.concatenate([_weighted_ap(pred_img, tp, gt_img, weights[i:i + rows])
                           for i in range(0, len(weights), rows)])


def _weighted_ap(pred_img: np.ndarray, tp: np.ndarray, gt_img: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """VOC2010 all-points AP of one class per weight row (NaN where no truth box has weight)."""
    n_gt = weights[:, gt_img].sum(axis=1)
    ap = np.full(len(weights), np.nan)
    has = n_gt > 0
    if not has.any():
        return ap
    w = weights[has][:, pred_img]
    ctp, cfp = np.cumsum(w * tp, axis=1), np.cumsum(w * ~tp, axis=1)
    recall = ctp / n_gt[has, None]
    precision = np.divide(ctp, ctp + cfp, out=np.zeros_like(ctp), where=(ctp + cfp) > 0)
    zero, one = np.zeros((len(w), 1)), np.ones((len(w), 1))
    mrec = np.hstack([zero, recall, one])
    mpre = np.maximum.accumulate(np.hstack([zero, precision, zero])[:, ::-1], axis=1)[:, ::-1]
    ap[has] = np.sum((mrec[:, 1:] - mrec[:, :-1]) * mpre[:, 1:], axis=1)
    return ap


def paired_gain(better: pd.DataFrame, baseline: pd.DataFrame, truth: pd.DataFrame, findings: Sequence[str],
                image_ids: Sequence[str], iou_thr: float = 0.4, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """``(n_boot,)`` mAP@``iou_thr`` of ``better`` minus that of ``baseline`` on the same image resamples."""
    ids = list(dict.fromkeys(str(i) for i in image_ids))  # one weight column per image
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=n_boot).astype(float)
    a, b = (weighted_map(class_matches(t, truth, findings, ids, iou_thr), weights) for t in (better, baseline))
    return a - b
