"""Training the detector on phantoms: the run folder it leaves, no overwriting, resume after a kill."""

from __future__ import annotations

import json

import pytest

from hybridcxr.detect.train import detector_config, train_detector


def test_training_leaves_weights_card_and_curves(run):
    out, result = run
    weights = out / "run" / "weights"
    assert result.weights == weights / "best.safetensors" and result.weights.is_file()
    card = json.loads((weights / "best.json").read_text())
    assert card["findings"][8] == "Nodule/Mass" and len(card["findings"]) == 14
    assert card["imgsz"] == 128 and card["epochs_trained"] == 1 and card["device"] == "cpu"
    assert card["feature_dims"] == [256, 64, 128, 256] and card["feature_dim"] == 704
    assert card["data_summary"]["grouped_by"] == "patient"
    assert (out / "run" / "training_curves.png").stat().st_size > 10_000
    assert result.weights.read_bytes()[8:9] == b"{"  # safetensors: 8-byte length, then a JSON header


def test_finished_run_is_not_overwritten(run):
    out, _ = run
    from hybridcxr.errors import InputError

    with pytest.raises(InputError, match="already holds a trained detector"):
        train_detector(out / "prepared", out / "run", detector_config({"epochs": 1}))


def test_killed_training_resumes_from_last_checkpoint(run, tmp_path):
    """SIGKILL after the first epoch; the same command again finishes the run from weights/last.pt."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out, _ = run
    target = tmp_path / "resumable"
    cmd = [sys.executable, "-m", "hybridcxr.cli", "train", "detector", "--data", str(out / "prepared"),
           "--out", str(target), "--epochs", "3", "--imgsz", "96", "batch=8", "workers=0", "close_mosaic=0"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        results = target / "results.csv"
        if (target / "weights" / "last.pt").is_file() and results.is_file() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (target / "weights" / "best.json").exists(), "the run should have been killed before finishing"
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(resumed)" in done.stdout
    card = json.loads((target / "weights" / "best.json").read_text())
    assert card["epochs_trained"] == 3
    from hybridcxr.device import cpu_bf16

    assert card["amp"] == ("bf16" if cpu_bf16() else False), "the default: bf16 autocast where the CPU has it"


def test_run_killed_between_its_last_epoch_and_the_export_finishes_on_rerun(tiny_detector, tmp_path):
    """Ultralytics strips last.pt once training ends; a kill before our export left a run that refused to resume."""
    import shutil

    from hybridcxr.detect.train import detector_config, train_detector

    _, folder, _ = tiny_detector
    run = tmp_path / "run"
    shutil.copytree(folder / "run", run)
    assert (run / "weights" / "training-done.json").is_file()  # written after the epoch that ended training
    for name in ("best.json", "best.safetensors"):
        (run / "weights" / name).unlink()
    result = train_detector(folder / "prepared", run, detector_config({"epochs": 1, "imgsz": 128, "batch": 8,
                                                                       "workers": 0}))
    assert (run / "weights" / "best.json").is_file() and result.resumed
    assert result.card["epochs_trained"] == 1


def test_the_card_records_the_precision_training_used(run):
    _, result = run  # the session's detector asks for amp=false (tests/conftest.py says why)
    assert result.card["device"] == "cpu" and result.card["amp"] is False


def test_ultralytics_trainer_may_autocast_bf16_on_the_cpu_and_keeps_its_workers(run, tmp_path):
    """Ultralytics refuses bfloat16 autocast off CUDA and sets CPU workers to 0; ultralytics_env and our trainer
    lift both (a training step in bf16 takes about half its fp32 time on a CPU with native bf16)."""
    import torch

    from hybridcxr.detect.ultralytics_env import import_ultralytics

    import_ultralytics()
    import ultralytics.engine.trainer as trainer

    from hybridcxr.detect.trainer import AtomicDetectionTrainer

    a = torch.randn(8, 8)
    with trainer.autocast(torch.bfloat16, device="cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with trainer.autocast(False, device="cpu"):
        assert (a @ a).dtype == torch.float32
    out, _ = run
    built = AtomicDetectionTrainer(overrides={"model": "yolov8n.yaml", "data": str(out / "prepared" / "data.yaml"),
                                              "device": "cpu", "workers": 2, "project": str(tmp_path), "name": "w"})
    assert built.args.workers == 2
