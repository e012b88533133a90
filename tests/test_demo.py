"""`hybridcxr demo` end to end at toy size: every stage runs, leaves its outputs, and a re-run resumes."""

from __future__ import annotations

import pandas as pd
import pytest

from hybridcxr.demo import run_demo

TOY = {"images": 30, "prepare_size": 160, "det_epochs": 1, "det_imgsz": 128, "trials": 2, "n_boot": 50,
       "lungs": {"imgsz": 32, "channels": [8, 16, 32], "epochs": 2, "patience": 2, "threads": 1}}


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path, no_network):
    out = tmp_path / "demo"
    lines: list[str] = []
    result = run_demo(out, "small", progress=False, log=lines.append, plan=TOY)
    assert not no_network, f"the demo tried the network: {no_network}"
    assert [s.skipped for s in result.stages] == [False] * 10 and len(lines) == 10
    for key in ("detections", "predictions", "detector evaluation", "classifier report (ROC curves)",
                "best tuned config"):
        assert result.outputs[key].is_file(), key
    assert (result.outputs["classifier report (ROC curves)"].parent / "roc_curves.png").is_file()
    assert list(result.outputs["detection overlays"].glob("*.png"))
    assert list(result.outputs["classifier overlays"].glob("*.png"))
    assert (result.outputs["study report"] / "study.html").is_file()
    held_back = {p.stem for p in (out / "phantom" / "test").glob("*.dicom")}
    assert set(pd.read_csv(result.outputs["predictions"], dtype={"image_id": str})["image_id"]) == held_back
    assert 0 <= result.metrics["detector test mAP@0.4 (ungated)"] <= 1
    assert 0 <= result.metrics["detector test mAP@0.4 (gated by the classifier)"] <= 1
    assert (out / "detect" / "detections_ungated.csv").is_file() and (out / "detect" / "gating.json").is_file()
    evaluation = (out / "detect" / "evaluation.md").read_text()
    assert "## gated" in evaluation and "## ungated" in evaluation and "side by side" in evaluation
    assert 0 <= result.metrics["classifier test macro AUROC"] <= 1
    summary = (out / "summary.md").read_text()
    assert "mAP@0.4" in summary and "macro AUROC" in summary and "train detector" in summary

    again = run_demo(out, "small", progress=False, log=lines.append, plan=TOY)
    assert [s.skipped for s in again.stages[:5]] == [True] * 5  # data, prepare, detector, lungs, classifier reused
    card = (out / "classifier" / "model" / "card.json").read_text()
    assert '"gating": {' in card and '"lungs": {' in card and (out / "classifier" / "lungs" / "lungs.safetensors").is_file()
    assert list((out / "phantom" / "lungs" / "masks").glob("*.png"))
