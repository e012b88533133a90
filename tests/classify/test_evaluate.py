"""``hybridcxr evaluate classifier``: the report of a classifier run on one split, with its ablations."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from hybridcxr.classify.evaluate import evaluate_classifier
from hybridcxr.cli import app
from hybridcxr.errors import InputError

runner = CliRunner()


@pytest.fixture(scope="module")
def classifier(tiny_classifier):
    return tiny_classifier


def test_evaluate_classifier_writes_the_report(classifier, tmp_path):
    folder, out, _ = classifier
    report = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", "classifier", "--model", str(out), "--data", str(folder / "prepared"),
                                 "--split", "test", "--out", str(report), "--n-boot", "100", "--no-progress"])
    assert result.exit_code == 0, result.output
    text = (report / "report.md").read_text()
    assert "split **test**" in text and "## Ablation" in text and "without demographics" in text
    manifest = pd.read_csv(folder / "prepared" / "manifest.csv", dtype={"image_id": str, "patient_id": str})
    test_rows = manifest[manifest["split"] == "test"]
    assert f"{len(test_rows)} images of {test_rows['patient_id'].nunique()} patients" in text
    for name in ("roc_curves.png", "pr_curves.png", "training_curves.png", "per_finding.csv", "subgroups.csv",
                 "predictions.csv", "calibration.csv", "reliability.png"):
        assert (report / name).is_file(), name
    assert "## Calibration" in text and "ECE before" in text
    unlearned = sorted(classifier[2]["unlearned"])
    assert unlearned and "Not claimed" in text and unlearned[0] in text.split("Not claimed")[1]
    per_finding = pd.read_csv(report / "per_finding.csv").set_index("finding")
    assert per_finding.loc[unlearned, "auroc"].isna().all(), "no AUROC claim for what the model never learned"
    manifest = pd.read_csv(folder / "prepared" / "manifest.csv", dtype={"image_id": str})
    predictions = pd.read_csv(report / "predictions.csv", dtype={"image_id": str})
    assert set(predictions["image_id"]) == set(manifest.loc[manifest["split"] == "test", "image_id"])


def test_a_folder_that_is_not_a_classifier_run_is_refused_before_anything_loads(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(InputError, match="not a classifier run folder") as err:
        evaluate_classifier(tmp_path, tmp_path / "prepared", out=tmp_path / "report")
    assert err.value.path == str(tmp_path) and not (tmp_path / "report").exists()
