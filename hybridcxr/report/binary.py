"""The binary report of a one-finding classifier (e.g. the Guangzhou pneumonia set: PNEUMONIA vs NORMAL):
accuracy, sensitivity, specificity and a confusion matrix at the model's threshold, and the training figure
that workflow shows, loss and accuracy per epoch with training in blue and validation in orange.

``hybridcxr evaluate classifier`` adds it to the report folder when the run has exactly one finding besides
"No finding" (:func:`binary_finding`): ``binary.md`` (also a section of ``report.md``), ``binary.json``,
``confusion_matrix.png`` and, with a training history that records accuracy, ``training_accuracy.png``.

>>> m = binary_metrics([1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.2, 0.1], threshold=0.5)
>>> (m.tp, m.fn, m.fp, m.tn), m.accuracy, m.sensitivity, round(m.specificity, 3)
((1, 1, 1, 2), 0.6, 0.5, 0.667)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hybridcxr.files import write_json, write_text
from hybridcxr.findings import NO_FINDING
from hybridcxr.report.plots import DPI, pyplot, save_figure

#: The colours of the workflow's training figure (matplotlib's first two: training blue, validation orange).
TRAIN_COLOUR, VAL_COLOUR = "tab:blue", "tab:orange"
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy")


@dataclass(frozen=True)
class BinaryMetrics:
    """Counts and rates of one yes/no decision (positive when ``score >= threshold``); NaN where undefined."""

    finding: str
    threshold: float
    n: int
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.n)

    @property
    def sensitivity(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def confusion(self) -> np.ndarray:
        """``[[tn, fp], [fn, tp]]``: rows the truth (negative, positive), columns the decision (sklearn's order)."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]])

    def to_dict(self) -> dict[str, float | int | str]:
        """Counts and rates as plain numbers (for ``binary.json``)."""
        rates = {k: getattr(self, k) for k in ("accuracy", "sensitivity", "specificity", "precision", "f1")}
        return {**asdict(self), **rates}


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def binary_finding(findings: Sequence[str]) -> str | None:
    """The one finding of a binary run (findings besides "No finding"), or None when there are more or none."""
    named = [f for f in findings if f != NO_FINDING]
    return named[0] if len(named) == 1 else None


def binary_metrics(y_true: Sequence[float], y_score: Sequence[float], threshold: float,
                   finding: str = "positive") -> BinaryMetrics:
    """Confusion counts of ``score >= threshold`` against 0/1 labels (NaN labels left out)."""
    yt, ys = np.asarray(y_true, dtype=float), np.asarray(y_score, dtype=float)
    if yt.shape != ys.shape or yt.ndim != 1:
        raise ValueError(f"labels {yt.shape} and scores {ys.shape} must be two vectors of one length")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a number, not {threshold}")
    known = ~np.isnan(yt)
    truth, said = yt[known] == 1, ys[known] >= threshold
    return BinaryMetrics(finding, float(threshold), int(known.sum()), int((truth & said).sum()),
                         int((~truth & said).sum()), int((truth & ~said).sum()), int((~truth & ~said).sum()))


def plot_confusion_matrix(metrics: BinaryMetrics, path: str | Path, labels: tuple[str, str] | None = None,
                          title: str | None = None) -> Path:
    """The 2 x 2 confusion matrix (counts and row shares) as a PNG; rows the truth, columns the decision."""
    labels = labels or (f"no {metrics.finding}", metrics.finding)
    cm = metrics.confusion()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.0), constrained_layout=True)
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    for (r, c), count in np.ndenumerate(cm):
        share = count / cm[r].sum() if cm[r].sum() else float("nan")
        text = f"{count}\n({share:.0%})" if math.isfinite(share) else f"{count}"
        ax.text(c, r, text, ha="center", va="center", fontsize=12,
                color="white" if count > cm.max() / 2 else "black")
    ax.set_xticks([0, 1], labels=list(labels))
    ax.set_yticks([0, 1], labels=list(labels))
    ax.set(xlabel=f"predicted (score >= {metrics.threshold:.3f})", ylabel="true")
    ax.set_title(title or f"Confusion matrix, {metrics.n} images")
    return save_figure(fig, path, dpi=DPI)


def has_accuracy_history(history: pd.DataFrame | None) -> bool:
    """Whether ``history`` records loss and accuracy per epoch for both splits (runs before accuracy was
    recorded do not)."""
    return history is not None and len(history) > 0 and all(
        c in history and pd.to_numeric(history[c], errors="coerce").notna().any() for c in HISTORY_COLUMNS)


def plot_binary_history(history: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Loss and accuracy per epoch, one subplot each, training in blue and validation in orange (PNG)."""
    from matplotlib.ticker import MaxNLocator

    if not has_accuracy_history(history):
        raise ValueError(f"training history needs columns {', '.join(HISTORY_COLUMNS)} with values")
    history = history.sort_values("epoch")
    epochs = history["epoch"].to_numpy()
    plt = pyplot()
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for ax, name, label in ((loss, "loss", "weighted BCE loss"), (acc, "accuracy", "accuracy at 0.5")):
        ax.plot(epochs, pd.to_numeric(history[f"train_{name}"], errors="coerce"), marker="o", ms=3,
                color=TRAIN_COLOUR, label="training")
        ax.plot(epochs, pd.to_numeric(history[f"val_{name}"], errors="coerce"), marker="s", ms=3,
                color=VAL_COLOUR, label="validation")
        ax.set(title=label, xlabel="epoch", ylabel=name)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(frameon=False, fontsize=8.5)
    acc.set_ylim(-0.02, 1.02)
    fig.suptitle(title or "Training and validation loss and accuracy per epoch")
    return save_figure(fig, path, dpi=DPI)


def _markdown(metrics: BinaryMetrics, split: str, labels: tuple[str, str], curves: bool) -> list[str]:
    """The report section: the three headline numbers, the confusion table, the figures."""
    def fmt(x: float) -> str:
        return "n/a" if not math.isfinite(x) else f"{x:.3f}"

    neg, pos = labels
    lines = ["## Binary decision", "",
             f"**{metrics.finding}** on split **{split}** ({metrics.n} labelled images), positive when the score is "
             f"at least the model's threshold {metrics.threshold:.3f} (chosen on 'val').", "",
             f"- Accuracy {fmt(metrics.accuracy)}", f"- Sensitivity (recall) {fmt(metrics.sensitivity)}",
             f"- Specificity {fmt(metrics.specificity)}",
             f"- Precision {fmt(metrics.precision)}, F1 {fmt(metrics.f1)}", "",
             f"| true \\ predicted | {neg} | {pos} |", "|---|---:|---:|",
             f"| {neg} | {metrics.tn} | {metrics.fp} |", f"| {pos} | {metrics.fn} | {metrics.tp} |", "",
             "![Confusion matrix](confusion_matrix.png)"]
    if curves:
        lines += ["", "Loss and accuracy per epoch (training in blue, validation in orange; accuracy at a score of "
                      "0.5, training accuracy as the epoch's batches scored it):", "",
                  "![Training and validation loss and accuracy](training_accuracy.png)"]
    else:
        lines += ["", "No per-epoch accuracy in this run's history (trained before it was recorded): no "
                      "training figure."]
    return lines


def write_binary_report(out_dir: str | Path, *, y_true: Sequence[float], y_score: Sequence[float], finding: str,
                        threshold: float, split: str, history: pd.DataFrame | None = None,
                        labels: tuple[str, str] | None = None) -> list[str]:
    """Write ``binary.md``, ``binary.json``, ``confusion_matrix.png`` and (with an accuracy history)
    ``training_accuracy.png`` into ``out_dir``; returns the Markdown section's lines (for ``report.md``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = binary_metrics(y_true, y_score, threshold, finding)
    labels = labels or (f"no {finding}", finding)
    plot_confusion_matrix(metrics, out / "confusion_matrix.png", labels, title=f"{finding}, split '{split}'")
    curves = has_accuracy_history(history)
    if curves:
        plot_binary_history(history, out / "training_accuracy.png")  # type: ignore[arg-type]
    lines = _markdown(metrics, split, labels, curves)
    write_json(out / "binary.json", {"split": split, **metrics.to_dict(),
                                     "confusion_matrix": metrics.confusion().tolist(),
                                     "confusion_matrix_order": "rows true [negative, positive], columns predicted"})
    write_text(out / "binary.md", "\n".join(lines) + "\n")
    return lines


__all__ = ["BinaryMetrics", "binary_finding", "binary_metrics", "has_accuracy_history", "plot_binary_history",
           "plot_confusion_matrix", "write_binary_report"]
