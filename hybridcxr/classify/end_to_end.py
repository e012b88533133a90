"""End-to-end mode: fine-tune the CNN together with the fusion head (for GPU users).

The cached-feature mode freezes the CNN; here its weights learn too, at a lower learning rate
(``backbone_lr``), while the detector's pooled vectors still come from the cache (the detector is trained on
boxes and stays as it is). With ``augment=true`` the CNN sees each training image augmented afresh every epoch
(:mod:`hybridcxr.classify.augment`; the cached groups stay those of the original image); validation images never. Images are read from the prepared PNGs by a DataLoader (worker processes and
pinned memory on CUDA), the forward pass runs under mixed precision (fp16 autocast with a gradient scaler on
CUDA, bfloat16 autocast on a CPU that computes it natively), and every epoch is checkpointed with the same
safetensors + JSON scheme as the head alone. On a CPU it runs too (slowly): that is how the tests check it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from hybridcxr.classify.augment import ImageAugment
from hybridcxr.classify.backbone import Backbone, Scaling, input_scaling, to_backbone_input
from hybridcxr.classify.fusion import FusionConfig, FusionHead
from hybridcxr.classify.loop import (
    HeadResult,
    SplitData,
    end_epoch,
    fit_fusion,
    label_accuracy,
    loss_fn,
    make_optimizer,
    pos_weight,
    start_run,
)
from hybridcxr.config import ClassifierConfig, ensure_config
from hybridcxr.device import choose_device, cpu_bf16
from hybridcxr.progress import progress_bar


class _Images(torch.utils.data.Dataset):
    """Prepared PNGs of one split, with the row index into its SplitData; with ``augment``, each image augmented
    as sample ``i`` of ``epoch`` (set before each epoch: workers start afresh every epoch and copy it)."""

    def __init__(self, paths: list[Path], augment: ImageAugment | None = None) -> None:
        self.paths, self.augment, self.epoch = paths, augment, 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from hybridcxr.io.images import decode_image

        pixels = decode_image(self.paths[i])
        if self.augment is not None:
            pixels = self.augment(pixels, self.epoch, i)
        return torch.from_numpy(np.ascontiguousarray(pixels)), i


class _Collate:
    """Letterbox a batch of grey images for the CNN (a class, not a closure: DataLoader workers pickle it)."""

    def __init__(self, size: int, scaling: Scaling = "imagenet") -> None:
        self.size, self.scaling = size, scaling

    def __call__(self, items):
        return (torch.cat([to_backbone_input(pixels, self.size, self.scaling) for pixels, _ in items]),
                torch.tensor([i for _, i in items]))


class EndToEnd(nn.Module):
    """The CNN and the fusion head as one module (so one optimizer and one checkpoint hold both)."""

    def __init__(self, backbone: Backbone, head: FusionHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, rest: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head({**rest, "cnn": self.backbone(images)})


@dataclass
class _Step:
    """What one epoch needs: the model and its training kit, the loaders, the device."""

    model: EndToEnd
    fusion: FusionConfig
    criterion: Any
    optimizer: Any
    scaler: Any
    device: str
    progress: bool
    bf16: bool = False  # bfloat16 autocast on the CPU (set where the CPU computes it natively)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def autocast(self) -> Any:
        """Mixed precision for the forward pass: fp16 on CUDA (with the gradient scaler), bfloat16 on a CPU with
        native bf16 (DenseNet-121 fine-tuning at 224 px: 0.16 s an image against 0.33 s in fp32 on 2 cores, the
        detector's trade), else fp32. bf16 keeps fp32's range: no gradient scaling."""
        if self.cuda:
            return torch.autocast("cuda")
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def rest(self, data: SplitData, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head's non-CNN inputs (cached detector vector, age, sex) of ``rows``, on the device."""
        inputs = data.inputs(self.fusion, rows.numpy())
        inputs.pop("cnn", None)
        return {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}


def _loaders(train_paths: list[Path], val_paths: list[Path], config: ClassifierConfig, cuda: bool):
    """DataLoaders of the prepared PNGs: worker processes and pinned memory on CUDA, in-process on the CPU; the
    training images augmented every epoch with ``augment=true``."""
    collate = _Collate(config.backbone_size, input_scaling(config.backbone))
    args = {"batch_size": config.e2e_batch_size, "collate_fn": collate, "pin_memory": cuda,
            "num_workers": config.e2e_workers if cuda else 0}
    augment = ImageAugment(config) if config.augment else None  # training images only: validation never
    return (torch.utils.data.DataLoader(_Images(train_paths, augment), shuffle=True, drop_last=False, **args),
            torch.utils.data.DataLoader(_Images(val_paths), shuffle=False, **args))


def _train_epoch(step: _Step, loader, data: SplitData, epoch: int) -> tuple[float, np.ndarray]:
    """One pass over the training images under autocast (CUDA) with gradient scaling; the mean loss and each
    image's score from its training batch (for the running accuracy)."""
    labels = torch.as_tensor(np.nan_to_num(data.labels), dtype=torch.float32)
    loader.dataset.epoch = epoch  # the epoch's augmentations (seeded by seed, epoch, image)
    step.model.train()
    total, seen = 0.0, 0
    scores = np.zeros(data.labels.shape, np.float32)
    with progress_bar(len(loader.dataset), f"fine-tuning, epoch {epoch}", step.progress) as advance:
        for images, rows in loader:
            step.optimizer.zero_grad(set_to_none=True)
            with step.autocast():
                logits = step.model(images.to(step.device, non_blocking=True), step.rest(data, rows))
            loss = step.criterion(logits.float(), labels[rows].to(step.device))
            step.scaler.scale(loss).backward()
            step.scaler.step(step.optimizer)
            step.scaler.update()
            total += float(loss.detach()) * len(rows)
            seen += len(rows)
            scores[rows.numpy()] = torch.sigmoid(logits.detach().float()).cpu().numpy()
            advance(len(rows))
    return total / max(seen, 1), scores


def _validate(step: _Step, loader, data: SplitData) -> tuple[np.ndarray, float]:
    """Validation probabilities (N, C) and mean loss."""
    labels = torch.as_tensor(np.nan_to_num(data.labels), dtype=torch.float32)
    step.model.eval()
    scores = np.zeros(data.labels.shape, np.float32)
    total = 0.0
    with torch.inference_mode(), step.autocast():
        for images, rows in loader:
            logits = step.model(images.to(step.device), step.rest(data, rows)).float()
            total += float(step.criterion(logits, labels[rows].to(step.device))) * len(rows)
            scores[rows.numpy()] = torch.sigmoid(logits).cpu().numpy()
    return scores, total / max(len(loader.dataset), 1)


def train_end_to_end(
    backbone: Backbone, train: SplitData, val: SplitData, train_paths: list[Path], val_paths: list[Path],
    findings: tuple[str, ...], config: Mapping[str, Any], *, checkpoint: Path | None = None, progress: bool = True,
) -> tuple[Backbone, HeadResult]:
    """Fine-tune ``backbone`` and train a head on its embeddings plus the cached groups; keep the best epoch.

    ``train``/``val`` hold the cached features of the starting models (the head's standardisation of the CNN
    embedding is fitted on them); ``*_paths`` are the prepared images of the same rows, in the same order.
    Resumes from ``checkpoint`` when it holds an unfinished run with the same config.
    """
    config = ensure_config("classifier", config)
    torch.manual_seed(config.seed)
    device = choose_device(config.device)
    if "cnn" not in config.groups:
        raise ValueError("end-to-end training fine-tunes the CNN: groups must include cnn")
    fusion = fit_fusion(train, findings, config)
    model = EndToEnd(backbone, FusionHead(fusion)).to(device)
    criterion = loss_fn(config.loss, pos_weight(train.labels, config.pos_weight, findings), device)
    optimizer, scheduler = make_optimizer([
        {"params": model.backbone.parameters(), "lr": config.backbone_lr},
        {"params": model.head.parameters(), "lr": config.lr},
    ], config)
    step = _Step(model, fusion, criterion, optimizer, torch.amp.GradScaler("cuda", enabled=device.startswith("cuda")),
                 device, progress, bf16=device == "cpu" and cpu_bf16())
    train_loader, val_loader = _loaders(train_paths, val_paths, config, step.cuda)
    run = start_run(checkpoint, config, model, optimizer, scheduler)
    for epoch in range(len(run.history) + 1, config.epochs + 1):
        train_loss, train_scores = _train_epoch(step, train_loader, train, epoch)
        scores, val_loss = _validate(step, val_loader, val)
        run = end_epoch(run, epoch, model, optimizer, scheduler, config, checkpoint, findings, val.labels, scores,
                        train_loss, val_loss, train_accuracy=label_accuracy(train.labels, train_scores, findings))
        if epoch - run.best_epoch >= config.patience:
            break
    model.load_state_dict(run.best_state)
    model = model.cpu().eval()
    return model.backbone, HeadResult(model.head, pd.DataFrame(run.history), float(run.best_auroc), int(run.best_epoch))
