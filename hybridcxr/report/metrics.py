"""Multi-label classification metrics the way chest X-ray papers compute them.

- **AUROC** per finding is scikit-learn's ``roc_auc_score`` on that finding's column (ties count one half).
  A finding whose evaluated images are all positive or all negative has no AUROC: it is NaN, named in the
  series' ``attrs["notes"]`` and in one :class:`~hybridcxr.errors.DataWarning`, and left out of the macro
  mean (as CheXNet, CheXpert and torchxrayvision do). The micro AUROC pools every (image, finding) pair.
- **Confidence intervals** are percentile bootstrap intervals over *images* (all findings of an image are
  drawn together, as in the CheXpert and VinDr-CXR papers); a resample in which a finding has one label value
  only is skipped for that finding, and ``n_boot`` in the table says how many resamples counted.
- **Thresholds** turn scores into decisions: an image is positive when ``score >= threshold``. They are
  chosen on validation data by maximum F1 or Youden's J, and stored in the model card.

Labels are 0/1; NaN marks an image not labelled for a finding (it is left out of that finding's metrics).
Scores must be finite (probabilities or logits: AUROC only depends on their order).

>>> y = np.array([[0], [0], [1], [1]]); s = np.array([[0.1], [0.4], [0.35], [0.8]])
>>> float(per_class_auroc(y, s, ["Cardiomegaly"])["Cardiomegaly"])
0.75
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from hybridcxr.errors import DataWarning

ThresholdRule = Literal["f1", "youden"]

#: Threshold used for a finding whose validation labels cannot choose one (one label value only).
DEFAULT_THRESHOLD = 0.5
# The bootstrap draws at most this many (resample, image) counts at once, bounding its memory.
_BOOTSTRAP_CELLS = 4_000_000


def per_class_auroc(y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str]) -> pd.Series:
    """AUROC of every finding (``roc_auc_score`` per column); NaN where a finding has one label value only.

    Args:
        y_true: ``(N, C)`` labels, 0/1 (NaN: not labelled).
        y_score: ``(N, C)`` scores.
        findings: the ``C`` finding names, in column order.

    Returns:
        A series named ``"auroc"`` indexed by finding; ``attrs["notes"]`` explains every NaN.
    """
    yt, ys, findings = _check(y_true, y_score, findings)
    values, notes = [], []
    for c, finding in enumerate(findings):
        known = ~np.isnan(yt[:, c])
        labels = yt[known, c]
        n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
        if n_pos == 0 or n_neg == 0:
            values.append(np.nan)
            notes.append(f"{finding}: AUROC undefined, {n_pos} positive and {n_neg} negative images")
        else:
            values.append(float(roc_auc_score(labels, ys[known, c])))
    if notes:
        warnings.warn(DataWarning("; ".join(notes)), stacklevel=2)
    series = pd.Series(values, index=pd.Index(findings, name="finding"), name="auroc", dtype=float)
    series.attrs["notes"] = notes
    return series


def macro_auroc(y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str] | None = None) -> float:
    """Mean of the per-finding AUROCs over the findings where it is defined (NaN if none is)."""
    per_class = per_class_auroc(y_true, y_score, names_for(findings, y_true))
    defined = per_class.dropna()
    return float(defined.mean()) if len(defined) else float("nan")


def micro_auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AUROC of all (image, finding) pairs pooled; NaN where the pooled labels have one value only."""
    yt, ys, _ = _check(y_true, y_score, None)
    known = ~np.isnan(yt)
    labels = yt[known]
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, ys[known]))


def bootstrap_auroc_ci(y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str], n_boot: int = 1000,
                       seed: int = 0, alpha: float = 0.05, macro: bool = False,
                       groups: Sequence[Any] | None = None) -> pd.DataFrame:
    """Per-finding AUROC with a percentile bootstrap confidence interval over images (or patients).

    Each resample draws ``N`` images with replacement (the same draw for every finding, keeping their
    correlation). With ``groups`` (e.g. patient ids) it draws groups instead, each drawn group bringing all
    its images: the cluster bootstrap, which keeps the intervals honest where a patient has several images. Resample AUROCs are computed from the draw counts without materialising the resample:
    per finding the scores are sorted once, and each resample's Mann-Whitney statistic is a weighted sum over
    the tied-score groups, which equals ``roc_auc_score`` on the resampled rows.

    Args:
        y_true: ``(N, C)`` labels, 0/1 (NaN: not labelled).
        y_score: ``(N, C)`` scores.
        findings: the ``C`` finding names.
        n_boot: number of resamples.
        seed: seed of the resampling; the same seed gives the same intervals.
        alpha: 1 - confidence level (0.05: 95 % intervals).
        macro: also add a row ``"macro"``: the macro AUROC, with resamples counted only where every finding
            defined on the full data is defined.
        groups: ``N`` group labels (patients); None resamples images.

    Returns:
        Columns ``finding, auroc, ci_low, ci_high, n_pos, n_neg, n_boot`` (``n_boot``: resamples that
        counted). ``auroc`` is the estimate on all images; NaN rows for findings without an AUROC.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    yt, ys, findings = _check(y_true, y_score, findings)
    point = per_class_auroc(yt, ys, findings)
    n, n_classes = yt.shape
    boots = np.full((n_boot, n_classes), np.nan)
    rng = np.random.default_rng(seed)
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} group labels for {n} rows of scores")
        group_of = pd.factorize(pd.Series(list(groups), dtype=object))[0]
        missing = group_of < 0  # no id: the image is its own cluster
        group_of[missing] = group_of.max(initial=-1) + 1 + np.arange(int(missing.sum()))
        n_units = int(group_of.max()) + 1 if n else 0
    else:
        group_of, n_units = None, n
    chunk = max(1, _BOOTSTRAP_CELLS // max(n, 1))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        draws = rng.integers(0, n_units, size=(size, n_units))
        counts = np.bincount((draws + n_units * np.arange(size)[:, None]).ravel(), minlength=size * n_units)
        counts = counts.reshape(size, n_units).astype(np.float64)
        if group_of is not None:  # every image counts as often as its group was drawn
            counts = counts[:, group_of]
        for c in range(n_classes):
            if not np.isnan(point.iloc[c]):
                boots[start:start + size, c] = _weighted_auroc(ys[:, c], yt[:, c], counts)
    rows = []
    for c, finding in enumerate(findings):
        labels = yt[:, c]
        rows.append(_ci_row(finding, float(point.iloc[c]), boots[:, c], alpha,
                            int((labels == 1).sum()), int((labels == 0).sum())))
    if macro:
        defined = ~np.isnan(point.to_numpy())
        per_boot = boots[:, defined].mean(axis=1) if defined.any() else np.full(n_boot, np.nan)
        estimate = float(point[defined].mean()) if defined.any() else float("nan")
        rows.append(_ci_row("macro", estimate, per_boot, alpha, int((yt == 1).sum()), int((yt == 0).sum())))
    return pd.DataFrame(rows, columns=["finding", "auroc", "ci_low", "ci_high", "n_pos", "n_neg", "n_boot"])


def choose_thresholds(y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str],
                      rule: ThresholdRule = "f1") -> dict[str, float]:
    """Per-finding decision thresholds chosen on validation data.

    Every distinct score is a candidate (positive when ``score >= threshold``); ``"f1"`` takes the one with
    the highest F1, ``"youden"`` the one with the highest sensitivity + specificity - 1. Ties go to the
    higher threshold (fewer false positives). A finding with one label value only gets
    :data:`DEFAULT_THRESHOLD` and one :class:`~hybridcxr.errors.DataWarning`.

    Returns:
        ``{finding: threshold}`` as plain floats (JSON-ready for the model card).
    """
    if rule not in ("f1", "youden"):
        raise ValueError(f"unknown threshold rule {rule!r}; choose f1 or youden")
    yt, ys, findings = _check(y_true, y_score, findings)
    chosen: dict[str, float] = {}
    fallback = []
    for c, finding in enumerate(findings):
        known = ~np.isnan(yt[:, c])
        labels, scores = yt[known, c], ys[known, c]
        n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
        if n_pos == 0 or n_neg == 0:
            chosen[finding] = DEFAULT_THRESHOLD
            fallback.append(finding)
            continue
        order = np.argsort(-scores, kind="mergesort")
        scores, labels = scores[order], labels[order]
        last = np.r_[scores[1:] != scores[:-1], True]  # last row of each tied group: everything above is in
        tp = np.cumsum(labels == 1)[last].astype(np.float64)
        fp = np.cumsum(labels == 0)[last].astype(np.float64)
        candidates = scores[last]
        if rule == "f1":
            gain = 2 * tp / (2 * tp + fp + (n_pos - tp))
        else:
            gain = tp / n_pos - fp / n_neg
        chosen[finding] = float(candidates[int(np.argmax(gain))])
    if fallback:
        warnings.warn(DataWarning(f"threshold {DEFAULT_THRESHOLD} used for findings with one label value only: "
                                  f"{', '.join(fallback)}"), stacklevel=2)
    return chosen


def threshold_metrics(y_true: np.ndarray, y_score: np.ndarray,
                      thresholds: Mapping[str, float] | Sequence[float] | float,
                      findings: Sequence[str]) -> pd.DataFrame:
    """Precision, recall (sensitivity), F1 and specificity per finding at given thresholds.

    An image is called positive when ``score >= threshold``. A metric whose denominator is zero (precision
    with no positive call, recall with no positive label, specificity with no negative label) is NaN rather
    than a misleading 0 or 1.

    Args:
        y_true: ``(N, C)`` labels, 0/1 (NaN: not labelled).
        y_score: ``(N, C)`` scores.
        thresholds: ``{finding: threshold}`` (e.g. from :func:`choose_thresholds`), one per column, or one
            for all.
        findings: the ``C`` finding names.

    Returns:
        Columns ``finding, threshold, precision, recall, f1, specificity, support, tp, fp, fn, tn``
        (``support``: positive labels).
    """
    yt, ys, findings = _check(y_true, y_score, findings)
    if isinstance(thresholds, Mapping):
        missing = [f for f in findings if f not in thresholds]
        if missing:
            raise ValueError(f"no threshold for {', '.join(missing)}")
        thr = np.array([float(thresholds[f]) for f in findings])
    else:
        thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(findings),)).copy()
    called = ys >= thr
    positive, negative = yt == 1, yt == 0
    tp = (called & positive).sum(axis=0)
    fp = (called & negative).sum(axis=0)
    fn = (~called & positive).sum(axis=0)
    tn = (~called & negative).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
    return pd.DataFrame({
        "finding": list(findings), "threshold": thr, "precision": precision, "recall": recall, "f1": f1,
        "specificity": specificity, "support": tp + fn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    })


# ---------------------------------------------------------------------------------------------- helpers


def _weighted_auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one finding under each row of ``weights`` (B, N): image ``i`` counted ``weights[b, i]`` times.

    Equals ``roc_auc_score(labels, scores, sample_weight=weights[b])``; NaN where a row leaves one label
    value only.
    """
    known = ~np.isnan(labels)
    order = np.argsort(scores[known], kind="mergesort")
    s, y, w = scores[known][order], labels[known][order], weights[:, known][:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w_pos = np.add.reduceat(w * (y == 1), starts, axis=1)
    w_neg = np.add.reduceat(w * (y == 0), starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg
    pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    wins = (w_pos * (below + 0.5 * w_neg)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def _ci_row(finding: str, estimate: float, boots: np.ndarray, alpha: float, n_pos: int, n_neg: int) -> dict:
    valid = boots[~np.isnan(boots)]
    if np.isnan(estimate) or valid.size == 0:
        low = high = float("nan")
    else:
        low, high = (float(q) for q in np.quantile(valid, [alpha / 2, 1 - alpha / 2]))
    return {"finding": finding, "auroc": estimate, "ci_low": low, "ci_high": high, "n_pos": n_pos,
            "n_neg": n_neg, "n_boot": int(valid.size)}


def labels_array(labels: np.ndarray) -> np.ndarray:
    """Labels as float64 ``(N, C)``; raises ValueError for anything but 0, 1 and NaN (not labelled)."""
    yt = np.asarray(labels, dtype=np.float64)
    if yt.ndim == 1:
        yt = yt[:, None]
    if yt.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {yt.shape}")
    odd = ~np.isnan(yt) & (yt != 0) & (yt != 1)
    if odd.any():
        raise ValueError(f"labels must be 0, 1 or NaN (not labelled), found {np.unique(yt[odd])[:5].tolist()}")
    return yt


def _check(y_true: np.ndarray, y_score: np.ndarray,
           findings: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    yt = labels_array(y_true)
    ys = np.asarray(y_score, dtype=np.float64)
    if ys.ndim == 1:
        ys = ys[:, None]
    if ys.shape != yt.shape:
        raise ValueError(f"y_true {yt.shape} and y_score {ys.shape} must have the same shape")
    if not np.isfinite(ys).all():
        raise ValueError("y_score holds NaN or infinite values")
    names = names_for(findings, yt)
    if len(names) != yt.shape[1]:
        raise ValueError(f"{len(names)} finding names for {yt.shape[1]} columns")
    return yt, ys, names


def names_for(findings: Iterable[str] | None, y: np.ndarray) -> tuple[str, ...]:
    """Finding names for the columns of ``y``: the given ones, else ``column 0``, ``column 1``, ..."""
    if findings is not None:
        return tuple(str(f) for f in findings)
    width = 1 if np.ndim(y) == 1 else np.shape(y)[1]
    return tuple(f"column {c}" for c in range(width))
