"""Classification metrics: AUROC as scikit-learn computes it, bootstrap CIs, thresholds."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score, roc_curve

from hybridcxr.errors import DataWarning
from hybridcxr.findings import VINDR_CXR
from hybridcxr.report.metrics import (
    DEFAULT_THRESHOLD,
    _weighted_auroc,
    bootstrap_auroc_ci,
    choose_thresholds,
    macro_auroc,
    micro_auroc,
    per_class_auroc,
    threshold_metrics,
)

FINDINGS = ("Cardiomegaly", "Pleural effusion", "Nodule/Mass")


@pytest.fixture(scope="module")
def scored() -> tuple[np.ndarray, np.ndarray]:
    """300 images x 3 findings: informative, tie-rich scores (rounded to 0.05) and varied prevalence."""
    rng = np.random.default_rng(7)
    y = (rng.random((300, 3)) < [0.3, 0.15, 0.05]).astype(float)
    s = np.round(np.clip(rng.normal(0.35, 0.2, y.shape) + 0.25 * y, 0, 1) * 20) / 20
    return y, s


@pytest.fixture(scope="module")
def vindr_sized() -> tuple[np.ndarray, np.ndarray]:
    """A VinDr-CXR-sized test set: 500 images x 14 findings, prevalence 2-30 %."""
    rng = np.random.default_rng(11)
    prevalence = np.linspace(0.02, 0.3, len(VINDR_CXR))
    y = (rng.random((500, len(VINDR_CXR))) < prevalence).astype(float)
    s = rng.random(y.shape) + 0.6 * y
    return y, s


# --------------------------------------------------------------------------------------------------- AUROC


def test_auroc_hand_worked_four_images() -> None:
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of the 4 pairs ranked right
    y = np.array([[0], [0], [1], [1]])
    s = np.array([[0.1], [0.4], [0.35], [0.8]])
    assert per_class_auroc(y, s, ["Cardiomegaly"])["Cardiomegaly"] == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: (0.5 + 1 + 1 + 1) / 4
    y = np.array([[0], [1], [0], [1]])
    s = np.array([[0.5], [0.5], [0.2], [0.9]])
    assert per_class_auroc(y, s, ["x"])["x"] == pytest.approx(0.875)


def test_per_class_auroc_equals_sklearn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scored
    result = per_class_auroc(y, s, FINDINGS)
    assert result.name == "auroc" and list(result.index) == list(FINDINGS)
    for c, finding in enumerate(FINDINGS):
        assert result[finding] == pytest.approx(roc_auc_score(y[:, c], s[:, c]), abs=1e-12)
    assert result.attrs["notes"] == []
    assert macro_auroc(y, s, FINDINGS) == pytest.approx(np.mean([roc_auc_score(y[:, c], s[:, c]) for c in range(3)]))
    assert micro_auroc(y, s) == pytest.approx(roc_auc_score(y.ravel(), s.ravel()))
    # scores and their logits give the same AUROC: only the order matters
    logits = np.log(np.clip(s, 1e-6, 1 - 1e-6) / (1 - np.clip(s, 1e-6, 1 - 1e-6)))
    assert np.allclose(per_class_auroc(y, logits, FINDINGS), result)


def test_single_label_value_gives_nan_a_note_and_no_macro_weight(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scored
    y = y.copy()
    y[:, 2] = 0
    with pytest.warns(DataWarning, match="Nodule/Mass"):
        result = per_class_auroc(y, s, FINDINGS)
    assert np.isnan(result["Nodule/Mass"])
    assert result.attrs["notes"] == ["Nodule/Mass: AUROC undefined, 0 positive and 300 negative images"]
    with pytest.warns(DataWarning):
        macro = macro_auroc(y, s, FINDINGS)
    assert macro == pytest.approx(result.iloc[:2].mean())
    with pytest.warns(DataWarning):
        assert np.isnan(macro_auroc(np.zeros((4, 2)), np.random.default_rng(0).random((4, 2))))
    assert np.isnan(micro_auroc(np.ones((3, 2)), np.zeros((3, 2))))


def test_unlabelled_images_are_left_out(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scored
    y = y.copy()
    y[::4, 0] = np.nan
    keep = ~np.isnan(y[:, 0])
    assert per_class_auroc(y, s, FINDINGS)["Cardiomegaly"] == pytest.approx(roc_auc_score(y[keep, 0], s[keep, 0]))
    pooled = ~np.isnan(y)
    assert micro_auroc(y, s) == pytest.approx(roc_auc_score(y[pooled], s[pooled]))


def test_bad_inputs_are_refused() -> None:
    y = np.array([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="same shape"):
        per_class_auroc(y, np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="finding names"):
        per_class_auroc(y, np.zeros((2, 2)), ["a"])
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        per_class_auroc(np.array([[0, 2], [1, 0]]), np.zeros((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="NaN or infinite"):
        per_class_auroc(y, np.array([[0.1, np.nan], [0.2, 0.3]]), ["a", "b"])


# ----------------------------------------------------------------------------------------------- bootstrap


def test_weighted_auroc_equals_sklearn_on_materialised_resamples(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scored
    rng = np.random.default_rng(3)
    draws = rng.integers(0, len(y), size=(20, len(y)))
    counts = np.stack([np.bincount(d, minlength=len(y)) for d in draws]).astype(float)
    for c in range(3):
        fast = _weighted_auroc(s[:, c], y[:, c], counts)
        for b, d in enumerate(draws):
            labels = y[d, c]
            if labels.min() == labels.max():
                assert np.isnan(fast[b])
            else:
                assert fast[b] == pytest.approx(roc_auc_score(labels, s[d, c]), abs=1e-12)


def test_bootstrap_ci_contains_estimate_and_is_deterministic(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scored
    table = bootstrap_auroc_ci(y, s, FINDINGS, n_boot=300, seed=5)
    assert list(table.columns) == ["finding", "auroc", "ci_low", "ci_high", "n_pos", "n_neg", "n_boot"]
    assert list(table["finding"]) == list(FINDINGS)
    assert np.allclose(table["auroc"], per_class_auroc(y, s, FINDINGS).to_numpy())
    assert (table["ci_low"] < table["auroc"]).all() and (table["auroc"] < table["ci_high"]).all()
    assert (table["ci_low"] > 0.4).all() and (table["ci_high"] <= 1).all()
    assert table["n_pos"].tolist() == y.sum(axis=0).astype(int).tolist()
    assert (table["n_pos"] + table["n_neg"] == 300).all()
    # the rarest finding is the least certain
    widths = table["ci_high"] - table["ci_low"]
    assert widths.iloc[2] > widths.iloc[0]
    pd.testing.assert_frame_equal(table, bootstrap_auroc_ci(y, s, FINDINGS, n_boot=300, seed=5))
    other = bootstrap_auroc_ci(y, s, FINDINGS, n_boot=300, seed=6)
    assert not np.allclose(other["ci_low"], table["ci_low"])
    # a wider confidence level gives a wider interval
    wide = bootstrap_auroc_ci(y, s, FINDINGS, n_boot=300, seed=5, alpha=0.01)
    assert (wide["ci_low"] <= table["ci_low"]).all() and (wide["ci_high"] >= table["ci_high"]).all()


def test_bootstrap_percentiles_match_a_naive_loop() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((60, 2)) < 0.3).astype(float)
    s = rng.random((60, 2)) + 0.3 * y
    table = bootstrap_auroc_ci(y, s, ["a", "b"], n_boot=50, seed=9)
    draws = np.random.default_rng(9).integers(0, 60, size=(50, 60))  # the same stream the function draws
    for c in range(2):
        aucs = [roc_auc_score(y[d, c], s[d, c]) for d in draws if 0 < y[d, c].sum() < 60]
        assert table.at[c, "n_boot"] == len(aucs)
        assert table.at[c, "ci_low"] == pytest.approx(np.quantile(aucs, 0.025))
        assert table.at[c, "ci_high"] == pytest.approx(np.quantile(aucs, 0.975))


def test_bootstrap_skips_degenerate_resamples_and_undefined_findings() -> None:
    rng = np.random.default_rng(2)
    y = np.zeros((40, 2))
    y[:2, 0] = 1  # two positives: many resamples miss both
    s = rng.random((40, 2)) + y
    with pytest.warns(DataWarning, match="b: AUROC undefined"):
        table = bootstrap_auroc_ci(y, s, ["a", "b"], n_boot=200, seed=0, macro=True)
    assert 0 < table.at[0, "n_boot"] < 200
    assert table.at[0, "ci_low"] <= table.at[0, "auroc"] <= table.at[0, "ci_high"]
    assert np.isnan(table.at[1, "auroc"]) and np.isnan(table.at[1, "ci_low"]) and table.at[1, "n_boot"] == 0
    macro = table.iloc[2]
    assert macro["finding"] == "macro" and macro["auroc"] == pytest.approx(table.at[0, "auroc"])
    assert macro["n_boot"] == table.at[0, "n_boot"]


def test_bootstrap_is_fast_enough(vindr_sized: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = vindr_sized
    start = time.perf_counter()
    table = bootstrap_auroc_ci(y, s, VINDR_CXR, n_boot=1000, seed=0, macro=True)
    assert time.perf_counter() - start < 5.0
    assert len(table) == len(VINDR_CXR) + 1 and table["auroc"].notna().all()
    assert (table["ci_low"] <= table["auroc"]).all() and (table["auroc"] <= table["ci_high"]).all()
    assert table.iloc[-1]["auroc"] == pytest.approx(macro_auroc(y, s, VINDR_CXR))


# ---------------------------------------------------------------------------------------------- thresholds


def test_choose_thresholds_f1_and_youden_are_optimal(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scored
    f1_thr = choose_thresholds(y, s, FINDINGS, rule="f1")
    youden_thr = choose_thresholds(y, s, FINDINGS, rule="youden")
    assert set(f1_thr) == set(FINDINGS) and all(type(t) is float for t in f1_thr.values())
    for c, finding in enumerate(FINDINGS):
        candidates = np.unique(s[:, c])
        best_f1 = max(f1_score(y[:, c], s[:, c] >= t) for t in candidates)
        assert f1_thr[finding] in candidates
        assert f1_score(y[:, c], s[:, c] >= f1_thr[finding]) == pytest.approx(best_f1)
        fpr, tpr, _ = roc_curve(y[:, c], s[:, c])
        tn, fp, fn, tp = _confusion(y[:, c], s[:, c] >= youden_thr[finding])
        assert tp / (tp + fn) - fp / (fp + tn) == pytest.approx(np.max(tpr - fpr))


def test_choose_thresholds_hand_worked() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])[:, None]
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9])[:, None]
    # >= 0.3 calls 4 images: tp 3, fp 1 -> F1 6/7; >= 0.9: F1 1/2; >= 0.5: F1 2/5
    assert choose_thresholds(y, s, ["x"], rule="f1") == {"x": 0.3}
    # Youden: >= 0.3 gives 1 - 1/3; >= 0.9 gives 1/3; so 0.3 again
    assert choose_thresholds(y, s, ["x"], rule="youden") == {"x": 0.3}
    with pytest.warns(DataWarning, match="x"):
        assert choose_thresholds(np.zeros((3, 1)), s[:3], ["x"]) == {"x": DEFAULT_THRESHOLD}
    with pytest.raises(ValueError, match="rule"):
        choose_thresholds(y, s, ["x"], rule="accuracy")  # type: ignore[arg-type]


def test_threshold_metrics_match_sklearn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scored
    thresholds = {"Cardiomegaly": 0.5, "Pleural effusion": 0.45, "Nodule/Mass": 0.6}
    table = threshold_metrics(y, s, thresholds, FINDINGS)
    assert list(table.columns) == ["finding", "threshold", "precision", "recall", "f1", "specificity", "support",
                                   "tp", "fp", "fn", "tn"]
    for c, finding in enumerate(FINDINGS):
        row = table.iloc[c]
        called = s[:, c] >= thresholds[finding]
        p, r, f, support = precision_recall_fscore_support(y[:, c], called, average="binary", zero_division=0)
        tn, fp, fn, tp = _confusion(y[:, c], called)
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f))
        assert row["specificity"] == pytest.approx(tn / (tn + fp))
        assert row["support"] == y[:, c].sum() and (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn)
    single = threshold_metrics(y, s, 0.5, FINDINGS)
    assert single.iloc[0].equals(table.iloc[0])


def test_threshold_metrics_undefined_ratios_are_nan() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.2, 0.9], [0.1, 0.1], [0.3, 0.2]])
    table = threshold_metrics(y, s, [0.5, 0.5], ["a", "b"]).set_index("finding")
    assert np.isnan(table.at["a", "precision"])  # nothing called positive
    assert table.at["a", "recall"] == 0 and table.at["a", "f1"] == 0 and table.at["a", "specificity"] == 1
    assert np.isnan(table.at["b", "recall"])  # no positive label
    assert table.at["b", "precision"] == 0 and table.at["b", "f1"] == 0  # one false call
    assert table.at["b", "specificity"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no threshold for b"):
        threshold_metrics(y, s, {"a": 0.5}, ["a", "b"])


def _confusion(truth: np.ndarray, called: np.ndarray) -> tuple[int, int, int, int]:
    truth, called = truth.astype(bool), called.astype(bool)
    return (int((~truth & ~called).sum()), int((~truth & called).sum()), int((truth & ~called).sum()),
            int((truth & called).sum()))


def test_cluster_bootstrap_with_one_image_per_patient_is_the_image_bootstrap():
    rng = np.random.default_rng(3)
    y = (rng.random((60, 2)) < 0.4).astype(float)
    s = rng.random((60, 2)) + y
    plain = bootstrap_auroc_ci(y, s, ["a", "b"], n_boot=200, seed=1)
    grouped = bootstrap_auroc_ci(y, s, ["a", "b"], n_boot=200, seed=1, groups=[f"p{i}" for i in range(60)])
    pd.testing.assert_frame_equal(plain, grouped)


def test_cluster_bootstrap_resamples_patients_with_all_their_images():
    """Each patient imaged twice (identical rows): resampling patients gives exactly the intervals of one image
    per patient, while resampling images treats the copies as independent evidence and narrows them."""
    rng = np.random.default_rng(4)
    y = (rng.random((50, 1)) < 0.4).astype(float)
    s = rng.normal(size=(50, 1)) + 0.8 * y
    once = bootstrap_auroc_ci(y, s, ["a"], n_boot=400, seed=2)
    twice_y, twice_s = np.repeat(y, 2, axis=0), np.repeat(s, 2, axis=0)
    patients = np.repeat([f"p{i}" for i in range(50)], 2)
    clustered = bootstrap_auroc_ci(twice_y, twice_s, ["a"], n_boot=400, seed=2, groups=patients)
    naive = bootstrap_auroc_ci(twice_y, twice_s, ["a"], n_boot=400, seed=2)
    assert np.allclose(clustered[["auroc", "ci_low", "ci_high"]], once[["auroc", "ci_low", "ci_high"]])
    width = lambda t: float(t["ci_high"].iloc[0] - t["ci_low"].iloc[0])  # noqa: E731
    assert width(naive) < 0.85 * width(clustered)
    with pytest.raises(ValueError, match="group labels"):
        bootstrap_auroc_ci(y, s, ["a"], groups=["p"] * 3)


def test_cluster_bootstrap_images_without_a_patient_id_are_their_own_clusters():
    rng = np.random.default_rng(5)
    y = (rng.random((40, 1)) < 0.4).astype(float)
    s = rng.normal(size=(40, 1)) + y
    plain = bootstrap_auroc_ci(y, s, ["a"], n_boot=100, seed=3)
    for missing in ([None] * 40, [np.nan] * 40, [f"p{i}" if i % 2 else None for i in range(40)]):
        grouped = bootstrap_auroc_ci(y, s, ["a"], n_boot=100, seed=3, groups=missing)
        assert np.isfinite(grouped["ci_low"].iloc[0])
    all_missing = bootstrap_auroc_ci(y, s, ["a"], n_boot=100, seed=3, groups=[None] * 40)
    pd.testing.assert_frame_equal(plain, all_missing)
