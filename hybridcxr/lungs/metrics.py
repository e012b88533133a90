"""Overlap of a predicted lung mask with the truth: Dice and IoU, per image (two empty masks agree fully)."""

from __future__ import annotations

import numpy as np


def dice_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice (2|P∩T| / (|P| + |T|)) and IoU (|P∩T| / |P∪T|) of two boolean masks of one shape.

    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> dice_iou(a, a), dice_iou(a, ~a)
    ((1.0, 1.0), (0.0, 0.0))
    """
    p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
    if p.shape != t.shape:
        raise ValueError(f"masks of different shapes: {p.shape} and {t.shape}")
    inter, total, union = np.logical_and(p, t).sum(), p.sum() + t.sum(), np.logical_or(p, t).sum()
    if union == 0:
        return 1.0, 1.0
    return float(2 * inter / total), float(inter / union)


def batch_dice_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of ``(N, H, W)`` boolean stacks."""
    p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
    axes = tuple(range(1, p.ndim))
    inter = np.logical_and(p, t).sum(axis=axes)
    total, union = p.sum(axis=axes) + t.sum(axis=axes), np.logical_or(p, t).sum(axis=axes)
    dice = np.where(union == 0, 1.0, 2 * inter / np.maximum(total, 1))
    iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return dice.astype(float), iou.astype(float)
