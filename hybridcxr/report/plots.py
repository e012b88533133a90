"""Pictures of a classifier's results: ROC and precision-recall curves per finding, training curves.

Each finding keeps its overlay colour (:func:`hybridcxr.findings.colour`). Up to six findings share one
axis with a legend; more go into small multiples, one square panel per finding (five columns for
VinDr-CXR's or NIH's fourteen), so every curve stays readable. Unlabelled entries (NaN) are left out per
finding; a finding whose labelled images are all one value has no curve and says so where its curve would be.
AUROCs come from :func:`hybridcxr.report.metrics.per_class_auroc`, so a figure and its table always agree.

>>> _grid_shape(14), _grid_shape(8), _grid_shape(4)
((3, 5), (2, 4), (1, 1))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hybridcxr.errors import DataWarning
from hybridcxr.files import atomic_path
from hybridcxr.findings import colour
from hybridcxr.report.metrics import _check, per_class_auroc, threshold_metrics

#: Up to this many findings share one axis; more get one panel each.
MAX_SINGLE_AXIS = 6
#: Resolution of every PNG written here (a 3-inch panel is ~450 px: sharp in a PDF supplement).
DPI = 150

_ROC_LABELS = ("1 - specificity (false-positive rate)", "sensitivity (true-positive rate)")
_PR_LABELS = ("recall (sensitivity)", "precision (positive predictive value)")


@dataclass(frozen=True)
class _CurveKind:
    """What the ROC and the precision-recall figures differ in, apart from how a curve is computed."""

    name: str  # "roc" or "pr"
    title: str
    axis_labels: tuple[str, str]
    reference: str  # the reference line, as the key of a small-multiples figure names it
    drawstyle: str  # precision-recall as steps, as average precision sums them (and sklearn's display draws it)
    panel_legend: str  # where a panel's legend goes


_KINDS = {
    "roc": _CurveKind("roc", "ROC curves", _ROC_LABELS, "dashed: chance", "default", "lower right"),
    "pr": _CurveKind("pr", "Precision-recall curves", _PR_LABELS, "dotted: prevalence", "steps-post", "best"),
}


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend (imported late: plotting is optional).

    Call it before any other library touches pyplot, so no figure ever needs a display.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as ``path`` atomically and close it (a reader never sees half a PNG; no figure leaks)."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return Path(path)


def _grid_shape(n: int) -> tuple[int, int]:
    """(rows, columns) of the panels for ``n`` findings: one axis up to six, else 4 or 5 columns, fewest gaps."""
    if n <= MAX_SINGLE_AXIS:
        return 1, 1
    cols = min((4, 5), key=lambda c: (math.ceil(n / c) * c - n, c))
    return math.ceil(n / cols), cols


def _why_no_curve(labels: np.ndarray) -> str:
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    if n_pos + n_neg == 0:
        return "no labelled images"
    return f"only {'negatives' if n_pos == 0 else 'positives'} ({n_pos + n_neg} images)"


def _curves(kind: str, y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str], path: str | Path,
            title: str | None, thresholds: Mapping[str, float] | None) -> Path:
    """The figure of :func:`plot_roc_curves` (``kind`` "roc") or :func:`plot_pr_curves` ("pr")."""
    spec = _KINDS[kind]
    yt, ys, names = _check(y_true, y_score, findings)
    if not names:
        raise ValueError("no findings to plot")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # an undefined AUROC is drawn as "no curve" below
        auroc = per_class_auroc(yt, ys, names)
    operating = None
    if thresholds is not None:
        operating = threshold_metrics(yt, ys, thresholds, names).set_index("finding")

    plt = pyplot()
    rows, cols = _grid_shape(len(names))
    single = rows * cols == 1
    size = (2.75 * cols, 2.75 * rows + 0.7) if not single else (6.2, 6.0 if kind == "roc" else 6.3 + 0.2 * len(names))
    fig, axes = plt.subplots(rows, cols, figsize=size, sharex=True, sharey=True, squeeze=False,
                             constrained_layout=True)
    axes = list(axes.ravel())
    handles: list = []
    for k, finding in enumerate(names):
        handles += _draw_finding(spec, axes[0] if single else axes[k], finding, names, yt[:, k], ys[:, k],
                                 auroc[finding], operating, single)
    used = axes[:1] if single else axes[:len(names)]
    _style_panels(spec, axes, used, [single or not np.isnan(auroc[f]) for f in names], cols)
    if single:
        _single_axis_legend(spec, axes[0], handles, operating is not None)
    else:
        fig.supxlabel(spec.axis_labels[0], fontsize=10)
        fig.supylabel(spec.axis_labels[1], fontsize=10)
    name = spec.title
    if not single:
        key = [spec.reference]
        if operating is not None:
            key.append("dot: operating point at the model's threshold")
        name += f"  ({'; '.join(key)})"
    fig.suptitle(f"{name}\n{title}" if title else name, fontsize=11)
    return save_figure(fig, path, dpi=DPI)


def _curve_points(kind: str, labels: np.ndarray, scores: np.ndarray, auroc: float) -> tuple[Any, Any, str]:
    """The curve's x and y and its legend value (AUROC or average precision) for labelled images only."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    if kind == "roc":
        x, y, _ = roc_curve(labels, scores)
        return x, y, f"AUROC {auroc:.3f}"
    y, x, _ = precision_recall_curve(labels, scores)
    return x, y, f"AP {average_precision_score(labels, scores):.3f}"


def _draw_finding(spec: _CurveKind, ax: Any, finding: str, names: Sequence[str], labels: np.ndarray,
                  scores: np.ndarray, auroc: float, operating: pd.DataFrame | None, single: bool) -> list:
    """Draw one finding's curve (or why it has none) and its operating point on ``ax``.

    Returns what the legend of a single shared axis lists for it; a panel gets its own legend here instead.
    """
    from matplotlib.lines import Line2D

    col = colour(finding, names)
    known = ~np.isnan(labels)
    t, s = labels[known], scores[known]
    n_pos, n_neg = int((t == 1).sum()), int((t == 0).sum())
    counts = f"{n_pos} pos / {n_neg} neg"
    if not single:
        ax.set_title(finding, fontsize=9.5)
    if np.isnan(auroc):
        note = f"no curve: {_why_no_curve(t)}"
        if single:
            return [Line2D([], [], color=col, marker="x", ls="none", label=f"{finding}: {note}")]
        ax.text(0.5, 0.5, note.replace(": ", ":\n"), ha="center", va="center", fontsize=8.5,
                color="0.35", transform=ax.transAxes)
        return []
    x, y, value = _curve_points(spec.name, t, s, auroc)
    if spec.name == "pr":  # the precision of a model that guesses
        ax.axhline(n_pos / (n_pos + n_neg), color=col, lw=1, ls=":", alpha=0.9)
    label = f"{finding}: {value} ({counts})" if single else f"{value}\n{counts}"
    (line,) = ax.plot(x, y, color=col, lw=1.8, label=label, drawstyle=spec.drawstyle)
    own = [line]
    if operating is not None:
        row = operating.loc[finding]
        px, py = (1 - row["specificity"], row["recall"]) if spec.name == "roc" else (row["recall"], row["precision"])
        if np.isfinite(px) and np.isfinite(py):
            (dot,) = ax.plot(px, py, marker="o", ms=6, color=col, mec="black", mew=0.8, ls="none",
                             label=f"threshold {row['threshold']:.2f}", zorder=5)
            own.append(dot)
    if single:
        return [line]
    ax.legend(handles=own, fontsize=7.5, frameon=True, framealpha=0.85, edgecolor="none", loc=spec.panel_legend,
              handlelength=1.2)
    return []


def _style_panels(spec: _CurveKind, axes: list, used: list, drawn: list[bool], cols: int) -> None:
    """Square unit axes (the chance diagonal where ROC curves are drawn); empty slots hidden."""
    for ax, has_curve in zip(used, drawn):
        if spec.name == "roc" and has_curve:
            ax.plot([0, 1], [0, 1], color="0.55", lw=0.8, ls="--", zorder=0)
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xticks=np.linspace(0, 1, 6), yticks=np.linspace(0, 1, 6))
        ax.set_aspect("equal")
        ax.grid(alpha=0.25, lw=0.6)
        ax.tick_params(labelsize=8)
    for k, ax in enumerate(axes[len(used):], start=len(used)):
        ax.set_axis_off()
        above = k - cols
        if above >= 0 and above < len(used):  # the panel above an empty slot shows its own x tick labels
            used[above].xaxis.set_tick_params(labelbottom=True)


def _single_axis_legend(spec: _CurveKind, ax: Any, handles: list, operating: bool) -> None:
    """Axis labels and the one legend of a shared axis: every finding, the reference line, the operating point."""
    from matplotlib.lines import Line2D

    ax.set(xlabel=spec.axis_labels[0], ylabel=spec.axis_labels[1])
    if spec.name == "roc":
        extra = [Line2D([], [], color="0.55", lw=0.8, ls="--", label="chance")]
    else:
        extra = [Line2D([], [], color="0.3", lw=1, ls=":", label="prevalence (per finding, dotted)")]
    if operating:
        extra.append(Line2D([], [], marker="o", ms=6, color="white", mec="black", ls="none",
                            label="operating point at the model's threshold"))
    if spec.name == "roc":  # below the diagonal: empty for any model better than chance
        ax.legend(handles=handles + extra, fontsize=8, frameon=True, framealpha=0.9, edgecolor="none",
                  loc="lower right")
    else:  # precision-recall curves fill the whole square: the legend goes below it
        ax.legend(handles=handles + extra, fontsize=8, frameon=False, loc="upper center",
                  bbox_to_anchor=(0.5, -0.11), ncols=1)


def plot_roc_curves(y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str], path: str | Path,
                    title: str | None = None, *, thresholds: Mapping[str, float] | None = None) -> Path:
    """Draw one ROC curve per finding (AUROC and label counts in its legend) as a PNG; return ``path``.

    The curve of each finding is computed on its labelled images only (NaN labels dropped per finding); a
    finding with one label value has no curve and is named as such. With ``thresholds`` (``{finding:
    threshold}``, as stored with the model) the operating point each threshold gives is marked, which is
    what a reader of the per-finding table needs to see where the model sits on its curve.

    Args:
        y_true: ``(N, C)`` labels, 0/1 (NaN: not labelled).
        y_score: ``(N, C)`` scores.
        findings: the ``C`` finding names, in column order (they also pick the colours).
        path: the PNG to write (atomically).
        title: a second title line, e.g. the split and number of images.
        thresholds: optional decision thresholds to mark.
    """
    return _curves("roc", y_true, y_score, findings, path, title, thresholds)


def plot_pr_curves(y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str], path: str | Path,
                   title: str | None = None, *, thresholds: Mapping[str, float] | None = None) -> Path:
    """Draw one precision-recall curve per finding (average precision, prevalence line) as a PNG.

    Precision-recall shows what ROC hides for rare findings: the prevalence line is the precision of a
    model that guesses. Arguments and NaN handling are those of :func:`plot_roc_curves`.
    """
    return _curves("pr", y_true, y_score, findings, path, title, thresholds)


def plot_classifier_history(history: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Draw losses and validation macro AUROC per epoch (best epoch marked; learning rate if given) as a PNG.

    The best epoch is the first with the highest validation macro AUROC, the rule the trainer uses to keep
    its weights, so the marked epoch is the one the saved model comes from.

    Args:
        history: columns ``epoch, train_loss, val_loss, val_macro_auroc`` and optionally ``lr``.
        path: the PNG to write (atomically).
        title: the figure title (default "hybridcxr fusion classifier training").
    """
    from matplotlib.ticker import MaxNLocator

    missing = [c for c in ("epoch", "train_loss", "val_loss", "val_macro_auroc") if c not in history]
    if missing:
        raise ValueError(f"training history lacks column(s) {', '.join(missing)}")
    if not len(history):
        raise ValueError("training history is empty")
    history = history.sort_values("epoch")
    epochs = history["epoch"].to_numpy()
    auroc = pd.to_numeric(history["val_macro_auroc"], errors="coerce").to_numpy(dtype=float)
    has_lr = "lr" in history and pd.to_numeric(history["lr"], errors="coerce").notna().any()
    best = int(np.nanargmax(auroc)) if np.isfinite(auroc).any() else None

    plt = pyplot()
    fig, axes = plt.subplots(1, 3 if has_lr else 2, figsize=(13 if has_lr else 10, 3.8), constrained_layout=True)
    loss, metric = axes[0], axes[1]
    loss.plot(epochs, history["train_loss"], marker="o", ms=3, color="#0072B2", label="train")
    loss.plot(epochs, history["val_loss"], marker="s", ms=3, color="#D55E00", label="validation")
    loss.set(title="weighted BCE loss", xlabel="epoch", ylabel="loss")
    metric.plot(epochs, auroc, marker="o", ms=3, color="#009E73", label="validation macro AUROC")
    metric.axhline(0.5, color="0.55", lw=0.8, ls="--", label="chance")
    if np.isfinite(auroc).any():
        low, high = np.nanmin(auroc), np.nanmax(auroc)
        metric.set_ylim(max(0.0, min(0.5, low) - 0.03), min(1.005, high + 0.05))
    metric.set(title="validation macro AUROC", xlabel="epoch", ylabel="AUROC")
    if best is not None:
        best_epoch, best_value = epochs[best], auroc[best]
        for ax in axes:
            ax.axvline(best_epoch, color="0.4", lw=0.8, ls=":")
        metric.plot(best_epoch, best_value, marker="*", ms=13, color="#009E73", mec="black", mew=0.7, ls="none",
                    label=f"best: {best_value:.3f} at epoch {best_epoch:g}", zorder=5)
        loss.plot(best_epoch, history["val_loss"].iloc[best], marker="*", ms=11, color="#D55E00", mec="black",
                  mew=0.7, ls="none", label=f"best epoch ({best_epoch:g})", zorder=5)
    if has_lr:
        axes[2].plot(epochs, pd.to_numeric(history["lr"], errors="coerce"), marker="o", ms=3, color="#CC79A7")
        axes[2].set(title="learning rate", xlabel="epoch", ylabel="learning rate", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss.legend(frameon=False, fontsize=8.5)
    metric.legend(frameon=False, fontsize=8.5, loc="best")
    fig.suptitle(title or "hybridcxr fusion classifier training")
    return save_figure(fig, path, dpi=DPI)


__all__ = ["plot_classifier_history", "plot_pr_curves", "plot_roc_curves", "pyplot", "save_figure"]
