"""Training primitives both classifier trainers share (head-only on cached features, and end to end).

What a split holds (:class:`SplitData`), the weighted loss and its ``pos_weight``, the fusion head's shape, the
optimiser and scheduler, and one run's state across epochs with its checkpoint (safetensors + JSON, no pickle):
:func:`start_run` restores an interrupted run with the same config, :func:`end_epoch` scores, steps and saves.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from hybridcxr.classify.fusion import STANDARDISED, FusionConfig, FusionHead, assemble_inputs
from hybridcxr.errors import DataWarning
from hybridcxr.files import atomic_path, read_json_or_none, write_json
from hybridcxr.findings import NO_FINDING
from hybridcxr.report.metrics import labels_array, macro_auroc, names_for

#: ``callback(epoch, val_macro_auroc)`` after every epoch; Optuna's pruner raises from it.
EpochCallback = Callable[[int, float], None]
WeightScheme = Literal["none", "inverse", "sqrt-inverse"]


def pos_weight(labels: np.ndarray, scheme: WeightScheme = "inverse",
               findings: Sequence[str] | None = None) -> np.ndarray:
    """Per-finding positive-class weights for ``BCEWithLogitsLoss(pos_weight=...)``.

    ``"inverse"`` is negatives / positives per finding (the loss then weighs both classes equally),
    ``"sqrt-inverse"`` its square root (a milder correction that over-predicts rare findings less),
    ``"none"`` ones. A finding with no positive (or no negative) label gets 1.0 and one
    :class:`~hybridcxr.errors.DataWarning` naming it, instead of an infinite (or zero) weight.

    Args:
        labels: ``(N, C)`` training labels, 0/1 (NaN: not labelled, not counted).
        scheme: ``"none"``, ``"inverse"`` or ``"sqrt-inverse"``.
        findings: names for the warning (default ``column 0``, ``column 1``, ...).

    Returns:
        A float64 array of ``C`` weights.
    """
    if scheme not in ("none", "inverse", "sqrt-inverse"):
        raise ValueError(f"unknown pos_weight scheme {scheme!r}; choose none, inverse or sqrt-inverse")
    yt = labels_array(labels)
    findings = names_for(findings, yt)
    if len(findings) != yt.shape[1]:
        raise ValueError(f"{len(findings)} finding names for {yt.shape[1]} label columns")
    if scheme == "none":
        return np.ones(yt.shape[1])
    n_pos, n_neg = (yt == 1).sum(axis=0), (yt == 0).sum(axis=0)
    degenerate = (n_pos == 0) | (n_neg == 0)
    if degenerate.any():
        named = ", ".join(f"{findings[c]} ({int(n_pos[c])} positive, {int(n_neg[c])} negative)"
                          for c in np.flatnonzero(degenerate))
        warnings.warn(DataWarning(f"pos_weight set to 1.0 for findings with one label value only: {named}"),
                      stacklevel=2)
    weights = np.where(degenerate, 1.0, n_neg / np.maximum(n_pos, 1))
    return np.sqrt(weights) if scheme == "sqrt-inverse" else weights


@dataclass
class SplitData:
    """Features, demographics and labels of one split, in the same row order."""

    image_ids: list[str]
    features: dict[str, np.ndarray]
    age_years: np.ndarray
    sex: list[Any]
    labels: np.ndarray

    def inputs(self, config: FusionConfig, rows: np.ndarray | slice = slice(None)) -> dict[str, Any]:
        """The head's forward input for ``rows`` of this split."""
        sex = [self.sex[i] for i in np.arange(len(self.sex))[rows]]
        picked = {g: (x[rows] if g in config.groups else None) for g, x in self.features.items()}
        return assemble_inputs(config, **picked, age_years=self.age_years[rows], sex=sex)


@dataclass
class HeadResult:
    """What :func:`train_head` returns."""

    head: FusionHead
    history: pd.DataFrame  # epoch, train_loss, val_loss, train_accuracy, val_accuracy, val_macro_auroc, lr
    best_auroc: float
    best_epoch: int


def loss_fn(kind: str, weights: np.ndarray, device: str) -> Callable:
    """Weighted BCE (``pos_weight`` per finding), or its focal variant with the same weights."""
    import torch
    import torch.nn.functional as F

    pw = torch.as_tensor(weights, dtype=torch.float32, device=device)

    def bce(logits, target):
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)

    def focal(logits, target):
        raw = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        return ((1 - p_t) ** 2 * raw).mean()

    if kind not in ("bce", "focal"):
        raise ValueError(f"loss must be bce or focal, not {kind!r}")
    return bce if kind == "bce" else focal


@dataclass
class RunState:
    """Where a training run stands: the per-epoch history and the best epoch so far (with its weights)."""

    history: list[dict[str, float]]
    best_auroc: float
    best_epoch: int
    best_state: dict[str, Any]
    rng: np.random.Generator  # batch order of the head-only trainer; torch's own RNG draws dropout and shuffles


def start_run(checkpoint: Path | None, config: Mapping[str, Any], model, optimizer, scheduler) -> RunState:
    """A fresh run, or the one ``checkpoint`` holds for the same config: model, optimizer, scheduler and the
    random number generators restored, so a resumed run continues exactly as the uninterrupted one would."""
    rng = np.random.default_rng(config["seed"])
    state = _resume(checkpoint, config, model, optimizer, scheduler, rng)
    return RunState(state.get("history", []), state.get("best_auroc", -math.inf), state.get("best_epoch", 0),
                    state.get("best_state") or {k: v.detach().clone() for k, v in model.state_dict().items()}, rng)


def label_accuracy(labels: np.ndarray, scores: np.ndarray, findings: Sequence[str], threshold: float = 0.5) -> float:
    """Share of labelled image-finding pairs decided right at ``threshold`` (Keras' binary accuracy), over the
    findings other than "No finding" where there are any (it repeats them); NaN when nothing is labelled.

    >>> label_accuracy(np.array([[1, 0], [0, 1]]), np.array([[0.9, 0.2], [0.7, 0.1]]), ["Pneumonia", "No finding"])
    0.5
    """
    labels, scores = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    named = [c for c, f in enumerate(findings) if f != NO_FINDING] or list(range(len(findings)))
    y, p = labels[:, named], scores[:, named]
    known = ~np.isnan(y)
    if not known.any():
        return float("nan")
    return float(((p[known] >= threshold) == (y[known] == 1)).mean())


def end_epoch(run: RunState, epoch: int, model, optimizer, scheduler, config: Mapping[str, Any],
              checkpoint: Path | None, findings: tuple[str, ...], val_labels: np.ndarray, val_scores: np.ndarray,
              train_loss: float, val_loss: float, *, train_accuracy: float = float("nan")) -> RunState:
    """Score the epoch (validation macro AUROC and accuracy at 0.5), step the scheduler, keep the best
    weights, checkpoint. ``train_accuracy`` is the epoch's running accuracy on the training batches."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a finding absent from a small validation split: NaN, left out
        auroc = macro_auroc(val_labels, val_scores, findings)
    auroc = float(auroc) if np.isfinite(auroc) else 0.5
    scheduler.step(auroc)
    run.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "train_accuracy": train_accuracy,
                        "val_accuracy": label_accuracy(val_labels, val_scores, findings),
                        "val_macro_auroc": auroc, "lr": optimizer.param_groups[-1]["lr"]})
    if auroc > run.best_auroc:
        run.best_auroc, run.best_epoch = auroc, epoch
        run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if checkpoint is not None:
        _save_state(checkpoint, config, model, optimizer, scheduler, run)
    return run


def _config_key(config: Mapping[str, Any]) -> str:
    return json.dumps({k: config[k] for k in sorted(config) if k not in ("epochs", "device", "cache")}, default=str)


def _save_state(folder: Path, config, head, optimizer, scheduler, run: RunState) -> None:
    """The epoch's state as ``last.safetensors`` (weights, optimizer slots, torch RNG) + ``last.json``."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors |= {f"best.{k}": v.detach().cpu().contiguous() for k, v in run.best_state.items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"opt.{index}.{key}"] = torch_tensor(value).cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    with atomic_path(folder / "last.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / "last.json", {
        "config_key": _config_key(config), "history": run.history, "best_auroc": run.best_auroc,
        "best_epoch": run.best_epoch, "param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(),
        "numpy_rng": run.rng.bit_generator.state,
    })


def torch_tensor(value: Any):
    import torch

    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _resume(folder: Path | None, config, head, optimizer, scheduler, rng: np.random.Generator) -> dict[str, Any]:
    """Restore the last epoch's state when ``folder`` holds one made with the same config."""
    if folder is None:
        return {}
    meta = read_json_or_none(folder / "last.json")
    if meta is None or meta.get("config_key") != _config_key(config) or not (folder / "last.safetensors").is_file():
        return {}
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "last.safetensors"))
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, slot = key.split(".", 2)
            state.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    _restore_rng(tensors, meta, rng)
    return {"history": meta["history"], "best_auroc": meta["best_auroc"], "best_epoch": meta["best_epoch"],
            "best_state": {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}}


def _restore_rng(tensors: Mapping[str, Any], meta: Mapping[str, Any], rng: np.random.Generator) -> None:
    """Put torch's (CPU and CUDA) and the batch-order generator's states back as the checkpoint saved them."""
    import torch

    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy_rng" in meta:
        rng.bit_generator.state = meta["numpy_rng"]


def fit_fusion(train: SplitData, findings: tuple[str, ...], config: Mapping[str, Any]) -> FusionConfig:
    """The fusion head's shape for ``config``, with its input standardisation (and a gcn head's label graph)
    fitted on the training split."""
    groups = tuple(config["groups"])
    return FusionConfig.fit(findings, {g: train.features[g] for g in groups if g in STANDARDISED},
                            age_years=train.age_years, groups=groups, hidden=tuple(config["hidden"]),
                            dropout=config["dropout"], layer_norm=config["layer_norm"], labels=train.labels,
                            head=str(config["head"]), gcn_dim=config["gcn_dim"], gcn_tau=config["gcn_tau"],
                            gcn_p=config["gcn_p"])


def make_optimizer(param_groups: Iterable[dict[str, Any]], config: Mapping[str, Any]):
    """AdamW over ``param_groups`` (each with its own ``lr``) and ReduceLROnPlateau on validation macro AUROC."""
    import torch

    optimizer = torch.optim.AdamW(list(param_groups), weight_decay=config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config["lr_factor"],
                                                           patience=config["lr_patience"])
    return optimizer, scheduler

