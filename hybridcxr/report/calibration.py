"""How honest a classifier's probabilities are: expected calibration error, Brier score, reliability diagram.

ECE is the field's usual binary form per finding: ten equal-width probability bins, the bin-size-weighted mean
of |observed positive rate - mean predicted probability| (Guo et al., 2017; Naeini et al., 2015). The Brier
score is the mean squared difference between probability and label. Both skip unlabelled (NaN) entries; both
are computed before and after calibration on the same images, so the table shows what calibration did.

>>> expected_calibration_error(np.array([0.0, 1.0, 1.0, 0.0]), np.array([0.1, 0.9, 0.8, 0.3]))
0.175
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

#: Equal-width probability bins of the ECE and of the reliability diagram.
BINS = 10


def _known(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(labels)
    return np.asarray(labels, np.float64)[keep], np.asarray(scores, np.float64)[keep]


def _bin_index(scores: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each probability, ``[0, 1/bins)``, ..., ``[1 - 1/bins, 1]`` (1.0 in the last bin)."""
    return np.minimum((scores * bins).astype(int), bins - 1)


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = BINS) -> float:
    """ECE of one finding (NaN when no image is labelled)."""
    y, p = _known(labels, scores)
    if not len(y):
        return float("nan")
    index = _bin_index(p, bins)
    total = 0.0
    for b in np.unique(index):
        inside = index == b
        total += inside.sum() / len(y) * abs(y[inside].mean() - p[inside].mean())
    return round(float(total), 10)


def brier_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean squared error between probability and label of one finding (NaN when no image is labelled)."""
    y, p = _known(labels, scores)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def calibration_table(y_true: np.ndarray, before: np.ndarray, after: np.ndarray,
                      findings: Sequence[str]) -> pd.DataFrame:
    """ECE and Brier score per finding, before and after calibration, and their macro means."""
    rows = []
    for c, finding in enumerate(findings):
        rows.append({"finding": finding,
                     "ece_before": expected_calibration_error(y_true[:, c], before[:, c]),
                     "ece_after": expected_calibration_error(y_true[:, c], after[:, c]),
                     "brier_before": brier_score(y_true[:, c], before[:, c]),
                     "brier_after": brier_score(y_true[:, c], after[:, c])})
    table = pd.DataFrame(rows)
    mean = table.drop(columns="finding").mean(skipna=True)
    return pd.concat([table, pd.DataFrame([{"finding": "macro mean", **mean.to_dict()}])], ignore_index=True)


def plot_reliability(y_true: np.ndarray, before: np.ndarray, after: np.ndarray, path: str | Path,
                     title: str = "") -> Path:
    """Reliability diagram of all labelled image-finding pairs pooled: observed positive rate per probability
    bin, before (grey) and after (blue) calibration, with the diagonal of perfect calibration and the pairs per
    bin below."""
    from hybridcxr.report.plots import pyplot, save_figure

    plt = pyplot()
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    width = 1 / BINS
    for scores, label, style in ((before, "before calibration", "o-"), (after, "after calibration", "s-")):
        y, p = _known(np.asarray(y_true).ravel(), np.asarray(scores).ravel())
        index = _bin_index(p, BINS)
        used = np.unique(index)
        ax.plot([p[index == b].mean() for b in used], [y[index == b].mean() for b in used], style,
                color="0.55" if "before" in label else "tab:blue",
                label=f"{label}, ECE {expected_calibration_error(y, p):.3f}")
        counts.bar((np.arange(BINS) + 0.5) * width + (-0.2 if "before" in label else 0.2) * width,
                   np.bincount(index, minlength=BINS), width=0.4 * width,
                   color="0.55" if "before" in label else "tab:blue")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed positive rate", title=title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    counts.set(xlabel="predicted probability", ylabel="pairs")
    return save_figure(fig, path)
