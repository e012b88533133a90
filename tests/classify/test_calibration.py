"""Temperature scaling: a known over-confidence recovered, the shared fallback, unlearned findings; and a
trained run's card, Analyzer and predictions carry calibration and no decision for what it never learned."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hybridcxr.classify.calibration import (
    MIN_POSITIVES,
    apply_calibration,
    biases_of,
    calibrated,
    fit_calibration,
    fit_platt,
    fit_temperature,
    temperatures_of,
    unlearned_findings,
)


def _calibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from those logits' own probabilities: perfectly calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    return z, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)


@pytest.mark.parametrize("factor", [0.5, 2.0, 3.0])
def test_a_known_over_or_under_confidence_is_recovered_within_ten_percent(factor):
    z, y = _calibrated_sample(20_000, seed=int(factor * 10))
    assert fit_temperature(z * factor, y) == pytest.approx(factor, rel=0.10)


def test_calibration_keeps_the_ranking_and_lowers_the_log_loss():
    z, y = _calibrated_sample(5000, seed=1)
    over = z * 4
    t = fit_temperature(over, y)
    before, after = calibrated(over[:, None], np.ones(1))[:, 0], calibrated(over[:, None], np.array([t]))[:, 0]
    order = np.argsort(over)
    assert np.all(np.diff(after[order]) >= 0), "a monotone map of the logits: the ranking (AUROC) is kept"

    def nll(p):
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    assert nll(after) < nll(before)


def test_findings_with_few_positives_share_one_temperature():
    z, y = _calibrated_sample(400, seed=2)
    rare = np.zeros(400)
    rare[:MIN_POSITIVES - 1] = 1
    entry = fit_calibration(np.c_[z * 2, z], np.c_[y, rare], ["common", "rare"])
    assert entry["own"] == ["common"] and entry["temperatures"]["rare"] == entry["shared"]
    assert entry["temperatures"]["common"] == pytest.approx(2.0, rel=0.25)
    assert temperatures_of(entry, ["common", "rare"]).tolist() == pytest.approx(
        [entry["temperatures"]["common"], entry["shared"]])
    assert temperatures_of(None, ["a", "b"]).tolist() == [1.0, 1.0]


def test_platt_recovers_a_known_scale_and_the_offset_weighted_bce_adds():
    """Logits made over-confident by 2 and shifted by log(pos_weight) = log(9): Platt finds T ~ 2 and b ~ -log(9)/2
    (the shift divided by T), where a temperature alone cannot remove the offset."""
    z, y = _calibrated_sample(20_000, seed=5)
    shifted = 2.0 * z + np.log(9.0)
    t, b = fit_platt(shifted, y)
    assert t == pytest.approx(2.0, rel=0.10) and b == pytest.approx(-np.log(9.0) / 2.0, abs=0.1)
    entry = fit_calibration(shifted[:, None], y[:, None], ["f"], "platt")
    assert entry["method"] == "platt" and biases_of(entry, ["f"])[0] == pytest.approx(b, abs=1e-3)

    def log_loss(p):
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    platt = apply_calibration(shifted[:, None], entry, ["f"])[:, 0]
    temperature = apply_calibration(shifted[:, None], fit_calibration(shifted[:, None], y[:, None], ["f"]), ["f"])[:, 0]
    assert log_loss(platt) < log_loss(temperature)
    assert (np.diff(platt[np.argsort(shifted)]) >= 0).all()  # monotone: the ranking (AUROC) is kept
    assert biases_of(fit_calibration(shifted[:, None], y[:, None], ["f"]), ["f"]).tolist() == [0.0]
    assert fit_platt(np.array([1.0, 2.0]), np.zeros(2)) == (1.0, 0.0)
    with pytest.raises(ValueError, match="temperature or platt"):
        fit_calibration(shifted[:, None], y[:, None], ["f"], "isotonic")


def test_one_valued_labels_leave_the_temperature_at_one():
    assert fit_temperature(np.array([1.0, 2.0, -1.0]), np.zeros(3)) == 1.0
    assert fit_temperature(np.array([1.0, 2.0]), np.array([np.nan, np.nan])) == 1.0


def test_findings_without_a_positive_training_image_are_unlearned():
    labels = np.array([[1, 0, np.nan], [0, 0, np.nan], [1, 0, 0]], dtype=float)
    found = unlearned_findings(labels, ["seen", "never", "unlabelled"])
    assert set(found) == {"never", "unlabelled"} and "no positive image" in found["never"]


def test_a_trained_run_is_calibrated_and_gives_no_decision_for_unlearned_findings(tiny_classifier, tmp_path):
    from typer.testing import CliRunner

    from hybridcxr.analyzer import Analyzer
    from hybridcxr.cli import app

    folder, run, card = tiny_classifier
    assert card["calibration"]["method"] == "platt"  # the default
    assert set(card["calibration"]["temperatures"]) == set(card["calibration"]["biases"]) == set(card["findings"])
    manifest = pd.read_csv(folder / "prepared" / "manifest.csv", dtype={"image_id": str})
    train = manifest[manifest["split"] == "train"]
    never = [f for f in card["findings"] if f != "No finding" and train[f].fillna(0).sum() == 0]
    assert never and sorted(card["unlearned"]) == sorted(never)
    analyzer = Analyzer(run, device="cpu")
    image = next((folder / "prepared" / "images").rglob("*.png"))
    result = next(iter(analyzer.analyze_paths([image])))
    assert all(result.decisions[f] is None for f in never)
    assert all(isinstance(result.decisions[f], bool) for f in card["findings"] if f not in never)
    done = CliRunner().invoke(app, ["classify", str(image), "--model", str(run), "--out", str(tmp_path / "out"),
                                    "--no-progress"])
    assert done.exit_code == 0, done.output
    assert "no decision" in done.output and never[0] in done.output
    row = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str, keep_default_na=False).iloc[0]
    assert row[f"{never[0]} positive"] == "" and row[f"{card['findings'][0]} positive"] in ("0", "1", "")


def test_the_analyzer_applies_a_platt_bias_from_the_card(tiny_classifier, tmp_path):
    """A card whose calibration has biases: every learned finding's logit moves by exactly its bias."""
    import json
    import shutil

    from scipy.special import logit

    from hybridcxr.analyzer import Analyzer

    folder, run, card = tiny_classifier
    image = next((folder / "prepared" / "images").rglob("*.png"))
    before = next(iter(Analyzer(run, device="cpu").analyze_paths([image])))
    shifted = tmp_path / "run"
    shutil.copytree(run, shifted)
    card_file = shifted / "model" / "card.json"
    stored = json.loads(card_file.read_text())
    calibration = stored["calibration"]
    biases = {f: 0.5 + 0.1 * i for i, f in enumerate(stored["findings"])}
    stored["calibration"] = {**calibration, "method": "platt", "biases": biases, "shared_bias": 0.0}
    card_file.write_text(json.dumps(stored))
    after = next(iter(Analyzer(shifted, device="cpu").analyze_paths([image])))
    old = dict(zip(stored["findings"], biases_of(calibration, stored["findings"]), strict=True))  # 0 without
    for finding in ("Cardiomegaly", "No finding"):
        moved = logit(np.float64(after.probabilities[finding])) - logit(np.float64(before.probabilities[finding]))
        assert moved == pytest.approx(biases[finding] - old[finding], abs=1e-3)
