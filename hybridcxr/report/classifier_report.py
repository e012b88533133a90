"""One report folder for a classifier's evaluation: Markdown for people, CSVs for programs, PNGs for eyes.

Every number in it names the split it came from. AUROCs carry bootstrap 95% confidence intervals (images
resampled), decisions are scored at the thresholds stored with the model (chosen on validation, never on
the split being reported), and AUROC is broken down by sex and age band because a model that works for one
group of patients only is not a model a hospital should deploy.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hybridcxr.files import write_csv, write_text
from hybridcxr.report.metrics import bootstrap_auroc_ci, micro_auroc, per_class_auroc, threshold_metrics
from hybridcxr.report.plots import plot_classifier_history, plot_pr_curves, plot_roc_curves

AGE_BANDS: tuple[tuple[float, float], ...] = ((0, 18), (18, 40), (40, 60), (60, 200))


def _band_label(low: float, high: float) -> str:
    return f"{int(low)}+" if high >= 150 else f"{int(low)}-{int(high) - 1}"


def subgroup_auroc(y_true, y_score, findings: Sequence[str], sex, age_years,
                   bands: Sequence[tuple[float, float]] = AGE_BANDS) -> pd.DataFrame:
    """Macro and per-finding AUROC by sex (M, F, unknown) and by age band; NaN where a group is too small."""
    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    sex = np.array([s if s in ("M", "F") else "unknown" for s in sex], dtype=object)
    age = np.asarray(age_years, float)
    groups: list[tuple[str, str, np.ndarray]] = [("sex", s, sex == s) for s in ("M", "F", "unknown")]
    groups += [("age", _band_label(lo, hi), (age >= lo) & (age < hi)) for lo, hi in bands]
    groups.append(("age", "unknown", np.isnan(age)))
    rows = []
    for by, name, mask in groups:
        row = {"by": by, "group": name, "images": int(mask.sum())}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aurocs = per_class_auroc(y_true[mask], y_score[mask], findings) if mask.any() else \
                pd.Series(np.nan, index=list(findings))
        row["macro_auroc"] = float(aurocs.mean()) if aurocs.notna().any() else np.nan
        row |= {f: float(v) for f, v in aurocs.items()}
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else (
        f"{value:.3f}" if isinstance(value, float) else str(value))


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return lines


def write_classifier_report(
    out_dir: str | Path, *, y_true, y_score, findings: Sequence[str], image_ids: Sequence[str], split: str,
    thresholds: Mapping[str, float], sex, age_years, history: pd.DataFrame | None = None,
    ablation: pd.DataFrame | None = None, title: str = "hybridcxr classifier report", notes: Sequence[str] = (),
    n_boot: int = 1000, seed: int = 0,
) -> Path:
    """Write report.md, per_finding.csv, subgroups.csv, predictions.csv and the curves; return report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    findings = list(findings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = bootstrap_auroc_ci(y_true, y_score, findings, n_boot=n_boot, seed=seed, macro=True)
        at = threshold_metrics(y_true, y_score, thresholds, findings)
        micro = micro_auroc(y_true, y_score)
        subgroups = subgroup_auroc(y_true, y_score, findings, sex, age_years)
    per_finding = ci[ci["finding"] != "macro"].merge(
        at[["finding", "threshold", "precision", "recall", "f1", "specificity"]], on="finding", how="left")
    macro = ci[ci["finding"] == "macro"].iloc[0]
    write_csv(out / "per_finding.csv", per_finding)
    write_csv(out / "subgroups.csv", subgroups)
    predictions = pd.DataFrame(y_score, columns=findings)
    predictions.insert(0, "image_id", list(image_ids))
    for k, f in enumerate(findings):
        predictions[f"label_{f}"] = y_true[:, k]
    write_csv(out / "predictions.csv", predictions)
    plot_roc_curves(y_true, y_score, findings, out / "roc_curves.png", title=f"split '{split}'")
    plot_pr_curves(y_true, y_score, findings, out / "pr_curves.png", title=f"split '{split}'")
    if history is not None and len(history):
        plot_classifier_history(history, out / "training_curves.png")

    lines = [f"# {title}", "", f"All numbers below come from split **{split}** ({len(image_ids)} images).", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += [f"**Macro AUROC {_fmt(float(macro['auroc']))}** (95% CI {_fmt(float(macro['ci_low']))}-"
              f"{_fmt(float(macro['ci_high']))}, mean over the findings with positives and negatives); "
              f"micro AUROC {_fmt(micro)}.", "", "## Per finding", ""]
    table = per_finding[["finding", "auroc", "ci_low", "ci_high", "n_pos", "n_neg", "threshold", "precision",
                         "recall", "f1", "specificity"]].rename(columns={
                             "auroc": "AUROC", "ci_low": "95% CI low", "ci_high": "95% CI high",
                             "n_pos": "positives", "n_neg": "negatives"})
    lines += _markdown_table(table)
    lines += ["", f"Precision, recall, F1 and specificity at the thresholds stored with the model "
                  f"(chosen on the validation split). Bootstrap: {n_boot} resamples of images.", "",
              "## By patient group", ""]
    lines += _markdown_table(subgroups[["by", "group", "images", "macro_auroc"]].rename(
        columns={"macro_auroc": "macro AUROC"}))
    if ablation is not None and len(ablation):
        lines += ["", "## Ablation: what each input is worth", ""]
        lines += _markdown_table(ablation)
    lines += ["", "## Pictures", "", "![ROC curves](roc_curves.png)", "", "![Precision-recall curves](pr_curves.png)"]
    if history is not None and len(history):
        lines += ["", "![Training curves](training_curves.png)"]
    return write_text(out / "report.md", "\n".join(lines) + "\n")
