"""``hybridcxr export --int8`` and ``--runtime onnx-int8``: an int8 detector graph calibrated on real images,
held to the stated int8 tolerance, with its decoding and pooled features left in fp32."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from hybridcxr.analyzer import Analyzer
from hybridcxr.cli import app
from hybridcxr.detect.predict import Detector
from hybridcxr.errors import InputError
from hybridcxr.export.quantize import INT8_TOLERANCE, Int8Tolerance, calibration_files, kept_fp32
from hybridcxr.export.record import record_path
from hybridcxr.export.runtime import OnnxDetector, check_runtime, open_detector
from hybridcxr.files import file_sha256
from hybridcxr.io import read_radiograph

from .conftest import copy_run

runner = CliRunner()


def test_tolerance_measures_scores_scored_boxes_and_relative_features():
    ref = np.zeros((1, 6, 3))  # one image, 4 box coordinates + 2 classes, 3 anchors
    ref[0, 4:, 0] = [0.9, 0.0]  # anchor 0 scored, anchors 1 and 2 not
    raw = ref.copy()
    raw[0, 4, 0] = 0.85  # a score 0.05 lower
    raw[0, :4, 0] = 6.4  # anchor 0's box 6.4 px off: 0.02 of a 320 px image
    raw[0, :4, 1] = 100.0  # an unscored anchor's box, never kept: not counted
    feats, ref_feats = np.array([[1.0, 2.2]]), np.array([[1.0, 2.0]])
    measured = Int8Tolerance().measure((raw, feats), (ref, ref_feats), imgsz=320)
    assert measured == pytest.approx({"scores": 0.05, "boxes": 0.02, "features": 0.1})
    assert Int8Tolerance(features=0.05).failures(measured) == ["features"]
    assert Int8Tolerance().failures({"scores": float("nan"), "boxes": 0.0, "features": 0.0}) == ["scores"]
    assert Int8Tolerance(features=0.2).failures({**measured, "probabilities": 0.9}) == []  # it still detects
    assert not INT8_TOLERANCE.classifies({**measured, "probabilities": 0.06})  # but does not classify
    assert INT8_TOLERANCE.classifies({**measured, "probabilities": 0.05}) and INT8_TOLERANCE.classifies(measured)
    assert INT8_TOLERANCE.as_dict()["kind"] == "int8"


def test_int8_export_is_quantised_checked_and_recorded(int8_detector):
    _, run, result = int8_detector
    assert [(item.model, item.int8) for item in result.files] == [("detector", False), ("detector", True)]
    path = run / "weights" / "best.int8.onnx"
    record = json.loads(record_path(path).read_text())
    assert record["file"] == "best.int8.onnx" and record["sha256"] == file_sha256(path)
    assert record["source"]["sha256"] == file_sha256(run / "weights" / "best.safetensors")
    assert record["tolerance"] == INT8_TOLERANCE.as_dict() and not INT8_TOLERANCE.failures(record["max_abs_diff"])
    assert set(record["max_abs_diff"]) == {"scores", "boxes", "features"}  # a detector run: no probabilities
    assert "held-out images" in record["checked_on"] and "val" in record["checked_on"]
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, "the graph must be int8"
    assert [o.name for o in graph.output] == ["output0", "features"]
    producer = {o: n for n in graph.node for o in n.output}
    assert {producer[name].op_type for name in ("output0", "features")}.isdisjoint({"DequantizeLinear"})
    means = {o for n in graph.node if n.op_type == "ReduceMean" for o in n.output}
    assert means and not any(n.op_type == "QuantizeLinear" and n.input[0] in means for n in graph.node)
    assert "int8 tolerance" in str(result)


def test_kept_fp32_names_the_decoding_and_the_pooled_means(exported_detector):
    _, run, _ = exported_detector
    graph = onnx.load(str(run / "weights" / "best.onnx")).graph
    layer = len(Detector.load(run, device="cpu").model.model) - 1
    kept = set(kept_fp32(graph, layer))
    by_name = {n.name: n for n in graph.node}
    assert {n for n in kept if by_name[n].op_type == "ReduceMean"} == {n.name for n in graph.node
                                                                       if n.op_type == "ReduceMean"}
    assert any(by_name[n].op_type == "Softmax" for n in kept)  # the distribution-to-box decoding
    kept_convs = [n for n in kept if by_name[n].op_type == "Conv"]
    assert kept_convs == [f"/model.{layer}/dfl/conv/Conv"]  # every learned convolution is quantised
    assert any("features" in by_name[n].output for n in kept)


def test_onnx_int8_detector_stays_within_the_int8_tolerance(int8_detector):
    phantom, run, _ = int8_detector
    paths = sorted((phantom / "test").glob("*.dicom"))
    int8, torch = OnnxDetector.load(run, int8=True), Detector.load(run, device="cpu")
    assert isinstance(open_detector(run, runtime="onnx-int8"), OnnxDetector)
    images = np.stack([torch.prepare(read_radiograph(p)).image for p in paths])
    measured = INT8_TOLERANCE.measure(int8.forward(images, True), torch.forward(images, True), torch.imgsz)
    assert not INT8_TOLERANCE.failures(measured), measured
    assert measured["features"] > 0  # int8, not the fp32 graph under another name
    detections = list(int8.predict_paths(paths, conf=0.0001))
    assert len(detections) == len(paths) and sum(len(d.boxes) for d in detections) > 0
    assert check_runtime("onnx-int8", "cpu") == "onnx-int8"


def test_int8_runtime_needs_its_export_and_says_how(exported_detector, tmp_path):
    run = copy_run(exported_detector[1], tmp_path)
    with pytest.raises(InputError, match=r"best\.int8\.onnx: missing: no int8 ONNX detector here; make it with "
                                         r"`hybridcxr export RUN --format onnx --int8`"):
        OnnxDetector.load(run, int8=True)


def test_calibration_images_from_a_folder_or_the_prepared_dataset(tiny_detector, tmp_path):
    phantom, folder, _ = tiny_detector
    card = json.loads((folder / "run" / "weights" / "best.json").read_text())
    weights = folder / "run" / "weights" / "best.safetensors"
    calibrate, check = calibration_files(card, weights)
    assert {p.parent.name for p in calibrate} == {"train"} and {p.parent.name for p in check} == {"val"}
    files = sorted((phantom / "test").glob("*.dicom"))
    calibrate, check = calibration_files(card, weights, phantom / "test")
    assert check == files[3::4] and set(calibrate) | set(check) == set(files) and not set(calibrate) & set(check)
    with pytest.raises(InputError, match="--calibration needs at least 4 images"):
        calibration_files(card, weights, tmp_path)
    with pytest.raises(InputError, match=r"best\.safetensors: int8 export calibrates on the detector's training "
                                         r"images, .*pass --calibration DIR"):
        calibration_files({**card, "data": str(tmp_path / "gone" / "data.yaml")}, weights)


def test_export_cli_int8_with_a_calibration_folder(tiny_detector, tmp_path):
    phantom, folder, _ = tiny_detector
    run = tmp_path / "run"
    shutil.copytree(folder / "run", run)
    refused = runner.invoke(app, ["export", str(run), "--calibration", str(phantom / "test")])
    assert refused.exit_code == 2 and "--calibration is for --int8" in refused.output
    result = runner.invoke(app, ["export", str(run), "--int8", "--calibration", str(phantom / "test")])
    assert result.exit_code == 0, result.output
    record = json.loads(record_path(run / "weights" / "best.int8.onnx").read_text())
    assert str(phantom / "test") in record["checked_on"]
    out = tmp_path / "detect"
    detected = runner.invoke(app, ["detect", str(phantom / "test"), "--weights", str(run), "--out", str(out),
                                   "--runtime", "onnx-int8", "--no-progress", "--conf", "0.0001"])
    assert detected.exit_code == 0, detected.output
    assert (out / "detections.csv").is_file()


def test_analyzer_onnx_int8_probabilities_measured_held_and_refused_beyond(exported_classifier, tmp_path):
    """The classifier reads the int8 detector's pooled features: its probabilities move. The export measures
    by how much on the held-out images and records it; within 0.05 the run classifies on int8 (the service
    too), beyond it the runtime refuses, naming the record, while the same graph still detects."""
    from hybridcxr.export.onnx import export_run

    phantom, run, _ = exported_classifier
    run = copy_run(run, tmp_path)
    printed = str(export_run(run, int8=True))
    record_file = record_path(run / "detector" / "best.int8.onnx")
    record = json.loads(record_file.read_text())
    moved = record["max_abs_diff"]["probabilities"]
    assert record["tolerance"]["probabilities"] == 0.05 and 0 <= moved <= 0.05 and record["classifies"] is True
    assert record["features_shift_corrected"]["calibration_images"] > 0
    flips = record["decisions_flipped"]  # the run's yes/no calls at its thresholds, on the same check images
    assert flips["of"] > 0 and 0 <= flips["flipped"] <= flips["of"]
    assert f"the run's decisions at its thresholds: {flips['flipped']} of {flips['of']} flipped" in printed
    paths = sorted((phantom / "test").glob("*.dicom"))
    ours = list(Analyzer(run, runtime="onnx-int8").analyze_paths(paths))
    theirs = list(Analyzer(run, device="cpu").analyze_paths(paths))
    diffs = [abs(a - b) for x, y in zip(ours, theirs, strict=True)
             for a, b in zip(x.probabilities.values(), y.probabilities.values())]
    assert max(diffs) < 0.1
    from hybridcxr.serve.service import AnalysisService

    service = AnalysisService(run, device="cpu", runtime="onnx-int8")  # the service takes the runtime too
    with open(paths[0], "rb") as upload:
        answer = service.analyze_upload(upload, "application/dicom")
    served = {f["finding"]: f["probability"] for f in answer["findings"]}
    assert served == pytest.approx({k: v for k, v in ours[0].probabilities.items() if k in served}, abs=1e-5)
    record["max_abs_diff"]["probabilities"] = 0.2  # as an export on a run whose head is sensitive would record
    record_file.write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"best\.int8\.onnx\.json: with the detector in int8 this run's "
                                         r"probabilities moved by up to 0\.2 on its held-out images .*beyond the "
                                         r"int8 tolerance's 0\.05.*use --runtime onnx"):
        Analyzer(run, runtime="onnx-int8")
    result = runner.invoke(app, ["classify", str(phantom / "test"), "--model", str(run), "--out",
                                 str(tmp_path / "refused"), "--runtime", "onnx-int8", "--no-progress"])
    assert result.exit_code != 0 and "beyond the int8 tolerance" in result.output
    assert not (tmp_path / "refused" / "predictions.csv").exists()
    assert len(list(OnnxDetector.load(run / "detector", int8=True).predict_paths(paths[:2]))) == 2  # it detects


def test_the_features_shift_is_corrected_on_the_calibration_images(exported_detector, tmp_path):
    """The written graph adds back the mean shift int8 gives each pooled feature on the calibration images:
    on those images its features' mean error is 0, and the correction is a constant after ``features``."""
    from hybridcxr.export.quantize import correct_features, letterboxed, quantize_detector
    from hybridcxr.export.runtime import DETECTOR_INPUT, open_session

    _, run, _ = exported_detector
    detector = Detector.load(run, device="cpu")
    calibrate, _ = calibration_files(detector.card, run / "weights" / "best.safetensors")
    images = letterboxed(detector, [read_radiograph(p) for p in calibrate[:16]])
    reference = detector.forward(images, True)[1]
    dest = tmp_path / "int8.onnx"
    quantize_detector(run / "weights" / "best.onnx", dest, images, len(detector.model.model) - 1, DETECTOR_INPUT)
    before = OnnxDetector(detector, open_session(dest), {}).forward(images, True)[1]
    shift = correct_features(dest, images, reference)
    after = OnnxDetector(detector, open_session(dest), {}).forward(images, True)[1]
    assert shift.shape == (detector.feature_dim,) and np.abs(shift).max() > 0
    np.testing.assert_allclose(after, before + shift, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose((reference - after).mean(axis=0), 0.0, atol=1e-5 * np.abs(reference).max())
    graph = onnx.load(str(dest)).graph
    producer = {o: n for n in graph.node for o in n.output}
    assert producer["features"].op_type == "Add" and producer["features"].input[0] == "features_int8"


def test_the_search_goes_on_for_the_probabilities_and_falls_back_for_detection(exported_detector, tmp_path,
                                                                               monkeypatch):
    """A classifier run's probabilities beyond 0.05 with 0 and 2 fp32 layers, within with 4: the graph with 4 is
    written. Beyond with every attempt: the first graph within the detection tolerance is written again and
    recorded as not classifying."""
    from hybridcxr.export import onnx as exporter

    run = copy_run(exported_detector[1], tmp_path)
    weights = run / "weights" / "best.safetensors"
    tried: list[int] = []
    real = exporter.quantize_detector
    monkeypatch.setattr(exporter, "quantize_detector", lambda *a: tried.append(a[-1]) or real(*a))
    moved = iter([0.2, 0.1, 0.01])
    exporter.export_detector_int8(weights, drift=lambda detector, radiographs: exporter.Drift(next(moved), 1, 30))
    record = json.loads(record_path(run / "weights" / "best.int8.onnx").read_text())
    assert tried == [0, 2, 4] and record["fp32_layers"] == [0, 1, 2, 3] and record["classifies"]
    assert record["max_abs_diff"]["probabilities"] == 0.01 and record["decisions_flipped"] == {"flipped": 1, "of": 30}
    tried.clear()
    exported = exporter.export_detector_int8(weights, drift=lambda detector, radiographs: exporter.Drift(0.3, 4, 30))
    record = json.loads(record_path(run / "weights" / "best.int8.onnx").read_text())
    assert tried == [0, 2, 4, 6] and record["fp32_layers"] == [] and record["classifies"] is False
    assert not INT8_TOLERANCE.failures(record["max_abs_diff"]) and record["max_abs_diff"]["probabilities"] == 0.3
    graph = onnx.load(str(run / "weights" / "best.int8.onnx")).graph  # the all-int8 graph kept, not the last tried
    quantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    first_conv = next(n for n in graph.node if n.name == "/model.0/conv/Conv")
    assert first_conv.input[1] in quantized or first_conv.input[1].endswith("_DequantizeLinear_Output")
    assert OnnxDetector.load(run, int8=True).record["sha256"] == file_sha256(run / "weights" / "best.int8.onnx")
    assert not [p.name for p in (run / "weights").iterdir() if p.name.startswith(".")]  # no temporary left
    assert "probabilities are beyond the tolerance: classify, gated detect and serve refuse it" in str(
        exporter.ExportResult(run, [exported]))


def test_first_layers_kept_fp32_on_request(exported_detector):
    _, run, _ = exported_detector
    graph = onnx.load(str(run / "weights" / "best.onnx")).graph
    layer = len(Detector.load(run, device="cpu").model.model) - 1
    extra = set(kept_fp32(graph, layer, leading=2)) - set(kept_fp32(graph, layer))
    assert extra == {n.name for n in graph.node if n.name.startswith(("/model.0/", "/model.1/"))} and extra


def test_an_int8_graph_beyond_the_tolerance_is_not_written(exported_detector, tmp_path, monkeypatch):
    """Every fallback tried (more of the first layers in fp32), none within a tolerance no int8 graph meets:
    the error says so and nothing is left behind."""
    from hybridcxr.errors import OutputError
    from hybridcxr.export import onnx as exporter

    run = copy_run(exported_detector[1], tmp_path)
    tried = []
    real = exporter.quantize_detector
    monkeypatch.setattr(exporter, "quantize_detector", lambda *a: tried.append(a[-1]) or real(*a))
    monkeypatch.setattr(exporter, "INT8_TOLERANCE", Int8Tolerance(features=1e-12))
    with pytest.raises(OutputError, match=r"best\.int8\.onnx: not written: beyond the int8 tolerance on \d+ held-out "
                                          r"images even with the first 6 layers in fp32 \(features .* > 1e-12\)"):
        exporter.export_detector_int8(run / "weights" / "best.safetensors")
    assert tried == [0, 2, 4, 6]
    assert sorted(p.name for p in (run / "weights").iterdir() if "int8" in p.name) == []


def test_the_fallback_that_passes_is_recorded(exported_detector, tmp_path, monkeypatch):
    """The all-int8 graph misses the tolerance, the one with layers 0-1 in fp32 keeps it: that one is written,
    and its record names the fp32 layers."""
    from hybridcxr.export import onnx as exporter

    class FirstMisses(Int8Tolerance):
        def failures(self, measured):
            attempts.append(1)
            return ["features"] if len(attempts) == 1 else super().failures(measured)

    attempts: list[int] = []
    run = copy_run(exported_detector[1], tmp_path)
    monkeypatch.setattr(exporter, "INT8_TOLERANCE", FirstMisses())
    exporter.export_detector_int8(run / "weights" / "best.safetensors")
    record = json.loads(record_path(run / "weights" / "best.int8.onnx").read_text())
    assert record["fp32_layers"] == [0, 1]
    graph = onnx.load(str(run / "weights" / "best.int8.onnx")).graph
    quantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    first_conv = next(n for n in graph.node if n.name == "/model.0/conv/Conv")
    assert first_conv.input[1] not in quantized and not first_conv.input[1].endswith("_DequantizeLinear_Output")


def test_a_quantiser_failure_names_the_file(exported_detector, tmp_path, monkeypatch):
    from hybridcxr.errors import OutputError
    from hybridcxr.export import onnx as exporter

    def broken(*args):
        raise RuntimeError("calibration tensor missing")

    run = copy_run(exported_detector[1], tmp_path)
    monkeypatch.setattr(exporter, "quantize_detector", broken)
    with pytest.raises(OutputError, match=r"best\.int8\.onnx: not written: quantising with the first 6 layers in "
                                          r"fp32 failed \(RuntimeError: calibration tensor missing\)"):
        exporter.export_detector_int8(run / "weights" / "best.safetensors")
    assert not (run / "weights" / "best.int8.onnx").exists()


def test_drift_counts_the_decisions_a_candidate_flips(exported_classifier):
    """The run's own detector moves nothing; one whose pooled features are scaled up moves probabilities and
    flips calls, counted over the decisions the run makes (findings it never learned make none)."""
    from hybridcxr.export.onnx import probability_drift

    phantom, run, _ = exported_classifier
    radiographs = [read_radiograph(p) for p in sorted((phantom / "test").glob("*.dicom"))[:6]]
    drift, analyzer = probability_drift(run), Analyzer(run, device="cpu")
    learned = len(analyzer.findings) - len(analyzer.unlearned)
    assert drift(analyzer.detector, radiographs) == (0.0, 0, len(radiographs) * learned)

    class Louder(Detector):
        def forward(self, images, features=False):
            raw, pooled = super().forward(images, features)
            return raw, None if pooled is None else pooled * 25.0 + 10.0

    base = analyzer.detector
    moved = drift(Louder(base.model, base.card, base.device, base.config), radiographs)
    assert moved.largest > 0.05 and 0 < moved.flipped <= moved.decisions == len(radiographs) * learned
