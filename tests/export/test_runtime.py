"""``--runtime onnx``: the same boxes, features and probabilities as PyTorch within the stated tolerance, and
ONNX files that are missing, stale or damaged refused with their name."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from hybridcxr.analyzer import Analyzer
from hybridcxr.cli import app
from hybridcxr.detect.gating import GatingRule
from hybridcxr.detect.predict import Detector
from hybridcxr.errors import ConfigError, InputError
from hybridcxr.export.record import TOLERANCE, record_path
from hybridcxr.export.runtime import OnnxDetector, check_runtime, open_detector
from hybridcxr.files import file_sha256
from hybridcxr.findings import NO_FINDING
from hybridcxr.io import read_radiograph
from hybridcxr.layout import ClassifierLayout

from .conftest import copy_run

runner = CliRunner()
BOX_COLUMNS = ["score", "x_min", "y_min", "x_max", "y_max"]
RULE = GatingRule("abnormal", 1.0, 0.0, "classifier")


def _same_boxes(onnx: pd.DataFrame, torch: pd.DataFrame) -> None:
    """Every box of one table is in the other: same finding, score and corners within the tolerance.

    Counted as sets: where candidates tie (a 1-epoch detector scores many overlapping boxes alike, to 1e-7),
    NMS may keep a different number of copies of one box from outputs that agree within the tolerance.
    """
    for a, b in ((onnx, torch), (torch, onnx)):
        for row in a.itertuples():
            same = b[b["finding"] == row.finding]
            values = np.array([getattr(row, c) for c in BOX_COLUMNS])
            assert any(TOLERANCE.allclose(values, other) for other in same[BOX_COLUMNS].to_numpy()), row


def test_onnx_detector_gives_the_torch_boxes_and_features(exported_detector):
    phantom, run, _ = exported_detector
    paths = sorted((phantom / "test").glob("*.dicom"))
    onnx, torch = OnnxDetector.load(run), Detector.load(run, device="cpu")
    images = np.stack([torch.prepare(read_radiograph(p)).image for p in paths])
    for a, b in zip(onnx.forward(images, True), torch.forward(images, True)):  # the head's output, the features
        assert TOLERANCE.allclose(a, np.asarray(b))
    ours = list(onnx.predict_paths(paths, conf=0.0001, features=True))
    theirs = list(torch.predict_paths(paths, conf=0.0001, features=True))
    assert len(ours) == len(theirs) == len(paths) and sum(len(d.boxes) for d in theirs) > 0
    for a, b in zip(ours, theirs):
        _same_boxes(a.boxes, b.boxes)
        assert TOLERANCE.allclose(a.features, b.features)
    assert isinstance(open_detector(run, runtime="onnx"), OnnxDetector)
    assert type(open_detector(run, runtime="torch")) is Detector


def test_analyzer_onnx_gives_the_torch_probabilities(exported_classifier):
    phantom, run, _ = exported_classifier
    paths = sorted((phantom / "test").glob("*.dicom"))
    ours = list(Analyzer(run, runtime="onnx").analyze_paths(paths))
    theirs = list(Analyzer(run, device="cpu").analyze_paths(paths))
    for a, b in zip(ours, theirs, strict=True):
        assert TOLERANCE.allclose(list(a.probabilities.values()), list(b.probabilities.values()))
        _same_boxes(a.detection.boxes, b.detection.boxes)


def test_detect_and_classify_cli_with_runtime_onnx(exported_classifier, tmp_path):
    phantom, run, _ = exported_classifier
    gated = copy_run(run, tmp_path)  # a known rule: box score x P(abnormal), No finding from P
    card = json.loads((gated / "model" / "card.json").read_text())
    card["gating"] = {"rule": RULE.to_dict(), "description": RULE.describe()}
    (gated / "model" / "card.json").write_text(json.dumps(card))
    tables = {}
    for runtime in ("torch", "onnx"):
        for name, command, options, table in (
                ("detect", "detect", ["--weights", str(run / "detector"), "--conf", "0.0001"], "detections.csv"),
                ("gated", "detect", ["--classifier", str(gated), "--conf", "0.0001"], "detections.csv"),
                ("classify", "classify", ["--model", str(run)], "predictions.csv")):
            out = tmp_path / f"{name}-{runtime}"
            result = runner.invoke(app, [command, str(phantom / "test"), *options, "--out", str(out),
                                         "--runtime", runtime, "--no-progress"])
            assert result.exit_code == 0, result.output
            tables[name, runtime] = pd.read_csv(out / table, dtype={"image_id": str})
    torch, onnx = tables["classify", "torch"], tables["classify", "onnx"]
    assert list(onnx.columns) == list(torch.columns) and onnx["image_id"].tolist() == torch["image_id"].tolist()
    numbers = [c for c in torch.columns if pd.api.types.is_float_dtype(torch[c]) and torch[c].notna().all()]
    assert numbers and TOLERANCE.allclose(onnx[numbers].to_numpy(), torch[numbers].to_numpy())
    for name in ("detect", "gated"):  # gated: the classifier's probabilities from ONNX rescale ONNX's boxes
        torch, onnx = tables[name, "torch"], tables[name, "onnx"]
        assert list(onnx.columns) == list(torch.columns) and len(torch) > 0
        for image_id, boxes in torch.groupby("image_id"):
            _same_boxes(onnx[onnx["image_id"] == image_id], boxes)
    boxes = tables["gated", "onnx"][lambda t: t["finding"] != NO_FINDING]
    assert len(boxes) == len(tables["detect", "onnx"][lambda t: t["finding"] != NO_FINDING])  # no floor: none dropped
    assert (boxes["score"] <= boxes["detector_score"]).all() and (boxes["score"] < boxes["detector_score"]).any()
    refused = runner.invoke(app, ["detect", str(phantom / "test"), "--weights", str(run / "detector"), "--out",
                                  str(tmp_path / "x"), "--runtime", "onnx", "--device", "cuda"])
    assert refused.exit_code == 2 and "onnx runs on the CPU" in refused.output


def test_a_stale_export_is_refused(exported_detector, tmp_path):
    """Weights changed after the export (a re-trained detector): the old ONNX file no longer speaks for them."""
    run = copy_run(exported_detector[1], tmp_path)
    weights = run / "weights" / "best.safetensors"
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 0.01
    save_file(state, str(weights), metadata={"format": "pt", "kind": "hybridcxr detector"})
    card = json.loads((run / "weights" / "best.json").read_text())
    (run / "weights" / "best.json").write_text(json.dumps({**card, "weights_sha256": file_sha256(weights)}))
    Detector.load(run, device="cpu")  # the PyTorch path takes the new weights
    with pytest.raises(InputError, match=r"best\.onnx: is stale: it was exported from other weights"):
        OnnxDetector.load(run)


def test_damaged_or_missing_onnx_files_are_refused(exported_classifier, tmp_path):
    run = copy_run(exported_classifier[1], tmp_path)
    head = ClassifierLayout(run).onnx_head
    head.write_bytes(head.read_bytes()[:1000])
    with pytest.raises(InputError, match=r"head\.onnx: does not match its export record"):
        Analyzer(run, runtime="onnx")
    record = json.loads(record_path(head).read_text())  # a record that vouches for the damage: onnxruntime refuses
    record_path(head).write_text(json.dumps({**record, "sha256": file_sha256(head)}))
    with pytest.raises(InputError, match=r"head\.onnx: onnxruntime cannot load it"):
        Analyzer(run, runtime="onnx")
    record_path(head).unlink()
    with pytest.raises(InputError, match=r"head\.onnx: has no export record"):
        Analyzer(run, runtime="onnx")
    ClassifierLayout(run).onnx_backbone.unlink()
    with pytest.raises(InputError, match=r"backbone\.onnx: missing: .*hybridcxr export"):
        Analyzer(run, runtime="onnx")
    Analyzer(run)  # the PyTorch path needs none of them


def test_runtime_choices():
    assert check_runtime("onnx") == check_runtime("onnx", "cpu") == "onnx"
    with pytest.raises(ConfigError, match="must be one of torch, onnx"):
        check_runtime("tensorrt")
    with pytest.raises(ConfigError, match="onnx runs on the CPU"):
        check_runtime("onnx", "cuda:0")


def test_service_with_runtime_onnx(exported_classifier):
    """The service's Analyzer takes the runtime: an upload gets the PyTorch path's probabilities."""
    from hybridcxr.serve.service import AnalysisService

    phantom, run, _ = exported_classifier
    path = sorted((phantom / "test").glob("*.dicom"))[0]
    records = {}
    for runtime in ("torch", "onnx"):
        service = AnalysisService(run, device="cpu", runtime=runtime)
        assert service.analyzer.runtime == runtime
        with open(path, "rb") as upload:
            records[runtime] = service.analyze_upload(upload, "application/dicom")
    probabilities = [[f["probability"] for f in records[r]["findings"]] for r in ("onnx", "torch")]
    assert [f["finding"] for f in records["onnx"]["findings"]] == [f["finding"] for f in records["torch"]["findings"]]
    assert TOLERANCE.allclose(*probabilities)
