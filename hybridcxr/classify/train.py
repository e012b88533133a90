"""Train the fusion classifier on cached features: weighted BCE, AdamW, early stopping on validation AUROC.

:func:`train_head` is the core (also each Optuna trial's body): it trains a :class:`FusionHead` on in-memory
feature arrays and reports validation macro AUROC per epoch. :func:`train_classifier` is the job behind
``hybridcxr train classifier``: it caches features of a prepared dataset, trains with checkpoint and resume,
chooses per-finding thresholds on validation and writes a self-contained run folder::

    RUN/model/{model.safetensors, card.json}        the fusion head (card: thresholds, history, data summary)
    RUN/detector/{best.safetensors, best.json}      the detector it was trained with
    RUN/backbone.safetensors                        the CNN whose embeddings it was trained on
    RUN/features/                                   the feature cache
    RUN/history.csv, RUN/training_curves.png        loss and validation AUROC per epoch
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hybridcxr.classify.fusion import FusionConfig, FusionHead, assemble_inputs, save_checkpoint
from hybridcxr.config import load_config
from hybridcxr.errors import DatasetError, InputError
from hybridcxr.files import atomic_path, read_json_or_none, write_csv, write_json
from hybridcxr.report.metrics import choose_thresholds, macro_auroc, pos_weight

#: ``callback(epoch, val_macro_auroc)`` after every epoch; Optuna's pruner raises from it.
EpochCallback = Callable[[int, float], None]


def classifier_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults from ``configs/classifier.yaml`` with ``overrides`` applied."""
    return load_config("classifier", overrides=dict(overrides or {}))


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
    history: pd.DataFrame  # epoch, train_loss, val_loss, val_macro_auroc, lr
    best_auroc: float
    best_epoch: int


def choose_device(setting: str) -> str:
    """``cuda`` when asked for or (``auto``) available, else ``cpu``."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


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


def train_head(
    train: SplitData, val: SplitData, findings: tuple[str, ...], config: Mapping[str, Any], *,
    callback: EpochCallback | None = None, checkpoint: Path | None = None,
) -> HeadResult:
    """Train one fusion head; keep the epoch with the best validation macro AUROC.

    With ``checkpoint`` (a folder), the state after every epoch is saved there (safetensors + JSON, no
    pickle) and an interrupted run with the same config continues from it.
    """
    import torch

    torch.manual_seed(int(config["seed"]))
    rng = np.random.default_rng(int(config["seed"]))
    device = choose_device(str(config["device"]))
    groups = tuple(config["groups"])
    fusion = FusionConfig.fit(findings, {g: train.features[g] for g in groups if g in ("yolo", "cnn")},
                              age_years=train.age_years, groups=groups, hidden=tuple(config["hidden"]),
                              dropout=float(config["dropout"]), layer_norm=bool(config["layer_norm"]))
    head = FusionHead(fusion).to(device)
    weights = pos_weight(train.labels, config["pos_weight"], findings)
    criterion = loss_fn(str(config["loss"]), weights, device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=float(config["lr"]), weight_decay=float(config["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                           patience=int(config["lr_patience"]))
    x_train = {k: v.to(device) for k, v in train.inputs(fusion).items()}
    y_train = torch.as_tensor(np.nan_to_num(train.labels), dtype=torch.float32, device=device)
    x_val = {k: v.to(device) for k, v in val.inputs(fusion).items()}
    y_val = torch.as_tensor(np.nan_to_num(val.labels), dtype=torch.float32, device=device)

    run = start_run(checkpoint, config, head, optimizer, scheduler)
    batch = int(config["batch_size"])
    n = len(y_train)
    for epoch in range(len(run.history) + 1, int(config["epochs"]) + 1):
        head.train()
        order = torch.as_tensor(rng.permutation(n), device=device)
        total = 0.0
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(head({k: v[rows] for k, v in x_train.items()}), y_train[rows])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        head.eval()
        with torch.inference_mode():
            val_logits = head(x_val)
            val_loss = float(criterion(val_logits, y_val))
        run = end_epoch(run, epoch, head, optimizer, scheduler, config, checkpoint, findings, val.labels,
                        torch.sigmoid(val_logits).cpu().numpy(), total / max(n, 1), val_loss)
        if callback is not None:
            callback(epoch, run.history[-1]["val_macro_auroc"])
        if epoch - run.best_epoch >= int(config["patience"]):
            break
    head.load_state_dict(run.best_state)
    head.eval()
    return HeadResult(head.cpu(), pd.DataFrame(run.history), float(run.best_auroc), int(run.best_epoch))


@dataclass
class RunState:
    """Where a training run stands: the per-epoch history and the best epoch so far (with its weights)."""

    history: list[dict[str, float]]
    best_auroc: float
    best_epoch: int
    best_state: dict[str, Any]


def start_run(checkpoint: Path | None, config: Mapping[str, Any], model, optimizer, scheduler) -> RunState:
    """A fresh run, or the one ``checkpoint`` holds for the same config (model and optimizer restored)."""
    state = _resume(checkpoint, config, model, optimizer, scheduler)
    return RunState(state.get("history", []), state.get("best_auroc", -math.inf), state.get("best_epoch", 0),
                    state.get("best_state") or {k: v.detach().clone() for k, v in model.state_dict().items()})


def end_epoch(run: RunState, epoch: int, model, optimizer, scheduler, config: Mapping[str, Any],
              checkpoint: Path | None, findings: tuple[str, ...], val_labels: np.ndarray, val_scores: np.ndarray,
              train_loss: float, val_loss: float) -> RunState:
    """Score the epoch (validation macro AUROC), step the scheduler, keep the best weights, checkpoint."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a finding absent from a small validation split: NaN, left out
        auroc = macro_auroc(val_labels, val_scores, findings)
    auroc = float(auroc) if np.isfinite(auroc) else 0.5
    scheduler.step(auroc)
    run.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_macro_auroc": auroc,
                        "lr": optimizer.param_groups[-1]["lr"]})
    if auroc > run.best_auroc:
        run.best_auroc, run.best_epoch = auroc, epoch
        run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if checkpoint is not None:
        _save_state(checkpoint, config, model, optimizer, scheduler, run.history, run.best_auroc, run.best_epoch,
                    run.best_state)
    return run


def predict_head(head: FusionHead, data: SplitData) -> np.ndarray:
    """Probabilities (N, C) of a trained head on a split."""
    import torch

    head.eval()
    with torch.inference_mode():
        return torch.sigmoid(head(data.inputs(head.config))).numpy()


# -- checkpoint and resume (safetensors + JSON) -------------------------------------------------------------
def _config_key(config: Mapping[str, Any]) -> str:
    return json.dumps({k: config[k] for k in sorted(config) if k not in ("epochs", "device", "cache")}, default=str)


def _save_state(folder: Path, config, head, optimizer, scheduler, history, best_auroc, best_epoch, best_state) -> None:
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors |= {f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"opt.{index}.{key}"] = torch_tensor(value).cpu().contiguous()
    with atomic_path(folder / "last.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / "last.json", {
        "config_key": _config_key(config), "history": history, "best_auroc": best_auroc, "best_epoch": best_epoch,
        "param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(),
    })


def torch_tensor(value: Any):
    import torch

    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _resume(folder: Path | None, config, head, optimizer, scheduler) -> dict[str, Any]:
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
    return {"history": meta["history"], "best_auroc": meta["best_auroc"], "best_epoch": meta["best_epoch"],
            "best_state": {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}}


# -- the whole job ---------------------------------------------------------------------------------------
def load_split_data(prepared: Path, cache, findings: tuple[str, ...], split: str) -> SplitData:
    """Features (from the cache), demographics and labels of one split of a prepared dataset."""
    manifest = read_manifest(prepared)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise DatasetError(prepared / "manifest.csv", f"split {split!r} holds no images")
    ids = rows["image_id"].tolist()
    return SplitData(ids, cache.load(ids), rows["age_years"].to_numpy(dtype=float),
                     [s if isinstance(s, str) else None for s in rows["sex"]], rows[list(findings)].to_numpy(dtype=float))


def read_manifest(prepared: Path) -> pd.DataFrame:
    path = Path(prepared) / "manifest.csv"
    if not path.is_file():
        raise DatasetError(path, "missing: make the prepared dataset with `hybridcxr prepare`")
    return pd.read_csv(path, dtype={"image_id": str})


def dataset_findings(prepared: Path) -> tuple[str, ...]:
    """The findings of a prepared dataset, in its data.yaml order."""
    from hybridcxr.detect.train import data_names

    return tuple(data_names(Path(prepared) / "data.yaml"))


def open_models(detector_weights: str | Path, config: Mapping[str, Any], backbone_file: Path | None = None):
    """The detector and the CNN backbone (from ``backbone_file`` when it exists, else per the config)."""
    from hybridcxr.classify.backbone import build_backbone
    from hybridcxr.detect.predict import Detector

    device = choose_device(str(config["device"]))
    detector = Detector.load(detector_weights, device=device)
    weights = backbone_file if backbone_file is not None and backbone_file.is_file() else config["backbone_weights"]
    backbone = build_backbone(config["backbone"], weights, input_size=int(config["backbone_size"])).to(device)
    return detector, backbone


def cache_features(prepared: Path, detector, backbone, folder: Path, progress: bool = True):
    """Cache the features of every prepared image (its cached PNG: decoded once, at prepare time)."""
    from hybridcxr.classify.cache import build_cache

    manifest = read_manifest(prepared)
    paths = [Path(prepared) / p for p in manifest["image"]]
    return build_cache(folder, paths, manifest["image_id"].tolist(), detector, backbone, progress=progress)


def train_classifier(data: str | Path, detector_weights: str | Path, out: str | Path,
                     config: Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Cache features, train the head (resumable), choose thresholds on validation, write the run folder.

    Returns the model card.
    """
    from hybridcxr.detect.weights import card_path, resolve_weights

    config = dict(config or classifier_config())
    prepared, out = Path(data), Path(out)
    findings = dataset_findings(prepared)
    if (out / "model" / "card.json").is_file():
        raise InputError(out, "already holds a trained classifier (model/card.json); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    backbone_file = out / "backbone.safetensors"
    detector, backbone = open_models(detector_weights, config, backbone_file)
    if not backbone_file.is_file():  # the run keeps the exact CNN its features came from
        backbone.save(backbone_file)
    detector_src = resolve_weights(detector_weights)
    (out / "detector").mkdir(exist_ok=True)
    for src, name in ((detector_src, "best.safetensors"), (card_path(detector_src), "best.json")):
        if not (out / "detector" / name).is_file():
            shutil.copyfile(src, out / "detector" / name)
    end_to_end = bool(config["end_to_end"])
    # End to end, the CNN changes: its frozen-start features live apart from RUN/features, which always holds
    # the features of the run's final models (what `evaluate classifier` reads).
    frozen = out / "checkpoint" / "features-start" if end_to_end else out / "features"
    cache = cache_features(prepared, detector, backbone, Path(config["cache"] or frozen), progress)
    train = load_split_data(prepared, cache, findings, "train")
    val = load_split_data(prepared, cache, findings, "val")
    if end_to_end:
        from hybridcxr.classify.end_to_end import train_end_to_end

        manifest = read_manifest(prepared).set_index("image_id")
        backbone, result = train_end_to_end(
            backbone, train, val, [prepared / manifest.at[i, "image"] for i in train.image_ids],
            [prepared / manifest.at[i, "image"] for i in val.image_ids], findings, config,
            checkpoint=out / "checkpoint", progress=progress)
        backbone = backbone.to(detector.device)
        # The tuned CNN replaces RUN/backbone.safetensors only once the run is complete (below), so a run killed
        # while re-caching resumes from the CNN its starting features came from; a partial final cache from
        # such a run was made by another CNN and is dropped.
        backbone.save(out / "checkpoint" / "backbone-tuned.safetensors")
        shutil.rmtree(out / "features", ignore_errors=True)
        cache = cache_features(prepared, detector, backbone, out / "features", progress)
        val = load_split_data(prepared, cache, findings, "val")
    else:
        result = train_head(train, val, findings, config, checkpoint=out / "checkpoint")
    val_scores = predict_head(result.head, val)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thresholds = choose_thresholds(val.labels, val_scores, findings, rule=config["threshold_rule"])
    write_csv(out / "history.csv", result.history)
    from hybridcxr.report.plots import plot_classifier_history

    plot_classifier_history(result.history, out / "training_curves.png")
    summary = read_json_or_none(prepared / "summary.json") or {}
    card = {
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "threshold_rule": config["threshold_rule"],
        "best_epoch": result.best_epoch,
        "val_macro_auroc": result.best_auroc,
        "backbone": {"name": config["backbone"], "size": int(config["backbone_size"]),
                     "weights": str(config["backbone_weights"] or "none (random initialisation)"),
                     "fine_tuned": end_to_end,
                     "fingerprint": backbone.fingerprint()},
        "detector": {"imgsz": detector.imgsz, "feature_dim": detector.feature_dim},
        "train_config": {k: v for k, v in config.items()},
        "data": {"prepared": str(prepared), "source": summary.get("source"),
                 "images_per_split": summary.get("images_per_split"), "grouped_by": summary.get("grouped_by")},
    }
    if end_to_end:
        os.replace(out / "checkpoint" / "backbone-tuned.safetensors", backbone_file)
    save_checkpoint(out / "model", result.head, card=card)
    return json.loads((out / "model" / "card.json").read_text())
