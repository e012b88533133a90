"""Pictures of a classifier's results: ROC and precision-recall curves per finding, training curves.

Each finding keeps its overlay colour (:func:`hybridcxr.findings.colour`); with more than six findings the
curves go into small multiples, one panel per finding, so fourteen curves stay readable. Unlabelled entries
(NaN) are left out per finding; a finding whose labels are all one value has no curve and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hybridcxr.files import atomic_path
from hybridcxr.findings import colour


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def _columns(y_true: np.ndarray, y_score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Labelled rows of finding ``k``; None when only one label value is present."""
    keep = ~np.isnan(y_true[:, k])
    t, s = y_true[keep, k], y_score[keep, k]
    return None if len(np.unique(t)) < 2 else (t, s)


def _grid(n: int):
    plt = _pyplot()
    cols = 1 if n <= 6 else 4
    rows = 1 if n <= 6 else math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols if cols > 1 else 6.5, 3.6 * rows if cols > 1 else 5.5),
                             squeeze=False, constrained_layout=True)
    return fig, list(axes.ravel()), cols == 1


def _curves(kind: str, y_true, y_score, findings: Sequence[str], path, title: str | None) -> Path:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    fig, axes, single = _grid(len(findings))
    for k, finding in enumerate(findings):
        ax = axes[0] if single else axes[k]
        data = _columns(y_true, y_score, k)
        if data is None:
            if not single:
                ax.text(0.5, 0.5, "one label value only:\nno curve", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(finding, fontsize=10)
            continue
        t, s = data
        if kind == "roc":
            fpr, tpr, _ = roc_curve(t, s)
            ax.plot(fpr, tpr, color=colour(finding, findings), lw=2,
                    label=f"{finding}: AUROC {roc_auc_score(t, s):.3f} (n+={int(t.sum())})")
        else:
            precision, recall, _ = precision_recall_curve(t, s)
            ax.plot(recall, precision, color=colour(finding, findings), lw=2,
                    label=f"{finding}: AP {average_precision_score(t, s):.3f} (n+={int(t.sum())})")
            ax.axhline(t.mean(), color=colour(finding, findings), lw=0.8, ls=":")
        if not single:
            ax.set_title(finding, fontsize=10)
            ax.legend(fontsize=8, loc="lower right" if kind == "roc" else "lower left", frameon=False)
    for ax in axes[:len(findings)] if not single else axes[:1]:
        if kind == "roc":
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            ax.set(xlabel="1 - specificity", ylabel="sensitivity")
        else:
            ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)")
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    for ax in axes[len(findings):] if not single else []:
        ax.set_axis_off()
    if single:
        axes[0].legend(fontsize=8, loc="lower right" if kind == "roc" else "lower left", frameon=False)
    name = "ROC curves" if kind == "roc" else "Precision-recall curves (dotted: prevalence)"
    fig.suptitle(f"{title} - {name}" if title else name)
    return _save(fig, path)


def plot_roc_curves(y_true, y_score, findings: Sequence[str], path: str | Path, title: str | None = None) -> Path:
    """One ROC curve per finding (AUROC and positives in the legend) as a PNG."""
    return _curves("roc", y_true, y_score, findings, path, title)


def plot_pr_curves(y_true, y_score, findings: Sequence[str], path: str | Path, title: str | None = None) -> Path:
    """One precision-recall curve per finding (average precision, prevalence line) as a PNG."""
    return _curves("pr", y_true, y_score, findings, path, title)


def plot_classifier_history(history: pd.DataFrame, path: str | Path) -> Path:
    """Training and validation loss and validation macro AUROC per epoch, best epoch marked, as a PNG."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    epochs = history["epoch"]
    left.plot(epochs, history["train_loss"], marker="o", ms=2, label="train")
    left.plot(epochs, history["val_loss"], marker="o", ms=2, label="validation")
    left.set(title="weighted BCE loss", xlabel="epoch")
    left.legend(frameon=False)
    right.plot(epochs, history["val_macro_auroc"], marker="o", ms=2, color="#0072B2")
    best = history.loc[history["val_macro_auroc"].idxmax()]
    right.axvline(best["epoch"], color="grey", ls="--", lw=0.8)
    right.annotate(f"best {best['val_macro_auroc']:.3f} (epoch {int(best['epoch'])})",
                   (best["epoch"], best["val_macro_auroc"]), textcoords="offset points", xytext=(6, -14), fontsize=9)
    right.set(title="validation macro AUROC", xlabel="epoch", ylim=(0.4, 1.0))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle("hybridcxr fusion classifier training")
    return _save(fig, path)
