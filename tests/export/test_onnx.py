"""``hybridcxr export RUN --format onnx``: the files and records it writes, its checks, and what it refuses."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.errors import ConfigError, InputError, OutputError
from hybridcxr.export import onnx as exporter
from hybridcxr.export.onnx import export_head, export_run
from hybridcxr.export.record import TOLERANCE, Tolerance, record_path
from hybridcxr.files import file_sha256
from hybridcxr.layout import ClassifierLayout

from .conftest import copy_run

runner = CliRunner()


def test_classifier_run_exports_three_checked_graphs(exported_classifier):
    _, run, result = exported_classifier
    layout = ClassifierLayout(run)
    paths = {item.model: item.path for item in result.files}
    assert paths == {"detector": layout.detector / "best.onnx", "backbone": layout.onnx_backbone,
                     "head": layout.onnx_head}
    sources = {"detector": layout.detector / "best.safetensors", "backbone": layout.backbone,
               "head": layout.model / "model.safetensors"}
    for item in result.files:
        record = json.loads(record_path(item.path).read_text())
        assert record["sha256"] == file_sha256(item.path) and record["file"] == item.path.name
        assert record["source"] == {"file": sources[item.model].name, "sha256": file_sha256(sources[item.model])}
        assert record["tolerance"] == {"rtol": TOLERANCE.rtol, "atol": TOLERANCE.atol}
        assert record["max_abs_diff"] == item.max_abs_diff and all(0 <= d < 1e-2 for d in item.max_abs_diff.values())
        graph = onnx.load(str(item.path)).graph
        assert [o.name for o in graph.output] == record["outputs"]
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param, "the batch axis must be dynamic"
    assert json.loads(record_path(paths["detector"]).read_text())["outputs"] == ["output0", "features"]
    assert json.loads(record_path(paths["head"]).read_text())["inputs"] == ["yolo", "cnn", "age", "sex"]


def test_detector_run_exports_beside_its_card(exported_detector):
    _, run, result = exported_detector
    assert [(item.model, item.path) for item in result.files] == [("detector", run / "weights" / "best.onnx")]
    metadata = {p.key: p.value for p in onnx.load(str(result.files[0].path)).metadata_props}
    assert metadata["author"] == "Ultralytics" and "date" not in metadata  # ultralytics' exporter, reproducible


def test_export_is_reproducible(exported_classifier, tmp_path):
    run = copy_run(exported_classifier[1], tmp_path)
    before = file_sha256(ClassifierLayout(run).onnx_head)
    export_head(ClassifierLayout(run))
    assert file_sha256(ClassifierLayout(run).onnx_head) == before


def test_a_graph_that_fails_its_check_is_not_written(exported_classifier, tmp_path, monkeypatch):
    layout = ClassifierLayout(copy_run(exported_classifier[1], tmp_path))
    before = {p.name: p.read_bytes() for p in layout.model.iterdir()}
    monkeypatch.setattr(exporter, "TOLERANCE", Tolerance(rtol=0.0, atol=-1.0))  # nothing can pass
    with pytest.raises(OutputError, match="head.onnx: not written: onnxruntime's logits differ"):
        export_head(layout)
    assert {p.name: p.read_bytes() for p in layout.model.iterdir()} == before, "the previous export stays, no temp file"
    layout.onnx_head.unlink()
    record_path(layout.onnx_head).unlink()
    with pytest.raises(OutputError):
        export_head(layout)
    assert not layout.onnx_head.exists() and not record_path(layout.onnx_head).exists()


def test_export_says_what_is_missing(exported_classifier, tmp_path):
    run = copy_run(exported_classifier[1], tmp_path)
    shutil.rmtree(run / "detector")
    with pytest.raises(InputError, match="the classifier run's detector has no detector weights"):
        export_run(run)
    (run / "backbone.safetensors").unlink()
    with pytest.raises(InputError, match="missing .*backbone.safetensors"):
        export_run(run)
    with pytest.raises(InputError, match="neither a classifier run .* nor a detector run"):
        export_run(tmp_path)
    with pytest.raises(ConfigError, match="--format"):
        export_run(run, "tflite")


def test_export_cli(exported_detector, tmp_path):
    run = copy_run(exported_detector[1], tmp_path)
    result = runner.invoke(app, ["export", str(run), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert "best.onnx" in result.output and "rtol" in result.output
    assert runner.invoke(app, ["export", str(run), "--format", "tflite"]).exit_code == 2
    missing = runner.invoke(app, ["export", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "nowhere" in missing.output
