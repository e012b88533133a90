"""End-to-end mode: fine-tune the CNN together with the fusion head (for GPU users).

The cached-feature mode freezes the CNN; here its weights learn too, at a lower learning rate
(``backbone_lr``), while the detector's pooled vectors still come from the cache (the detector is trained on
boxes and stays as it is). Images are read from the prepared PNGs by a DataLoader (worker processes and
pinned memory on CUDA), the forward pass runs under mixed precision on CUDA (bf16-free fp16 autocast with a
gradient scaler), and every epoch is checkpointed with the same safetensors + JSON scheme as the head alone.
On a CPU it runs too (slowly): that is how the tests check it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hybridcxr.classify.backbone import Backbone, to_backbone_input
from hybridcxr.classify.fusion import FusionConfig, FusionHead
from hybridcxr.classify.train import HeadResult, SplitData, choose_device, end_epoch, loss_fn, start_run
from hybridcxr.progress import progress_bar
from hybridcxr.report.metrics import pos_weight


class _Images(torch.utils.data.Dataset):
    """Prepared PNGs of one split, with the row index into its SplitData."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from hybridcxr.io.images import decode_image

        return torch.from_numpy(np.ascontiguousarray(decode_image(self.paths[i]))), i


class _Collate:
    """Letterbox a batch of grey images for the CNN (a class, not a closure: DataLoader workers pickle it)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, items):
        return (torch.cat([to_backbone_input(pixels, self.size) for pixels, _ in items]),
                torch.tensor([i for _, i in items]))


class EndToEnd(nn.Module):
    """The CNN and the fusion head as one module (so one optimizer and one checkpoint hold both)."""

    def __init__(self, backbone: Backbone, head: FusionHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, rest: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head({**rest, "cnn": self.backbone(images)})


def train_end_to_end(
    backbone: Backbone, train: SplitData, val: SplitData, train_paths: list[Path], val_paths: list[Path],
    findings: tuple[str, ...], config: Mapping[str, Any], *, checkpoint: Path | None = None, progress: bool = True,
) -> tuple[Backbone, HeadResult]:
    """Fine-tune ``backbone`` and train a head on its embeddings plus the cached groups; keep the best epoch.

    ``train``/``val`` hold the cached features of the starting models (the head's standardisation of the CNN
    embedding is fitted on them); ``*_paths`` are the prepared images of the same rows, in the same order.
    Resumes from ``checkpoint`` when it holds an unfinished run with the same config.
    """
    torch.manual_seed(int(config["seed"]))
    device = choose_device(str(config["device"]))
    cuda = device.startswith("cuda")
    groups = tuple(config["groups"])
    if "cnn" not in groups:
        raise ValueError("end-to-end training fine-tunes the CNN: groups must include cnn")
    fusion = FusionConfig.fit(findings, {g: train.features[g] for g in groups if g in ("yolo", "cnn")},
                              age_years=train.age_years, groups=groups, hidden=tuple(config["hidden"]),
                              dropout=float(config["dropout"]), layer_norm=bool(config["layer_norm"]))
    model = EndToEnd(backbone, FusionHead(fusion)).to(device)
    criterion = loss_fn(str(config["loss"]), pos_weight(train.labels, config["pos_weight"], findings), device)
    optimizer = torch.optim.AdamW([
        {"params": model.backbone.parameters(), "lr": float(config["backbone_lr"])},
        {"params": model.head.parameters(), "lr": float(config["lr"])},
    ], weight_decay=float(config["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                           patience=int(config["lr_patience"]))
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    size = int(config["backbone_size"])
    loader_args = {"batch_size": int(config["e2e_batch_size"]), "collate_fn": _Collate(size), "pin_memory": cuda,
                   "num_workers": int(config["e2e_workers"]) if cuda else 0}
    train_loader = torch.utils.data.DataLoader(_Images(train_paths), shuffle=True, drop_last=False, **loader_args)
    val_loader = torch.utils.data.DataLoader(_Images(val_paths), shuffle=False, **loader_args)

    def rest(data: SplitData, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = data.inputs(fusion, rows.numpy())
        inputs.pop("cnn", None)
        return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}

    run = start_run(checkpoint, config, model, optimizer, scheduler)
    labels = torch.as_tensor(np.nan_to_num(train.labels), dtype=torch.float32)
    val_labels = torch.as_tensor(np.nan_to_num(val.labels), dtype=torch.float32)
    for epoch in range(len(run.history) + 1, int(config["epochs"]) + 1):
        model.train()
        total, seen = 0.0, 0
        with progress_bar(len(train_paths), f"fine-tuning, epoch {epoch}", progress) as advance:
            for images, rows in train_loader:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cuda", enabled=cuda):
                    logits = model(images.to(device, non_blocking=True), rest(train, rows))
                loss = criterion(logits.float(), labels[rows].to(device))
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += float(loss.detach()) * len(rows)
                seen += len(rows)
                advance(len(rows))
        model.eval()
        scores = np.zeros(val.labels.shape, np.float32)
        val_loss = 0.0
        with torch.inference_mode(), torch.autocast("cuda", enabled=cuda):
            for images, rows in val_loader:
                logits = model(images.to(device), rest(val, rows)).float()
                val_loss += float(criterion(logits, val_labels[rows].to(device))) * len(rows)
                scores[rows.numpy()] = torch.sigmoid(logits).cpu().numpy()
        run = end_epoch(run, epoch, model, optimizer, scheduler, config, checkpoint, findings, val.labels, scores,
                        total / max(seen, 1), val_loss / max(len(val_paths), 1))
        if epoch - run.best_epoch >= int(config["patience"]):
            break
    model.load_state_dict(run.best_state)
    model = model.cpu().eval()
    import pandas as pd

    return model.backbone, HeadResult(model.head, pd.DataFrame(run.history), float(run.best_auroc), int(run.best_epoch))

