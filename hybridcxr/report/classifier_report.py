"""One report folder for a classifier's evaluation: Markdown for people, CSVs for programs, PNGs for eyes.

Every number in it names the split it came from. AUROCs carry percentile bootstrap 95% confidence
intervals (patients resampled where their ids are given, else images:
:func:`~hybridcxr.report.metrics.bootstrap_auroc_ci`), decisions are scored at
the thresholds stored with the model (chosen on validation data, never on the split being reported), and
AUROC is broken down by sex and age band because a model that works for one group of patients only is not
a model a hospital should deploy.

The folder holds ``report.md``, ``per_finding.csv``, ``subgroups.csv``, ``predictions.csv``,
``roc_curves.png``, ``pr_curves.png`` and, with a training history, ``training_curves.png``. In the Markdown
numbers have three decimals and an undefined value (a finding without positives, a group without images)
reads ``n/a``; the CSVs keep full precision and leave such cells empty.

>>> [age_band_label(lo, hi) for lo, hi in AGE_BANDS]
['0-17', '18-39', '40-59', '60+']
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hybridcxr.errors import DataWarning
from hybridcxr.files import write_csv, write_text
from hybridcxr.report.metrics import _check, bootstrap_auroc_ci, micro_auroc, per_class_auroc, threshold_metrics
from hybridcxr.report.plots import plot_classifier_history, plot_pr_curves, plot_roc_curves

#: Age bands in years, ``[low, high)``: children, young adults, middle age, older adults.
AGE_BANDS: tuple[tuple[float, float], ...] = ((0, 18), (18, 40), (40, 60), (60, 200))
#: A band whose upper bound is at least this is open-ended ("60+").
_OPEN_END = 120
#: Below this many positive (or negative) images a finding's interval is flagged as unreliable.
FEW_LABELS = 10
#: Split names on which thresholds are usually chosen (their threshold metrics are then optimistic).
_VALIDATION_SPLITS = {"val", "valid", "validation", "tune", "dev"}


def age_band_label(low: float, high: float) -> str:
    """Name of the age band ``[low, high)`` in whole years: ``"18-39"``, or ``"60+"`` when open-ended."""
    if high >= _OPEN_END:
        return f"{low:g}+"
    last = math.ceil(high) - 1 if float(high).is_integer() else math.floor(high)
    return f"{low:g}-{last:g}"


def subgroup_auroc(y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str], sex: Sequence[str | None],
                   age_years: Sequence[float], bands: Sequence[tuple[float, float]] = AGE_BANDS) -> pd.DataFrame:
    """Macro and per-finding AUROC by sex (M, F, unknown) and by age band (plus unknown age).

    Each group is scored like the whole split (:func:`~hybridcxr.report.metrics.per_class_auroc`; NaN labels
    left out per finding); its macro AUROC is the mean over the findings that have positives and negatives
    *in that group*, counted in ``findings_with_auroc`` because groups whose macro averages cover different
    findings are not strictly comparable. A group too small for any AUROC (no images, or no finding with
    both label values) gets NaN, never an error. Ages outside every band (if the bands leave gaps) form an
    ``other`` group.

    Args:
        y_true: ``(N, C)`` labels, 0/1 (NaN: not labelled).
        y_score: ``(N, C)`` scores.
        findings: the ``C`` finding names.
        sex: ``N`` values ``"M"``, ``"F"`` or None (anything else, NaN included, counts as unknown).
        age_years: ``N`` ages in years, NaN (or None) where unknown.
        bands: non-overlapping ``(low, high)`` age bands, ``low <= age < high``.

    Returns:
        One row per group: ``by`` (``sex`` or ``age``), ``group``, ``images``, ``findings_with_auroc``,
        ``macro_auroc``, then one AUROC column per finding.
    """
    yt, ys, names = _check(y_true, y_score, findings)
    n = len(yt)
    sexes = _sex_groups(sex, n)
    age = _ages(age_years, n)
    bands = _checked_bands(bands)

    groups: list[tuple[str, str, np.ndarray]] = [("sex", s, sexes == s) for s in ("M", "F", "unknown")]
    in_band = np.zeros(n, dtype=bool)
    for low, high in bands:
        mask = (age >= low) & (age < high)
        in_band |= mask
        groups.append(("age", age_band_label(low, high), mask))
    other = ~in_band & ~np.isnan(age)
    if other.any():
        groups.append(("age", "other", other))
    groups.append(("age", "unknown", np.isnan(age)))

    rows = []
    for by, name, mask in groups:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # undefined AUROCs are the point of a small group
            aurocs = per_class_auroc(yt[mask], ys[mask], names)
        defined = aurocs.dropna()
        rows.append({"by": by, "group": name, "images": int(mask.sum()), "findings_with_auroc": len(defined),
                     "macro_auroc": float(defined.mean()) if len(defined) else np.nan,
                     **{f: float(v) for f, v in aurocs.items()}})
    return pd.DataFrame(rows)


def write_classifier_report(
    out_dir: str | Path, *, y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str],
    image_ids: Sequence[str], split: str, thresholds: Mapping[str, float], sex: Sequence[str | None],
    age_years: Sequence[float], history: pd.DataFrame | None = None, ablation: pd.DataFrame | None = None,
    title: str = "hybridcxr classifier report", notes: Sequence[str] = (), n_boot: int = 1000, seed: int = 0,
    patient_ids: Sequence[str] | None = None, uncalibrated: np.ndarray | None = None,
    no_claim: Mapping[str, str] | None = None, extra: Sequence[str] = (),
) -> Path:
    """Write a classifier's evaluation on one split into ``out_dir``; return the path of ``report.md``.

    ``report.md`` (headline, per-finding table, subgroups, ablation, notes, figures), ``per_finding.csv``,
    ``subgroups.csv``, ``predictions.csv`` (``image_id``, one score column per finding, then ``label_<finding>``
    columns; empty label cells: not labelled), ``roc_curves.png``, ``pr_curves.png`` and, with ``history``,
    ``training_curves.png``. Every file is written atomically, so a reader never sees half a report.

    Args:
        out_dir: the report folder (created).
        y_true: ``(N, C)`` labels, 0/1 (NaN: not labelled, left out of that finding's metrics).
        y_score: ``(N, C)`` predicted probabilities.
        findings: the ``C`` finding names.
        image_ids: ``N`` image identifiers, in row order.
        split: name of the split the rows come from (named in every title).
        thresholds: ``{finding: threshold}`` stored with the model (positive when ``score >= threshold``).
        sex: ``N`` values ``"M"``, ``"F"`` or None.
        age_years: ``N`` ages in years (NaN: unknown).
        history: the trainer's per-epoch table (``epoch, train_loss, val_loss, val_macro_auroc[, lr]``).
        ablation: a table to show as is (e.g. ``variant`` and macro AUROC columns).
        title: the report's heading.
        notes: lines for the Notes section (provenance: data, model, how thresholds were chosen).
        n_boot: bootstrap resamples for the confidence intervals.
        seed: seed of the bootstrap (same seed, same intervals).
        patient_ids: ``N`` patient identifiers, to count patients (optional: without, "not given").
        uncalibrated: ``(N, C)`` scores before calibration: adds ECE and Brier score before and after and a
            reliability diagram (``calibration.csv``, ``reliability.png``).
        no_claim: ``{finding: reason}`` for findings the model never learned: no AUROC or decision metric is
            claimed for them (their labels are left out), and the report says why.
        extra: more Markdown lines, placed after the per-finding section (e.g. the binary decision section of
            :func:`hybridcxr.report.binary.write_binary_report` for a one-finding model).
    """
    yt, ys, names = _check(y_true, y_score, findings)
    no_claim = {f: r for f, r in (no_claim or {}).items() if f in names}
    yt = np.where(np.isin(names, list(no_claim))[None, :], np.nan, yt)
    names = list(names)
    n = len(yt)
    image_ids = [str(i) for i in image_ids]
    if len(image_ids) != n:
        raise ValueError(f"{len(image_ids)} image ids for {n} rows of scores")
    if patient_ids is not None and len(patient_ids) != n:
        raise ValueError(f"{len(patient_ids)} patient ids for {n} rows of scores")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # undefined AUROCs are listed in the report instead
        ci = bootstrap_auroc_ci(yt, ys, names, n_boot=n_boot, seed=seed, macro=True, groups=patient_ids)
        micro = micro_auroc(yt, ys)
        subgroups = subgroup_auroc(yt, ys, names, sex, age_years)
    at = threshold_metrics(yt, ys, thresholds, names)
    per_finding = _per_finding_table(yt, ys, names, ci, at)
    macro = ci.set_index("finding").loc["macro"]

    write_csv(out / "per_finding.csv", per_finding)
    write_csv(out / "subgroups.csv", subgroups)
    write_csv(out / "predictions.csv", _predictions_table(yt, ys, names, image_ids))
    size = f"{n} images" + (f", {pd.Series(patient_ids).nunique()} patients" if patient_ids is not None else "")
    figure_title = f"split '{split}', {size}"
    figures = {"roc_curves.png": "ROC curves", "pr_curves.png": "Precision-recall curves"}
    plot_roc_curves(yt, ys, names, out / "roc_curves.png", title=figure_title, thresholds=thresholds)
    plot_pr_curves(yt, ys, names, out / "pr_curves.png", title=figure_title, thresholds=thresholds)
    if history is not None and len(history):
        plot_classifier_history(history, out / "training_curves.png")
        figures["training_curves.png"] = "Training curves (training and validation splits)"
    calibration_lines = []
    if uncalibrated is not None:
        calibration_lines = _calibration_section(yt, np.asarray(uncalibrated, np.float64), ys, names, out,
                                                 figure_title)
        figures["reliability.png"] = "Reliability diagram (before and after calibration)"

    lines = _summary(title, split, n, patient_ids, names, per_finding, macro, micro, n_boot, seed)
    lines += ["", "## Per finding", ""] + _per_finding_markdown(per_finding, macro)
    lines += ["", *_per_finding_legend(split, n_boot, per_finding)]
    if no_claim:
        lines += ["", "Not claimed (the model never learned them, so no AUROC and no decision): " + "; ".join(
            f"{f} ({reason})" for f, reason in no_claim.items())]
    lines += ["", *extra] if extra else []
    lines += calibration_lines
    lines += ["", "## By patient group", ""] + _subgroup_markdown(subgroups, names)
    if ablation is not None and len(ablation):
        lines += ["", "## Ablation", "", f"Each variant scored on split **{split}**.", ""]
        lines += _markdown_table(list(map(str, ablation.columns)), ablation.itertuples(index=False))
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    lines += ["", "## Figures", ""]
    lines += [f"- [{caption}]({name})" for name, caption in figures.items()]
    for name, caption in figures.items():
        lines += ["", f"![{caption}]({name})"]
    lines += _FILES_SECTION + (["- `calibration.csv`: ECE and Brier score per finding, before and after "
                                "calibration"] if uncalibrated is not None else [])
    return write_text(out / "report.md", "\n".join(lines) + "\n")


_FILES_SECTION = ["", "## Files", "", "- `per_finding.csv`: the per-finding table at full precision (with tp/fp/fn/tn)",
                  "- `subgroups.csv`: AUROC of every finding in every patient group",
                  "- `predictions.csv`: one row per image: `image_id`, the score of every finding, then its labels "
                  "(`label_<finding>`, empty: not labelled)"]

# ---------------------------------------------------------------------------------------------- tables


def _calibration_section(yt: np.ndarray, before: np.ndarray, after: np.ndarray, names: list[str], out: Path,
                         figure_title: str) -> list[str]:
    """``calibration.csv``, ``reliability.png`` and the report's calibration table (ECE, Brier before/after)."""
    from hybridcxr.report.calibration import calibration_table, plot_reliability

    table = calibration_table(yt, before, after, names)
    write_csv(out / "calibration.csv", table)
    plot_reliability(yt, before, after, out / "reliability.png", title=f"Reliability, {figure_title}")
    rows = [[r.finding, r.ece_before, r.ece_after, r.brier_before, r.brier_after] for r in table.itertuples()]
    return ["", "## Calibration", "", "Expected calibration error (10 equal-width bins) and Brier score of the "
            "raw scores and of the temperature-scaled probabilities (temperatures fitted on 'val'); lower is "
            "better. Unlabelled and unclaimed findings: n/a.", ""] + _markdown_table(
        ["finding", "ECE before", "ECE after", "Brier before", "Brier after"], rows)


def _per_finding_table(yt: np.ndarray, ys: np.ndarray, names: list[str], ci: pd.DataFrame,
                       at: pd.DataFrame) -> pd.DataFrame:
    """Counts, AUROC with CI, average precision and threshold metrics, one row per finding."""
    from sklearn.metrics import average_precision_score

    table = ci[ci["finding"] != "macro"].reset_index(drop=True)
    known = ~np.isnan(yt)
    table["n_unlabelled"] = (~known).sum(axis=0)
    table["prevalence"] = [float(yt[known[:, c], c].mean()) if known[:, c].any() else np.nan
                           for c in range(len(names))]
    ap = []
    for c in range(len(names)):
        labels = yt[known[:, c], c]
        defined = labels.size and 0 < labels.sum() < labels.size
        ap.append(float(average_precision_score(labels, ys[known[:, c], c])) if defined else np.nan)
    table["average_precision"] = ap
    table = table.merge(at.drop(columns=["support"]), on="finding", how="left")
    order = ["finding", "n_pos", "n_neg", "n_unlabelled", "prevalence", "auroc", "ci_low", "ci_high", "n_boot",
             "average_precision", "threshold", "recall", "specificity", "precision", "f1", "tp", "fp", "fn", "tn"]
    return table[order]


def _predictions_table(yt: np.ndarray, ys: np.ndarray, names: list[str], image_ids: list[str]) -> pd.DataFrame:
    columns: dict[str, object] = {"image_id": image_ids}
    columns |= {f: ys[:, c] for c, f in enumerate(names)}
    columns |= {f"label_{f}": pd.array(np.where(np.isnan(yt[:, c]), None, yt[:, c]), dtype="Int64")
                for c, f in enumerate(names)}
    return pd.DataFrame(columns)


# ---------------------------------------------------------------------------------------------- Markdown


def _summary(title: str, split: str, n: int, patient_ids, names: list[str], per_finding: pd.DataFrame,
             macro: pd.Series, micro: float, n_boot: int, seed: int) -> list[str]:
    patients = pd.Series(patient_ids).nunique() if patient_ids is not None else None
    who = f"{n} images" + (f" of {patients} patients" if patients is not None else " (patients not given)")
    undefined = per_finding[per_finding["auroc"].isna()]
    scored = len(names) - len(undefined)
    macro_f1 = per_finding.loc[per_finding["auroc"].notna(), "f1"].dropna()
    lines = [f"# {title}", "", f"All numbers come from split **{split}**: {who}, {len(names)} findings.", "",
             f"- **Macro AUROC {_fmt(macro['auroc'])}** (95% CI {_ci(macro['ci_low'], macro['ci_high'])}): "
             f"mean over the {scored} of {len(names)} findings with positive and negative images",
             f"- Micro AUROC {_fmt(micro)} (all image-finding pairs pooled)",
             f"- Macro F1 {_fmt(float(macro_f1.mean()) if len(macro_f1) else np.nan)} at the model's thresholds"]
    if len(undefined):
        lines.append("- No AUROC (one label value only, left out of the macro mean): " + ", ".join(
            f"{r.finding} ({r.n_pos} positive / {r.n_neg} negative)" for r in undefined.itertuples()))
    if split.strip().lower() in _VALIDATION_SPLITS:
        lines.append(f"- **Caution:** split '{split}' is where thresholds are usually chosen; if they were, "
                     "precision, recall, specificity and F1 below are optimistic")
    if patients is not None:
        lines.append(f"- 95% CIs: percentile cluster bootstrap, {n_boot} resamples of patients, each with all its "
                     f"images (seed {seed})")
    else:
        lines.append(f"- 95% CIs: percentile bootstrap, {n_boot} resamples of images (seed {seed}); patients not "
                     "given, so several images of one patient would be resampled independently")
    return lines


def _per_finding_markdown(table: pd.DataFrame, macro: pd.Series) -> list[str]:
    header = ["finding", "positive / negative", "AUROC (95% CI)", "AP", "threshold", "sensitivity",
              "specificity", "PPV", "F1"]
    rows = []
    for r in table.itertuples(index=False):
        few = "†" if min(r.n_pos, r.n_neg) < FEW_LABELS and not np.isnan(r.auroc) else ""
        counts = f"{r.n_pos} / {r.n_neg}" + (f" ({r.n_unlabelled} unlabelled)" if r.n_unlabelled else "")
        rows.append([r.finding, counts, _auroc_ci(r.auroc, r.ci_low, r.ci_high) + few, r.average_precision,
                     r.threshold, r.recall, r.specificity, r.precision, r.f1])
    scored = table[table["auroc"].notna()]  # the findings the macro AUROC averages over
    mean = scored[["average_precision", "recall", "specificity", "precision", "f1"]].mean(skipna=True)
    rows.append(["**macro mean**", "", f"**{_auroc_ci(macro['auroc'], macro['ci_low'], macro['ci_high'])}**",
                 mean["average_precision"], "", mean["recall"], mean["specificity"], mean["precision"], mean["f1"]])
    return _markdown_table(header, rows)


def _per_finding_legend(split: str, n_boot: int, table: pd.DataFrame) -> list[str]:
    lines = [f"Positive / negative: labelled images of split '{split}' (unlabelled images are left out of that "
             "finding's numbers). AP: average precision (area under the precision-recall curve). Sensitivity "
             "(recall), specificity, PPV (precision) and F1 at the threshold stored with the model: an image "
             "is called positive when its score is at least the threshold. n/a: undefined (a finding without "
             "positive or negative images, or a threshold that calls no image positive). Macro mean: over the "
             "findings with an AUROC."]
    if (table["n_boot"] < n_boot).any() and table["auroc"].notna().any():
        lines[0] += (" Resamples in which a finding had one label value only were skipped for it (see "
                     "`n_boot` in per_finding.csv).")
    if any(min(r.n_pos, r.n_neg) < FEW_LABELS and not np.isnan(r.auroc) for r in table.itertuples()):
        lines += ["", f"† fewer than {FEW_LABELS} positive (or negative) images: the AUROC and its interval "
                      "rest on very few cases and should not be read as a performance estimate."]
    return lines


def _subgroup_markdown(subgroups: pd.DataFrame, names: list[str]) -> list[str]:
    lines = ["Macro AUROC within each group, over the findings with positive and negative images in that group "
             "(groups whose macro means cover different findings are not strictly comparable).", ""]
    summary = [[r.by, r.group, r.images, f"{r.findings_with_auroc} of {len(names)}", r.macro_auroc]
               for r in subgroups.itertuples(index=False)]
    lines += _markdown_table(["by", "group", "images", "findings with AUROC", "macro AUROC"], summary)
    shown = subgroups[subgroups["images"] > 0]
    header = ["finding"] + [f"{'sex ' if r.by == 'sex' else 'age '}{r.group} (n={r.images})"
                            for r in shown.itertuples(index=False)]
    rows = [[f] + [shown.iloc[i][f] for i in range(len(shown))] for f in names]
    lines += ["", "AUROC per finding and group (groups without images left out; n/a: the group has no positive "
                  "or no negative image of that finding):", ""]
    return lines + _markdown_table(header, rows)


def _markdown_table(header: Sequence[str], rows) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(_cell(_fmt(v)) for v in row) + " |" for row in rows]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(value: object) -> str:
    """A table cell: floats with three decimals, NaN/None as ``n/a``, anything else as text."""
    if value is None or value is pd.NA:
        return "n/a"
    if isinstance(value, (bool, np.bool_)) or isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.3f}"
    return str(value)


def _ci(low: float, high: float) -> str:
    return "n/a" if not (math.isfinite(low) and math.isfinite(high)) else f"{low:.3f}-{high:.3f}"


def _auroc_ci(auroc: float, low: float, high: float) -> str:
    return "n/a" if not math.isfinite(auroc) else f"{auroc:.3f} ({_ci(low, high)})"


# ---------------------------------------------------------------------------------------------- inputs


def _sex_groups(sex: Sequence[str | None], n: int) -> np.ndarray:
    values = list(sex)
    if len(values) != n:
        raise ValueError(f"{len(values)} sex values for {n} images")
    return np.array([s.strip().upper() if isinstance(s, str) and s.strip().upper() in ("M", "F") else "unknown"
                     for s in values], dtype=object)


def _ages(age_years: Sequence[float], n: int) -> np.ndarray:
    age = pd.to_numeric(pd.Series(list(age_years), dtype=object), errors="coerce").to_numpy(dtype=float)
    if len(age) != n:
        raise ValueError(f"{len(age)} ages for {n} images")
    return age


def _checked_bands(bands: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    checked = sorted((float(low), float(high)) for low, high in bands)
    for low, high in checked:
        if not low < high:
            raise ValueError(f"age band ({low:g}, {high:g}) is empty: low must be below high")
    for (_, high), (low, _) in zip(checked, checked[1:]):
        if low < high:
            raise ValueError(f"age bands overlap at {low:g}-{high:g} years: an image would count twice")
    return checked


__all__ = ["AGE_BANDS", "age_band_label", "subgroup_auroc", "write_classifier_report"]
