"""Detector weights: a trained run loads without unpickling; a missing one is a clear error."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.detect.predict import Detector

runner = CliRunner()


def test_detector_loads_without_unpickling(run, monkeypatch):
    out, _ = run

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load (pickle) called while loading the detector")

    monkeypatch.setattr(torch, "load", no_pickle)
    detector = Detector.load(out / "run", device="cpu")
    assert detector.findings[3] == "Cardiomegaly" and detector.imgsz == 128


def test_detect_missing_weights_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["detect", str(tmp_path), "--weights", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "nope" in result.output and "no detector weights" in result.output
