"""The run's gating rule: chosen on validation by `train classifier`, applied by `detect --classifier`, the
Analyzer (so `classify` and the service) and scored gated and ungated by `evaluate detector`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hybridcxr.analyzer import Analyzer
from hybridcxr.classify.gate import probability_table, val_detections
from hybridcxr.cli import app
from hybridcxr.detect.evaluate import evaluate_detector, evaluate_gating
from hybridcxr.detect.gating import GatingRule, gate
from hybridcxr.detect.predict import PREDICTION_COLUMNS, Detection, Detector
from hybridcxr.errors import InputError
from hybridcxr.findings import NO_FINDING
from hybridcxr.io import read_radiograph

RULE = GatingRule("abnormal", 1.0, 0.01, "classifier")


def test_training_stores_the_rule_chosen_on_validation(tiny_classifier):
    folder, run, card = tiny_classifier
    gating = card["gating"]
    table = pd.read_csv(run / "gating.csv")
    assert gating["chosen_on"] == "val" and gating["candidates"] == len(table)
    assert gating["val_map"] == pytest.approx(table["val_map"].max(), abs=1e-6)
    assert gating["val_map_ungated"] == pytest.approx(table["val_map"].iloc[0], abs=1e-6)
    assert GatingRule.from_dict(gating["rule"]).describe() == gating["description"]


class _CornerDetector:
    """Finds one box spanning each prepared image it is given (to check the mapping back)."""

    findings = ["Nodule/Mass"]

    def predict_paths(self, paths, *, image_ids, on_done=None):
        import cv2

        for path in paths:
            h, w = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
            boxes = pd.DataFrame({"image_id": [image_ids[path]], "finding": ["Nodule/Mass"], "score": [0.5],
                                  "x_min": [0.0], "y_min": [0.0], "x_max": [float(w)], "y_max": [float(h)]})
            yield Detection(None, boxes)  # type: ignore[arg-type]


def test_validation_boxes_are_mapped_back_to_original_pixels(tiny_detector):
    _, folder, _ = tiny_detector
    manifest = pd.read_csv(folder / "prepared" / "manifest.csv", dtype={"image_id": str})
    val = manifest[manifest["split"] == "val"]
    boxes = val_detections(folder / "prepared", _CornerDetector(), val["image_id"].tolist()).set_index("image_id")
    sizes = val.set_index("image_id").loc[boxes.index]
    assert (sizes["width"] > sizes["prepared_width"]).all()  # the prepared PNGs are smaller than the originals
    assert boxes["x_max"].to_numpy() == pytest.approx(sizes["width"].to_numpy(dtype=float))
    assert boxes["y_max"].to_numpy() == pytest.approx(sizes["height"].to_numpy(dtype=float))
    assert len(boxes) == len(val)


def test_unlearned_findings_are_left_to_the_abnormality():
    table = probability_table(["a"], np.array([[0.2, 0.3, 0.9]]), ["ILD", "Aortic enlargement", NO_FINDING],
                              {"ILD": "no positive training image"})
    assert list(table.columns) == ["Aortic enlargement", NO_FINDING] and table.index.tolist() == ["a"]


@pytest.fixture
def gated_run(tiny_classifier, tmp_path: Path) -> Path:
    """The tiny run with a known gating rule written into its card."""
    _, run, _ = tiny_classifier
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("features", "checkpoint"))
    card_file = copy / "model" / "card.json"
    card = json.loads(card_file.read_text())
    card["gating"] = {"rule": RULE.to_dict(), "description": RULE.describe()}
    card_file.write_text(json.dumps(card))
    return copy


def _with_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give every detection two boxes (the 1-epoch tiny detector finds next to nothing)."""
    run = Detector.run

    def run_with_boxes(self, batch, **kwargs):
        out = []
        for d in run(self, batch, **kwargs):
            extra = pd.DataFrame({"image_id": d.radiograph.image_id, "finding": [self.findings[0]] * 2,
                                  "score": [0.6, 0.2], "x_min": [10.0, 40.0], "y_min": [10.0, 40.0],
                                  "x_max": [30.0, 60.0], "y_max": [30.0, 60.0]})
            out.append(Detection(d.radiograph, pd.concat([extra, d.boxes], ignore_index=True), d.features))
        return out

    monkeypatch.setattr(Detector, "run", run_with_boxes)


def test_detect_with_classifier_gates_and_evaluate_scores_both(tiny_classifier, gated_run, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch):
    folder, _, _ = tiny_classifier
    images = folder / "prepared" / "images" / "test"
    out = tmp_path / "det"
    _with_boxes(monkeypatch)
    result = CliRunner().invoke(app, ["detect", str(images), "--classifier", str(gated_run), "--out", str(out),
                                      "--conf", "0.001", "--no-progress"])
    assert result.exit_code == 0, result.output
    gated = pd.read_csv(out / "detections.csv", dtype={"image_id": str})
    raw = pd.read_csv(out / "detections_ungated.csv", dtype={"image_id": str})
    assert json.loads((out / "gating.json").read_text())["rule"] == RULE.to_dict()
    normal = gated[gated["finding"] == NO_FINDING]
    assert normal["image_id"].is_unique and len(normal) == len(list(images.glob("*.png")))
    lesions = gated[gated["finding"] != NO_FINDING]
    assert len(raw) >= 2 * len(normal) and len(lesions)
    assert (lesions["score"] < lesions["detector_score"]).all() and (lesions["score"] >= RULE.floor).all()
    p_normal = normal.set_index("image_id")["score"]
    expected = lesions["detector_score"] * (1 - p_normal.reindex(lesions["image_id"]).to_numpy())
    assert lesions["score"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-6)
    record = json.loads(next((out / "json").glob("*.json")).read_text())
    assert record["gating"] == RULE.describe()
    # the folder and its submission give the same number; evaluate reports gated and ungated side by side
    reports = evaluate_gating(out, folder / "prepared", split=None)
    assert set(reports) == {"gated", "ungated"}
    from_submission = evaluate_detector(out / "submission.csv", folder / "prepared")
    assert from_submission.map == pytest.approx(reports["gated"].map)
    printed = CliRunner().invoke(app, ["evaluate", "detector", "--pred", str(out), "--truth", str(folder / "prepared")])
    assert printed.exit_code == 0 and "side by side" in printed.output and "AP gated" in printed.output


def test_classify_reports_the_gated_boxes(tiny_classifier, gated_run, monkeypatch: pytest.MonkeyPatch):
    folder, _, _ = tiny_classifier
    image = next((folder / "prepared" / "images" / "test").glob("*.png"))
    _with_boxes(monkeypatch)
    analyzer = Analyzer(gated_run)
    assert analyzer.gating == RULE
    analysis = next(analyzer.analyze_paths([image]))
    raw = analysis.detector_boxes
    assert raw is not None and len(raw) >= 2
    p_abnormal = 1 - analysis.probabilities[NO_FINDING]
    expected = raw.assign(score=raw["score"] * p_abnormal)
    expected = expected[expected["score"] >= RULE.floor].sort_values("score", ascending=False)
    assert analysis.detection.boxes["score"].tolist() == pytest.approx(expected["score"].tolist())
    rows = analyzer.submission_rows(analysis)
    assert rows.loc[rows["finding"] == NO_FINDING, "score"].tolist() == pytest.approx(
        [analysis.probabilities[NO_FINDING]])


def test_detect_refuses_another_detector_than_the_runs(tiny_classifier, gated_run, tiny_detector, tmp_path: Path):
    from hybridcxr.commands import open_detector

    other = tmp_path / "other.safetensors"
    weights = gated_run / "detector" / "best.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 8)
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, other)
    shutil.copyfile(gated_run / "detector" / "best.json", tmp_path / "other.json")
    card = json.loads((tmp_path / "other.json").read_text())
    card.pop("weights_sha256", None)
    (tmp_path / "other.json").write_text(json.dumps(card))
    with pytest.warns(UserWarning), pytest.raises(InputError, match="is not the detector of the classifier run"):
        open_detector(other, gated_run, None)
    detector, analyzer = open_detector(gated_run / "detector", gated_run, None)
    assert analyzer is not None and detector is analyzer.detector


def test_a_batch_is_gated_as_its_images_one_by_one(tiny_classifier, gated_run, monkeypatch: pytest.MonkeyPatch):
    """The Analyzer gates a batch in one pass: each image's boxes and rows are what gating it alone gives."""
    folder, _, _ = tiny_classifier
    images = sorted((folder / "prepared" / "images" / "test").glob("*.png"))
    assert len(images) >= 2
    _with_boxes(monkeypatch)
    analyzer = Analyzer(gated_run)
    detections = analyzer.detector.predict([read_radiograph(p) for p in images], features=True)
    probs = np.array([list(a.probabilities.values()) for a in analyzer.analyze(detections)])
    together = analyzer._gated(detections, probs)
    for d, p, (gated, raw, rows) in zip(detections, probs, together, strict=True):
        image_id = d.radiograph.image_id
        table = probability_table([image_id], p[None], analyzer.findings, analyzer.unlearned)
        alone = gate(d.boxes, table, RULE, [image_id])  # the image gated alone, its boxes ranked by score
        pd.testing.assert_frame_equal(rows, alone)
        expected = alone.loc[alone["finding"] != NO_FINDING, PREDICTION_COLUMNS]
        expected = expected.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
        pd.testing.assert_frame_equal(gated.boxes, expected)
        assert raw is d.boxes and len(expected) >= 2
    twice = analyzer._gated([detections[0], detections[0]], probs[[0, 0]])  # one id twice: gated one by one
    pd.testing.assert_frame_equal(twice[1][2], together[0][2])
