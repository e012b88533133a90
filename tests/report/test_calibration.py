"""ECE and Brier score against independent references (scikit-learn), the before/after table and the diagram."""

from __future__ import annotations

import numpy as np
import pytest

from hybridcxr.report.calibration import (
    BINS,
    brier_score,
    calibration_table,
    expected_calibration_error,
    plot_reliability,
)


def _reference_ece(y: np.ndarray, p: np.ndarray) -> float:
    """ECE from scikit-learn's calibration_curve (uniform bins) and the bins' counts."""
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y, p, n_bins=BINS, strategy="uniform")
    edges = np.linspace(0.0, 1.0, BINS + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p, side="right"), minlength=BINS)
    counts = counts[counts > 0]
    return float(np.sum(counts / len(y) * np.abs(observed - predicted)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_and_brier_match_scikit_learn(seed):
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(seed)
    p = rng.random(500)
    y = (rng.random(500) < p ** 2).astype(float)
    assert expected_calibration_error(y, p) == pytest.approx(_reference_ece(y, p), abs=1e-9)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))


def test_unlabelled_entries_are_left_out():
    y = np.array([1.0, np.nan, 0.0])
    p = np.array([0.8, 0.1, 0.3])
    assert brier_score(y, p) == pytest.approx((0.04 + 0.09) / 2)
    assert np.isnan(expected_calibration_error(np.array([np.nan]), np.array([0.5])))


def test_the_table_and_the_diagram(tmp_path):
    rng = np.random.default_rng(3)
    truth = rng.random((300, 2))
    y = (rng.random((300, 2)) < truth).astype(float)
    over = np.clip(truth + 0.3 * (truth - 0.5), 0, 1)
    table = calibration_table(y, over, truth, ["a", "b"])
    assert list(table["finding"]) == ["a", "b", "macro mean"]
    assert (table["ece_after"] < table["ece_before"]).all() and (table["brier_after"] <= table["brier_before"]).all()
    path = plot_reliability(y, over, truth, tmp_path / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
