"""The binary (one-finding) report: metrics against sklearn, the figures, and the pneumonia recipe end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score
from typer.testing import CliRunner

from hybridcxr.report import binary
from hybridcxr.report.binary import (
    TRAIN_COLOUR,
    VAL_COLOUR,
    binary_finding,
    binary_metrics,
    plot_binary_history,
    write_binary_report,
)

Y_TRUE = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0, 0])
Y_SCORE = np.array([0.91, 0.42, 0.66, 0.30, 0.71, 0.05, 0.50, 0.49, 0.12, 0.88, 0.64, 0.2])
HISTORY = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.9, 0.7, 0.5], "val_loss": [0.95, 0.8, 0.75],
                        "train_accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.45, 0.6, 0.65],
                        "val_macro_auroc": [0.5, 0.6, 0.7], "lr": [1e-3, 1e-3, 1e-3]})


@pytest.mark.parametrize("threshold", [0.5, 0.45, 0.7])
def test_metrics_agree_with_sklearn(threshold: float) -> None:
    m = binary_metrics(Y_TRUE, Y_SCORE, threshold, "Pneumonia")
    said = (Y_SCORE >= threshold).astype(int)
    np.testing.assert_array_equal(m.confusion(), confusion_matrix(Y_TRUE, said, labels=[0, 1]))
    assert m.accuracy == pytest.approx(accuracy_score(Y_TRUE, said))
    assert m.sensitivity == pytest.approx(recall_score(Y_TRUE, said))
    assert m.specificity == pytest.approx(recall_score(Y_TRUE, said, pos_label=0))
    assert m.precision == pytest.approx(precision_score(Y_TRUE, said, zero_division=np.nan))
    assert m.n == len(Y_TRUE) and m.tp + m.fp + m.fn + m.tn == m.n


def test_unlabelled_rows_are_left_out_and_empty_rates_are_nan() -> None:
    m = binary_metrics([1, np.nan, 0], [0.9, 0.9, 0.1], 0.5)
    assert (m.n, m.tp, m.tn, m.fp, m.fn) == (2, 1, 1, 0, 0)
    assert np.isnan(binary_metrics([0, 0], [0.1, 0.2], 0.5).sensitivity)
    with pytest.raises(ValueError, match="two vectors"):
        binary_metrics([1, 0], [0.5], 0.5)


def test_binary_finding_is_the_one_finding_besides_no_finding() -> None:
    assert binary_finding(("Pneumonia", "No finding")) == "Pneumonia"
    assert binary_finding(("Pneumonia",)) == "Pneumonia"
    assert binary_finding(("Cardiomegaly", "Pneumothorax", "No finding")) is None
    assert binary_finding(("No finding",)) is None


def test_training_figure_is_loss_and_accuracy_blue_and_orange(monkeypatch, tmp_path: Path) -> None:
    drawn = {}

    def keep(fig, path, dpi=110):
        drawn["axes"] = [[(line.get_label(), line.get_color(), list(line.get_ydata())) for line in ax.get_lines()]
                         for ax in fig.axes]
        drawn["titles"] = [ax.get_title() for ax in fig.axes]
        binary.pyplot().close(fig)
        return Path(path)

    monkeypatch.setattr(binary, "save_figure", keep)
    plot_binary_history(HISTORY, tmp_path / "h.png")
    assert len(drawn["axes"]) == 2 and "loss" in drawn["titles"][0] and "accuracy" in drawn["titles"][1]
    for axis, name in zip(drawn["axes"], ("loss", "accuracy")):
        assert [(label, colour) for label, colour, _ in axis] == [("training", TRAIN_COLOUR), ("validation", VAL_COLOUR)]
        assert axis[0][2] == HISTORY[f"train_{name}"].tolist() and axis[1][2] == HISTORY[f"val_{name}"].tolist()
    with pytest.raises(ValueError, match="train_accuracy"):
        plot_binary_history(HISTORY.drop(columns="train_accuracy"), tmp_path / "bad.png")


def test_write_binary_report_files_and_numbers(tmp_path: Path) -> None:
    lines = write_binary_report(tmp_path / "r", y_true=Y_TRUE, y_score=Y_SCORE, finding="Pneumonia", threshold=0.5,
                                split="test", history=HISTORY)
    saved = json.loads((tmp_path / "r" / "binary.json").read_text())
    said = (Y_SCORE >= 0.5).astype(int)
    assert saved["confusion_matrix"] == confusion_matrix(Y_TRUE, said).tolist()
    assert saved["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, said))
    for name in ("confusion_matrix.png", "training_accuracy.png"):
        with Image.open(tmp_path / "r" / name) as im:
            assert im.format == "PNG" and min(im.size) > 200
    assert "## Binary decision" in lines and (tmp_path / "r" / "binary.md").read_text().startswith("## Binary")
    write_binary_report(tmp_path / "old", y_true=Y_TRUE, y_score=Y_SCORE, finding="Pneumonia", threshold=0.5,
                        split="test", history=HISTORY.drop(columns=["train_accuracy", "val_accuracy"]))
    assert not (tmp_path / "old" / "training_accuracy.png").exists()
    assert "No per-epoch accuracy" in (tmp_path / "old" / "binary.md").read_text()


def test_multi_finding_runs_get_no_binary_section(tmp_path: Path) -> None:
    from hybridcxr.classify.evaluate import binary_section

    labels, scores = np.zeros((4, 3)), np.full((4, 3), 0.5)
    findings = ("Cardiomegaly", "Pneumothorax", "No finding")
    assert binary_section(tmp_path, findings, labels, scores, dict.fromkeys(findings, 0.5), "test", HISTORY) == []
    assert not any(tmp_path.iterdir())


def test_pneumonia_recipe_end_to_end(tiny_detector, tmp_path: Path) -> None:
    """demo-data --layout pneumonia, prepare pneumonia, train classifier, evaluate classifier: the binary report."""
    from hybridcxr.cli import app

    _, folder, _ = tiny_detector  # a detector of VinDr-CXR phantoms: the pneumonia set has no boxes to train one
    runner = CliRunner()
    root, prepared, run, report = (tmp_path / n for n in ("xray", "prepared", "run", "report"))
    steps = [["demo-data", str(root), "--n", "24", "--seed", "3", "--layout", "pneumonia"],
             ["prepare", "pneumonia", "--root", str(root), "--out", str(prepared), "--size", "128",
              "--split", "0.6,0.2,0.2", "--workers", "0", "--no-progress"],
             ["train", "classifier", "--data", str(prepared), "--detector", str(folder / "run"), "--out", str(run),
              "--no-progress", "epochs=4", "patience=4", "backbone_size=64", "hidden=[32]", "gating=none"],
             ["evaluate", "classifier", "--model", str(run), "--data", str(prepared), "--out", str(report),
              "--no-ablation", "--n-boot", "50", "--no-progress"]]
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 4 and history[["train_accuracy", "val_accuracy"]].notna().all().all()
    assert history[["train_accuracy", "val_accuracy"]].stack().between(0, 1).all()
    saved = json.loads((report / "binary.json").read_text())
    predictions = pd.read_csv(report / "predictions.csv")
    said = (predictions["Pneumonia"] >= saved["threshold"]).astype(int)
    truth = predictions["label_Pneumonia"].astype(int)
    assert saved["confusion_matrix"] == confusion_matrix(truth, said, labels=[0, 1]).tolist()
    assert saved["accuracy"] == pytest.approx(accuracy_score(truth, said))
    assert saved["n"] == len(predictions) and saved["finding"] == "Pneumonia"
    for name in ("confusion_matrix.png", "training_accuracy.png", "binary.md", "report.md"):
        assert (report / name).is_file(), name
    text = (report / "report.md").read_text()
    assert "## Binary decision" in text and "Specificity" in text and "training_accuracy.png" in text
