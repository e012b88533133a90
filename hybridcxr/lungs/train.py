"""``hybridcxr train lungs``: train the lung segmenter from scratch on a mask dataset, resumably.

Whole patients go to training or validation (:func:`~hybridcxr.lungs.data.split_by_patient`); every pair is
decoded once at ``imgsz``; training augments each pair CXR-safely (:mod:`hybridcxr.lungs.augment`) and
minimises Dice + BCE (MONAI's ``DiceCELoss``) with AdamW, halving the rate when validation Dice stalls and
stopping early after ``patience`` epochs without a better one. On CUDA it uses mixed precision and worker
processes; on a CPU the pairs are in memory and it uses the cores through torch.

The run folder ends with ``lungs.safetensors`` + ``lungs.json`` (the best epoch's weights and their card),
``history.csv`` (loss, Dice and IoU per epoch) and ``curves.png``. While it trains, ``checkpoint/last.*``
(safetensors + JSON, no pickle) holds the last epoch: the model, the best weights, the optimiser's and the
scheduler's state and the random generators, so a run killed at any point continues, when started again with
the same settings and data, as the uninterrupted run would have. A finished run is returned as it is.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hybridcxr.config import LungsConfig, ensure_config
from hybridcxr.device import choose_device
from hybridcxr.files import atomic_path, read_json_or_none, write_atomic, write_csv, write_json
from hybridcxr.lungs.augment import PairAugment
from hybridcxr.lungs.card import CARD, read_card, save_run
from hybridcxr.lungs.data import MaskDataset, load_pairs, read_mask_dataset, split_by_patient
from hybridcxr.lungs.metrics import batch_dice_iou
from hybridcxr.lungs.model import architecture, build_network, cpu_threads, normalise
from hybridcxr.progress import progress_bar

#: Settings that may change between a killed run and its resumption without starting over.
_RESUMABLE = ("epochs", "device", "workers", "patience", "threads")


@dataclass
class LungRun:
    """A trained lung segmenter: its folder, card and per-epoch history."""

    folder: Path
    card: dict[str, Any]
    history: pd.DataFrame

    def __str__(self) -> str:
        t = self.card["training"]
        return (f"Lung segmenter trained: validation Dice {t['val_dice']:.4f}, IoU {t['val_iou']:.4f} at epoch "
                f"{t['best_epoch']} of {t['epochs_run']} ({t['seconds']:.0f} s, {t['train_images']} training and "
                f"{t['val_images']} validation images); run folder {self.folder}")


class PairSet:
    """A torch-style dataset of decoded pairs: ``(image, mask)`` float tensors ``(1, S, S)``, augmented when an
    augmenter is given (as sample ``index`` of ``epoch``)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, augment: PairAugment | None = None) -> None:
        self.images, self.masks, self.augment, self.epoch = images, masks, augment, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        import torch

        image, mask = self.images[index], self.masks[index]
        if self.augment is not None:
            image, mask = self.augment(image, mask, self.epoch, index)
        return (torch.from_numpy(normalise(image))[None], torch.from_numpy(mask.astype(np.float32))[None])


@dataclass
class _State:
    """Where a run stands between epochs (all of it goes into the checkpoint)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_dice: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, Any] | None = None
    seconds: float = 0.0


def train_lungs(data: str | Path | MaskDataset, out: str | Path, config: Mapping[str, Any] | None = None, *,
                progress: bool = True) -> LungRun:
    """Train (or resume, or return the finished) lung segmenter on mask dataset ``data`` into run folder ``out``.

    Raises DatasetError for a dataset that does not match the layout, ConfigError for a bad setting.
    """
    config = ensure_config("lungs", config)
    out = Path(out)
    dataset = data if isinstance(data, MaskDataset) else read_mask_dataset(data)
    key = _config_key(config, dataset)
    finished = _finished(out, key)
    if finished is not None:
        return finished
    with cpu_threads(config.threads):
        return _train(dataset, out, config, key, progress)


def _train(dataset: MaskDataset, out: Path, config: LungsConfig, key: str, progress: bool) -> LungRun:
    """Decode, split, fit (resuming a checkpoint), then write the weights, card, history and curves."""
    held = split_by_patient(dataset.table["patient_id"], config.val_fraction, config.seed)
    images, masks = load_pairs(dataset, config.imgsz, progress=progress)
    device = choose_device(config.device)
    spec = architecture(config)
    import torch

    torch.manual_seed(config.seed)  # the initial weights; a resumed run restores its state over them
    network = build_network(spec).to(device)
    trainer = _Trainer(network, config, device, key, out / "checkpoint")
    train = PairSet(images[~held], masks[~held], PairAugment(config))
    trainer.fit(train, images[held], masks[held], progress)
    summary = {"data": str(dataset.root), "config_key": key, "config": config.to_dict(),
               "train_images": int((~held).sum()), "val_images": int(held.sum()),
               "train_patients": int(dataset.table["patient_id"][~held].nunique()),
               "val_patients": int(dataset.table["patient_id"][held].nunique()),
               "best_epoch": trainer.state.best_epoch, "val_dice": trainer.state.best_dice,
               "val_iou": trainer.best_row()["val_iou"], "epochs_run": len(trainer.state.history),
               "seconds": round(trainer.state.seconds, 1), "device": device}
    card = save_run(out, trainer.state.best_state, spec, config.imgsz, summary)
    history = pd.DataFrame(trainer.state.history)
    write_csv(out / "history.csv", history)
    plot_curves(history, out / "curves.png")
    trainer.remove_checkpoint()
    return LungRun(out, card, history)


def _config_key(config: LungsConfig, dataset: MaskDataset) -> str:
    """What a resumed or finished run must share with this one: the settings that shape training and the data."""
    settings = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE}
    ids = hashlib.sha256("\n".join(dataset.table["image_id"]).encode()).hexdigest()[:16]
    return json.dumps({"settings": settings, "images": len(dataset), "ids": ids}, sort_keys=True)


def _finished(out: Path, key: str) -> LungRun | None:
    """The run already in ``out`` when it was trained with the same settings and data, else None."""
    if not (out / CARD).is_file():
        return None
    card = read_card(out)
    if card.get("training", {}).get("config_key") != key:
        return None
    history = pd.read_csv(out / "history.csv") if (out / "history.csv").is_file() else pd.DataFrame()
    return LungRun(out, card, history)


class _Trainer:
    """One run's network, optimiser, scheduler, AMP scaler and state; fits epoch by epoch with checkpoints."""

    def __init__(self, network, config: LungsConfig, device: str, key: str, checkpoint: Path) -> None:
        import torch
        from monai.losses import DiceCELoss

        self.network, self.config, self.device, self.key, self.checkpoint = network, config, device, key, checkpoint
        self.amp = config.amp and device.startswith("cuda")
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max", factor=0.5,
                                                                    patience=config.lr_patience)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss = DiceCELoss(sigmoid=True)
        self.rng = np.random.default_rng(config.seed)
        self.state = _State()
        self._resume()

    def best_row(self) -> dict[str, float]:
        """The history row of the best epoch."""
        return next(r for r in self.state.history if r["epoch"] == self.state.best_epoch)

    def fit(self, train: PairSet, val_images: np.ndarray, val_masks: np.ndarray, progress: bool) -> None:
        """Train until ``epochs`` or early stopping, checkpointing after every epoch."""
        for epoch in range(len(self.state.history) + 1, self.config.epochs + 1):
            if epoch - self.state.best_epoch > self.config.patience and self.state.history:
                break
            start = time.perf_counter()
            train_loss = self._train_epoch(train, epoch, progress)
            val_loss, dice, iou = self.validate(val_images, val_masks)
            self.scheduler.step(dice)
            self.state.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                       "val_dice": dice, "val_iou": iou, "lr": self.optimizer.param_groups[0]["lr"]})
            if dice > self.state.best_dice:
                self.state.best_dice, self.state.best_epoch = dice, epoch
                self.state.best_state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
            self.state.seconds += time.perf_counter() - start
            self._save()

    def _train_epoch(self, train: PairSet, epoch: int, progress: bool) -> float:
        """One pass over the training pairs in this epoch's order; the mean loss."""
        import torch

        train.epoch = epoch
        order = self.rng.permutation(len(train)).tolist()
        cuda = self.device.startswith("cuda")
        loader = torch.utils.data.DataLoader(train, batch_size=self.config.batch, sampler=order,
                                             num_workers=self.config.workers if cuda else 0, pin_memory=cuda)
        self.network.train()
        total, count = 0.0, 0
        with progress_bar(len(loader), f"epoch {epoch}/{self.config.epochs}", progress) as advance:
            for x, y in loader:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                    logits = self.network(x)
                loss = self.loss(logits.float(), y)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                total, count = total + loss.item() * len(x), count + len(x)
                advance()
        return total / max(count, 1)

    def validate(self, images: np.ndarray, masks: np.ndarray) -> tuple[float, float, float]:
        """Validation loss and mean per-image Dice and IoU at the training size (threshold 0.5)."""
        import torch

        self.network.eval()
        losses, predicted = [], []
        with torch.no_grad():
            for start in range(0, len(images), 16):
                x = torch.from_numpy(np.stack([normalise(im) for im in images[start:start + 16]]))[:, None]
                y = torch.from_numpy(masks[start:start + 16].astype(np.float32))[:, None].to(self.device)
                with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                    logits = self.network(x.to(self.device)).float()
                losses.append(float(self.loss(logits, y)) * len(x))
                predicted.append((logits[:, 0] > 0).cpu().numpy())
        dice, iou = batch_dice_iou(np.concatenate(predicted), masks.astype(bool))
        return sum(losses) / len(images), float(dice.mean()), float(iou.mean())

    def _save(self) -> None:
        """The epoch's state as ``checkpoint/last.safetensors`` (tensors) + ``checkpoint/last.json`` (the rest)."""
        import torch
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        tensors |= {f"best.{k}": v.contiguous() for k, v in (self.state.best_state or {}).items()}
        opt = self.optimizer.state_dict()
        for index, slots in opt["state"].items():
            tensors |= {f"opt.{index}.{slot}": torch.as_tensor(v).cpu().contiguous() for slot, v in slots.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
        with atomic_path(self.checkpoint / "last.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(self.checkpoint / "last.json", {
            "config_key": self.key, "history": self.state.history, "best_dice": self.state.best_dice,
            "best_epoch": self.state.best_epoch, "seconds": self.state.seconds, "param_groups": opt["param_groups"],
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state, "tensors_sha256": _sha(self.checkpoint / "last.safetensors"),
        })

    def _resume(self) -> None:
        """Restore the checkpoint's epoch when it was made with the same settings and data (else start fresh)."""
        import torch
        from safetensors.torch import load_file

        meta = read_json_or_none(self.checkpoint / "last.json")
        tensors_path = self.checkpoint / "last.safetensors"
        if (not isinstance(meta, dict) or meta.get("config_key") != self.key or not tensors_path.is_file()
                or meta.get("tensors_sha256") != _sha(tensors_path)):
            return
        tensors = load_file(str(tensors_path))
        self.network.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, index, slot = key.split(".", 2)
                state.setdefault(int(index), {})[slot] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        self.scaler.load_state_dict(meta["scaler"])
        torch.set_rng_state(tensors["rng.torch"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        self.rng.bit_generator.state = meta["numpy_rng"]
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.state = _State(meta["history"], meta["best_dice"], meta["best_epoch"], best or None, meta["seconds"])

    def remove_checkpoint(self) -> None:
        """Delete the checkpoint once the run's weights and card are written."""
        for name in ("last.json", "last.safetensors"):
            (self.checkpoint / name).unlink(missing_ok=True)
        if self.checkpoint.is_dir() and not any(self.checkpoint.iterdir()):
            self.checkpoint.rmdir()


def _sha(path: Path) -> str | None:
    from hybridcxr.files import file_sha256

    return file_sha256(path) if path.is_file() else None


def plot_curves(history: pd.DataFrame, path: str | Path) -> Path:
    """Training curves as a PNG: train and validation loss, validation Dice and IoU, per epoch."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.6), dpi=110)
    loss_ax, score_ax = figure.subplots(1, 2)
    if len(history):
        loss_ax.plot(history["epoch"], history["train_loss"], marker="o", label="train")
        loss_ax.plot(history["epoch"], history["val_loss"], marker="o", label="validation")
        score_ax.plot(history["epoch"], history["val_dice"], marker="o", label="Dice")
        score_ax.plot(history["epoch"], history["val_iou"], marker="o", label="IoU")
    loss_ax.set(title="Dice + BCE loss", xlabel="epoch")
    score_ax.set(title="validation overlap", xlabel="epoch", ylim=(0, 1))
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    figure.tight_layout()
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png"))
