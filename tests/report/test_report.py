"""The classifier report: numbers agree with the metrics they come from, groups never crash, pictures are real.

Synthetic data with a known signal: finding A is nearly separable, B and E carry some signal (B has
unlabelled images), C is pure noise and D has no positive image at all.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from hybridcxr.errors import DataWarning
from hybridcxr.report.classifier_report import age_band_label, subgroup_auroc, write_classifier_report
from hybridcxr.report.metrics import macro_auroc, micro_auroc, per_class_auroc, threshold_metrics
from hybridcxr.report.plots import plot_classifier_history, plot_pr_curves, plot_roc_curves

FINDINGS = ["A", "B", "C", "D", "E"]
N = 300
N_UNLABELLED_B = 20
FILES = ("report.md", "per_finding.csv", "subgroups.csv", "predictions.csv", "roc_curves.png", "pr_curves.png",
         "training_curves.png")


def _data(n: int = N, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 5)) < [0.3, 0.25, 0.4, 0.0, 0.15]).astype(float)
    score = np.clip(y * [0.4, 0.25, 0.0, 0.0, 0.3] + rng.random((n, 5)) * 0.5, 0, 1)
    y[:N_UNLABELLED_B, 1] = np.nan
    sex = rng.choice(np.array(["M", "F", None], dtype=object), n, p=[0.45, 0.45, 0.1])
    age = rng.uniform(5, 90, n)
    age[:10] = np.nan
    return y, score, sex, age


HISTORY = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [0.7, 0.6, 0.5, 0.45],
                        "val_loss": [0.7, 0.65, 0.66, 0.7], "val_macro_auroc": [0.6, 0.71, 0.7, 0.69],
                        "lr": [1e-3, 1e-3, 1e-4, 1e-4]})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One report written once for the module (the bootstrap and three figures are the slow part)."""
    out = tmp_path_factory.mktemp("report")
    y, score, sex, age = _data()
    thresholds = {f: 0.5 for f in FINDINGS}
    ablation = pd.DataFrame({"variant": ["full model", "without demographics"], "macro AUROC (test)": [0.81, 0.7]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the report lists D's missing AUROC itself; nothing may leak
        path = write_classifier_report(out, y_true=y, y_score=score, findings=FINDINGS,
                                       image_ids=[f"img{i}" for i in range(N)], split="test", thresholds=thresholds,
                                       sex=sex, age_years=age, history=HISTORY, ablation=ablation,
                                       notes=["thresholds chosen on 'val' by F1"], n_boot=200,
                                       patient_ids=[f"p{i // 3}" for i in range(N)])
    return path, (y, score, sex, age, thresholds)


def test_report_folder_has_every_file(report):
    path, _ = report
    assert path.name == "report.md"
    for name in FILES:
        assert (path.parent / name).is_file(), name
    text = path.read_text()
    for name in FILES[4:]:
        assert f"]({name})" in text  # every figure linked


@pytest.mark.filterwarnings("ignore::hybridcxr.errors.DataWarning")  # D has no AUROC
def test_report_names_split_counts_and_macro_equals_metrics(report):
    path, (y, score, *_rest) = report
    text = path.read_text()
    assert "split **test**: 300 images of 100 patients, 5 findings" in text
    expected = macro_auroc(y, score, FINDINGS)
    shown = re.search(r"\*\*Macro AUROC (\d\.\d{3})\*\* \(95% CI (\d\.\d{3})-(\d\.\d{3})\)", text)
    assert shown is not None
    assert shown.group(1) == f"{expected:.3f}"
    assert float(shown.group(2)) <= expected <= float(shown.group(3))
    assert f"Micro AUROC {micro_auroc(y, score):.3f}" in text
    per_finding = pd.read_csv(path.parent / "per_finding.csv").set_index("finding")
    assert list(per_finding.index) == FINDINGS
    assert per_finding["auroc"].dropna().mean() == pytest.approx(expected, abs=1e-12)
    assert "mean over the 4 of 5 findings" in text
    assert "thresholds chosen on 'val' by F1" in text and "without demographics" in text


def test_per_finding_numbers_follow_the_signal_and_the_thresholds(report):
    path, (y, score, _sex, _age, thresholds) = report
    table = pd.read_csv(path.parent / "per_finding.csv").set_index("finding")
    assert table.loc["A", "auroc"] > 0.95
    assert abs(table.loc["C", "auroc"] - 0.5) < 0.1  # pure noise
    assert 0.6 < table.loc["B", "auroc"] < table.loc["A", "auroc"]
    defined = table.dropna(subset=["auroc"])
    assert (defined["ci_low"] <= defined["auroc"]).all() and (defined["auroc"] <= defined["ci_high"]).all()
    assert (defined["ci_high"] - defined["ci_low"] > 0.01).all()  # real intervals, not a point
    at = threshold_metrics(y, score, thresholds, FINDINGS).set_index("finding")
    for column in ("precision", "recall", "f1", "specificity"):
        pd.testing.assert_series_equal(table[column], at[column], check_names=False)
    line = next(row for row in path.read_text().splitlines() if row.startswith("| A |"))
    a = table.loc["A"]
    assert f"{a['auroc']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f})" in line
    assert f"| {a['recall']:.3f} | {a['specificity']:.3f} | {a['precision']:.3f} | {a['f1']:.3f} |" in line


def test_finding_without_positives_is_na_not_a_crash(report):
    path, _ = report
    table = pd.read_csv(path.parent / "per_finding.csv").set_index("finding")
    assert table.loc["D", "n_pos"] == 0 and table.loc["D", "n_neg"] == N
    assert np.isnan(table.loc["D", "auroc"]) and np.isnan(table.loc["D", "ci_low"])
    text = path.read_text()
    assert "| D | 0 / 300 | n/a | n/a |" in text
    assert "D (0 positive / 300 negative)" in text  # named as left out of the macro mean
    assert "nan" not in text.lower().replace("finding", "")


def test_nan_labels_are_dropped_per_finding(report):
    path, (y, score, *_rest) = report
    table = pd.read_csv(path.parent / "per_finding.csv").set_index("finding")
    assert table.loc["B", "n_pos"] + table.loc["B", "n_neg"] == N - N_UNLABELLED_B
    assert table.loc["B", "n_unlabelled"] == N_UNLABELLED_B
    assert table.loc["A", "n_pos"] + table.loc["A", "n_neg"] == N  # B's gaps do not drop A's images
    labelled = ~np.isnan(y[:, 1])
    assert table.loc["B", "auroc"] == pytest.approx(roc_auc_score(y[labelled, 1], score[labelled, 1]), abs=1e-12)
    assert "20 unlabelled" in path.read_text()
    predictions = pd.read_csv(path.parent / "predictions.csv")
    assert list(predictions.columns) == ["image_id", *FINDINGS, *[f"label_{f}" for f in FINDINGS]]
    assert predictions["label_B"].isna().sum() == N_UNLABELLED_B
    np.testing.assert_allclose(predictions[FINDINGS].to_numpy(), score)
    np.testing.assert_array_equal(predictions["label_A"].to_numpy(), y[:, 0])


def test_pictures_are_real_pngs(report):
    path, _ = report
    for name in ("roc_curves.png", "pr_curves.png", "training_curves.png"):
        picture = path.parent / name
        assert picture.stat().st_size > 10_000, name
        with Image.open(picture) as image:
            assert image.format == "PNG"
            assert image.width >= 800 and image.height >= 400, (name, image.size)
            image.verify()


def test_subgroups_cover_every_image_and_tolerate_empty_groups(report):
    path, (y, score, sex, age, _thr) = report
    table = pd.read_csv(path.parent / "subgroups.csv")
    by_sex = table[table["by"] == "sex"]
    assert list(by_sex["group"]) == ["M", "F", "unknown"]
    assert by_sex["images"].sum() == N
    ages = table[table["by"] == "age"]
    assert list(ages["group"]) == ["0-17", "18-39", "40-59", "60+", "unknown"]
    assert ages["images"].sum() == N and ages.set_index("group").loc["unknown", "images"] == 10
    males = np.array([s == "M" for s in sex])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        expected = per_class_auroc(y[males], score[males], FINDINGS)
    row = by_sex.set_index("group").loc["M"]
    np.testing.assert_allclose(row[FINDINGS].to_numpy(float), expected.to_numpy(), equal_nan=True)
    assert row["macro_auroc"] == pytest.approx(expected.mean(skipna=True))
    assert "| sex | M |" in path.read_text()


def test_subgroup_auroc_small_and_empty_groups_give_nan():
    y, score, sex, age = _data(n=60)
    sex = np.array(["m", "F", "X", None, float("nan")] * 12, dtype=object)  # case, unknown codes, NaN
    age = age.copy()
    age[0] = 250.0  # outside every band
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = subgroup_auroc(y, score, FINDINGS, sex, age, bands=((0, 18), (18, 60), (60, 120), (300, 400)))
    indexed = table.set_index(["by", "group"])
    assert indexed.loc[("sex", "M"), "images"] == 12 and indexed.loc[("sex", "unknown"), "images"] == 36
    empty = indexed.loc[("age", "300+")]
    assert empty["images"] == 0 and empty["findings_with_auroc"] == 0 and np.isnan(empty["macro_auroc"])
    assert indexed.loc[("age", "other"), "images"] == 1 and np.isnan(indexed.loc[("age", "other"), "macro_auroc"])
    assert table[table["by"] == "age"]["images"].sum() == 60
    with pytest.raises(ValueError, match="overlap"):
        subgroup_auroc(y, score, FINDINGS, sex, age, bands=((0, 40), (30, 60)))
    with pytest.raises(ValueError, match="sex values"):
        subgroup_auroc(y, score, FINDINGS, sex[:-1], age)


def test_age_band_labels():
    assert [age_band_label(lo, hi) for lo, hi in ((0, 18), (18, 40), (60, 200))] == ["0-17", "18-39", "60+"]


def test_report_without_history_and_with_wrong_ids(tmp_path):
    y, score, sex, age = _data(n=80)
    common = dict(y_true=y, y_score=score, findings=FINDINGS, split="val", thresholds={f: 0.5 for f in FINDINGS},
                  sex=sex, age_years=age, n_boot=50)
    with pytest.raises(ValueError, match="image ids"):
        write_classifier_report(tmp_path / "bad", image_ids=["x"] * 79, **common)
    with pytest.raises(ValueError, match="no threshold for E"):
        write_classifier_report(tmp_path / "bad", image_ids=[str(i) for i in range(80)],
                                **{**common, "thresholds": {f: 0.5 for f in FINDINGS[:4]}})
    path = write_classifier_report(tmp_path / "ok", image_ids=[str(i) for i in range(80)], **common)
    text = path.read_text()
    assert not (tmp_path / "ok" / "training_curves.png").exists() and "training_curves.png" not in text
    assert "patients not given" in text and "optimistic" in text  # thresholds may come from this split


def test_curves_in_small_multiples_with_degenerate_findings(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"finding {k}" for k in range(14)]
    y = (rng.random((120, 14)) < 0.3).astype(float)
    score = y * 0.3 + rng.random((120, 14))
    y[:, 3] = np.nan  # not labelled at all
    y[:, 5] = 1.0  # positives only
    y[:30, 7] = np.nan
    for plot in (plot_roc_curves, plot_pr_curves):
        out = plot(y, score, names, tmp_path / f"{plot.__name__}.png", title="14 findings",
                   thresholds={f: 0.6 for f in names})
        with Image.open(out) as image:
            assert image.format == "PNG" and image.width > image.height  # a 5 x 3 grid, not one axis
        assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="same shape"):
        plot_roc_curves(y[:, :4], score, names[:4], tmp_path / "bad.png")


def test_training_curves_tolerate_nan_and_missing_lr(tmp_path):
    history = HISTORY.drop(columns="lr").assign(val_macro_auroc=[np.nan, 0.7, 0.72, 0.72])
    out = plot_classifier_history(history, tmp_path / "history.png")
    with Image.open(out) as image:
        assert image.format == "PNG"
    with pytest.raises(ValueError, match="val_loss"):
        plot_classifier_history(HISTORY.drop(columns="val_loss"), tmp_path / "bad.png")
