"""hybridcxr.lungs.train: a tiny run learns, writes its run folder, is reused when finished and resumes exactly."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hybridcxr.config import load_config
from hybridcxr.lungs import train as train_module
from hybridcxr.lungs.train import train_lungs

from .conftest import TINY


def test_tiny_run_improves_dice_over_its_first_epoch(tiny_lungs):
    history = tiny_lungs.history
    assert len(history) >= 2
    assert history["val_dice"].max() > history["val_dice"].iloc[0] + 0.02, history
    assert history["train_loss"].iloc[-1] < 0.7 * history["train_loss"].iloc[0], history
    assert tiny_lungs.card["training"]["val_dice"] == pytest.approx(history["val_dice"].max())


def test_run_folder_holds_weights_card_history_and_curves(tiny_lungs):
    folder = tiny_lungs.folder
    for name in ("lungs.safetensors", "lungs.json", "history.csv", "curves.png"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoint").exists()  # removed once the run is finished
    card = json.loads((folder / "lungs.json").read_text())
    assert card["architecture"]["name"] == "monai.networks.nets.UNet" and card["imgsz"] == 32
    assert set(card["versions"]) >= {"torch", "monai", "albumentations"} and len(card["weights_sha256"]) == 64
    t = card["training"]
    assert t["train_patients"] + t["val_patients"] == 12  # whole patients on one side each
    assert list(pd.read_csv(folder / "history.csv").columns) == ["epoch", "train_loss", "val_loss", "val_dice",
                                                                "val_iou", "lr"]


def test_finished_run_is_returned_not_retrained(tiny_lungs, mask_dataset, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("retrained a finished run")

    monkeypatch.setattr(train_module, "_train", refuse)
    again = train_lungs(mask_dataset, tiny_lungs.folder, load_config("lungs", overrides=TINY), progress=False)
    assert again.card["weights_sha256"] == tiny_lungs.card["weights_sha256"]


def test_killed_run_resumes_as_the_uninterrupted_one(mask_dataset, tmp_path, monkeypatch):
    settings = {**TINY, "epochs": 3, "patience": 3}
    whole = train_lungs(mask_dataset, tmp_path / "whole", load_config("lungs", overrides=settings), progress=False)
    original = train_module._Trainer._train_epoch

    def killed(self, train, epoch, progress):
        if epoch == 3:
            raise KeyboardInterrupt  # as a kill between epochs 2 and 3
        return original(self, train, epoch, progress)

    monkeypatch.setattr(train_module._Trainer, "_train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train_lungs(mask_dataset, tmp_path / "killed", load_config("lungs", overrides=settings), progress=False)
    assert (tmp_path / "killed" / "checkpoint" / "last.safetensors").is_file()
    monkeypatch.setattr(train_module._Trainer, "_train_epoch", original)
    resumed = train_lungs(mask_dataset, tmp_path / "killed", load_config("lungs", overrides=settings), progress=False)
    assert len(resumed.history) == 3
    for column in ("train_loss", "val_dice"):
        assert resumed.history[column].tolist() == pytest.approx(whole.history[column].tolist(), rel=1e-4, abs=1e-5)
