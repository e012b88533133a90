"""Train the fusion classifier on cached features: weighted BCE, AdamW, early stopping on validation AUROC.

:func:`train_head` is the core (also each Optuna trial's body): it trains a :class:`FusionHead` on in-memory
feature arrays and reports validation macro AUROC per epoch. :func:`train_classifier` is the job behind
``hybridcxr train classifier``: it caches features of a prepared dataset, trains with checkpoint and resume,
chooses per-finding thresholds on validation and writes a self-contained run folder::

    RUN/model/{model.safetensors, card.json}        the fusion head (card: thresholds, history, data summary)
    RUN/detector/{best.safetensors, best.json}      the detector it was trained with
    RUN/backbone.safetensors                        the CNN whose embeddings it was trained on
    RUN/features/                                   the feature cache (views/: the training images' augmented
                                                    views, with augment_views >= 1)
    RUN/history.csv, RUN/training_curves.png        loss, accuracy and validation AUROC per epoch
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hybridcxr.classify.augment import augmentation_card
from hybridcxr.classify.calibration import apply_calibration, calibrated, fit_calibration, unlearned_findings
from hybridcxr.classify.fusion import FusionHead, save_checkpoint
from hybridcxr.classify.loop import (
    EpochCallback,
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
from hybridcxr.config import ClassifierConfig, ensure_config, look_up_option
from hybridcxr.config import classifier_config as classifier_config  # re-exported: the job's config
from hybridcxr.device import choose_device
from hybridcxr.errors import DatasetError, InputError
from hybridcxr.files import read_json_or_none, write_csv
from hybridcxr.findings import NO_FINDING
from hybridcxr.layout import ClassifierLayout, PreparedLayout
from hybridcxr.report.metrics import choose_thresholds



def train_head(
    train: SplitData, val: SplitData, findings: tuple[str, ...], config: Mapping[str, Any], *,
    callback: EpochCallback | None = None, checkpoint: Path | None = None,
) -> HeadResult:
    """Train one fusion head; keep the epoch with the best validation macro AUROC.

    With ``checkpoint`` (a folder), the state after every epoch is saved there (safetensors + JSON, no
    pickle) and an interrupted run with the same config continues from it.
    """
    import torch

    config = ensure_config("classifier", config)
    torch.manual_seed(config["seed"])
    device = choose_device(config["device"])
    fusion = fit_fusion(train, findings, config)
    head = FusionHead(fusion).to(device)
    weights = pos_weight(train.labels, config["pos_weight"], findings)
    criterion = loss_fn(config["loss"], weights, device)
    optimizer, scheduler = make_optimizer([{"params": head.parameters(), "lr": config["lr"]}], config)
    x_train = {k: v.to(device) for k, v in train.inputs(fusion).items()}
    y_train = torch.as_tensor(np.nan_to_num(train.labels), dtype=torch.float32, device=device)
    x_val = {k: v.to(device) for k, v in val.inputs(fusion).items()}
    y_val = torch.as_tensor(np.nan_to_num(val.labels), dtype=torch.float32, device=device)

    run = start_run(checkpoint, config, head, optimizer, scheduler)
    batch = config["batch_size"]
    n = len(y_train)
    for epoch in range(len(run.history) + 1, config["epochs"] + 1):
        head.train()
        order = torch.as_tensor(run.rng.permutation(n), device=device)
        total, seen = 0.0, torch.zeros_like(y_train)  # seen: each row's score from its training batch
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            optimizer.zero_grad(set_to_none=True)
            logits = head({k: v[rows] for k, v in x_train.items()})
            loss = criterion(logits, y_train[rows])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
            seen[rows] = torch.sigmoid(logits.detach())
        head.eval()
        with torch.inference_mode():
            val_logits = head(x_val)
            val_loss = float(criterion(val_logits, y_val))
        run = end_epoch(run, epoch, head, optimizer, scheduler, config, checkpoint, findings, val.labels,
                        torch.sigmoid(val_logits).cpu().numpy(), total / max(n, 1), val_loss,
                        train_accuracy=label_accuracy(train.labels, seen.cpu().numpy(), findings))
        if callback is not None:
            callback(epoch, run.history[-1]["val_macro_auroc"])
        if epoch - run.best_epoch >= config["patience"]:
            break
    head.load_state_dict(run.best_state)
    head.eval()
    return HeadResult(head.cpu(), pd.DataFrame(run.history), float(run.best_auroc), int(run.best_epoch))


def head_logits(head: FusionHead, data: SplitData) -> np.ndarray:
    """Logits (N, C) of a trained head on a split."""
    import torch

    head.eval()
    with torch.inference_mode():
        return head(data.inputs(head.config)).numpy()


def predict_head(head: FusionHead, data: SplitData, temperatures: np.ndarray | None = None) -> np.ndarray:
    """Probabilities (N, C) of a trained head on a split: ``sigmoid(logit / T)`` with the run's temperatures
    (:mod:`hybridcxr.classify.calibration`), or the raw sigmoid without."""
    logits = head_logits(head, data)
    return calibrated(logits, np.ones(logits.shape[1]) if temperatures is None else temperatures)




# -- the whole job ---------------------------------------------------------------------------------------
def load_split_data(prepared: Path, cache, findings: tuple[str, ...], split: str) -> SplitData:
    """Features (from the cache), demographics and labels of one split of a prepared dataset."""
    manifest = read_manifest(prepared)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise DatasetError(PreparedLayout(prepared).manifest, f"split {split!r} holds no images")
    ids = rows["image_id"].tolist()
    return SplitData(ids, cache.load(ids), rows["age_years"].to_numpy(dtype=float),
                     [s if isinstance(s, str) else None for s in rows["sex"]],
                     split_labels(rows, findings, dataset_findings(prepared)))


def training_split(prepared: Path, cache, findings: tuple[str, ...], config: Mapping[str, Any], models=None,
                   progress: bool = True) -> SplitData:
    """The training split, followed by its cached augmented views when ``augment_views >= 1`` (else exactly
    :func:`load_split_data`'s). With ``models`` (``(detector, backbone, lungs)``) views not yet cached are
    computed first; without, they must be in ``cache``'s ``views/`` already."""
    from hybridcxr.classify.augment import ImageAugment, settings_key, view_counts, view_id, with_views
    from hybridcxr.classify.cache import build_views, view_cache

    config = ensure_config("classifier", config)
    train = load_split_data(prepared, cache, findings, "train")
    if not config.augment_views:
        return train
    counts = view_counts(train.labels, findings, config.augment_views, config.oversample, config.oversample_max)
    views = view_cache(cache, settings_key(config))
    if models is not None:
        detector, backbone, lungs = models
        manifest = read_manifest(prepared).set_index("image_id")
        paths = [Path(prepared) / manifest.at[i, "image"] for i in train.image_ids]
        build_views(views, paths, train.image_ids, counts, ImageAugment(config), detector, backbone, lungs=lungs,
                    progress=progress)
    ids = [view_id(i, v) for i, n in zip(train.image_ids, counts) for v in range(1, int(n) + 1)]
    return with_views(train, views.load(ids), counts)


def split_labels(rows: pd.DataFrame, findings: tuple[str, ...], every: tuple[str, ...] | None = None) -> np.ndarray:
    """Labels ``(N, C)`` of manifest rows: the findings' columns, and "No finding" from the manifest's
    ``no_finding`` column where it has one, else 1 where every finding is 0 and 0 where any is 1 (NaN where
    some are unlabelled and none is positive). ``every``: all the dataset's findings, when ``findings`` is a
    subset of them: "No finding" stays a normal film (none of them), not "none of the subset"."""
    named = [f for f in findings if f != NO_FINDING]
    labels = rows[named].to_numpy(dtype=float)
    if NO_FINDING not in findings:
        return labels
    if "no_finding" in rows:
        normal = rows["no_finding"].to_numpy(dtype=float)
    else:
        known = rows[[f for f in (every or findings) if f != NO_FINDING]].to_numpy(dtype=float)
        any_positive = np.nan_to_num(known, nan=0.0).max(axis=1, initial=0.0) > 0
        all_known = ~np.isnan(known).any(axis=1)
        normal = np.where(any_positive, 0.0, np.where(all_known, 1.0, np.nan))
    out = np.empty((len(rows), len(findings)))
    out[:, [findings.index(f) for f in named]] = labels
    out[:, findings.index(NO_FINDING)] = normal
    return out


def read_manifest(prepared: Path) -> pd.DataFrame:
    path = PreparedLayout(prepared).manifest
    if not path.is_file():
        raise DatasetError(path, "missing: make the prepared dataset with `hybridcxr prepare`")
    return pd.read_csv(path, dtype={"image_id": str})


def dataset_findings(prepared: Path, subset: Sequence[str] | None = None) -> tuple[str, ...]:
    """What the classifier learns on a prepared dataset: its findings in data.yaml order (only those of
    ``subset``, the classifier setting ``findings``, when given), then "No finding" (the normal/abnormal output:
    none of the dataset's findings, whatever the subset), reported like any finding.

    Raises ConfigError naming a finding of ``subset`` that the dataset does not have (with a did-you-mean).
    """
    from hybridcxr.detect.train import data_names

    names = tuple(data_names(PreparedLayout(prepared).data_yaml))
    if subset is not None:
        for name in subset:
            look_up_option(name, (*names, NO_FINDING), "finding", where=f"classifier setting findings ({prepared})")
        names = tuple(n for n in names if n in subset)
    return names if NO_FINDING in names else (*names, NO_FINDING)


def open_models(detector_weights: str | Path, config: Mapping[str, Any], backbone_file: Path | None = None):
    """The detector and the CNN backbone (from ``backbone_file`` when it exists, else per the config)."""
    from hybridcxr.classify.backbone import build_backbone
    from hybridcxr.detect.predict import Detector

    device = choose_device(config["device"])
    detector = Detector.load(detector_weights, device=device)
    weights = backbone_file if backbone_file is not None and backbone_file.is_file() else config["backbone_weights"]
    backbone = build_backbone(config.backbone, weights, input_size=config.backbone_size, seed=config.seed).to(device)
    return detector, backbone


def cache_features(prepared: Path, detector, backbone, folder: Path, progress: bool = True, lungs=None):
    """Cache the features of every prepared image (its cached PNG: decoded once, at prepare time); with
    ``lungs`` (a :class:`~hybridcxr.classify.cache.LungSide`) the lung group too, and the crop if asked."""
    from hybridcxr.classify.cache import build_cache

    manifest = read_manifest(prepared)
    paths = [Path(prepared) / p for p in manifest["image"]]
    return build_cache(folder, paths, manifest["image_id"].tolist(), detector, backbone, progress=progress,
                       lungs=lungs)


def open_lungs(config: ClassifierConfig, layout: ClassifierLayout, device: str | None = None):
    """The run's lung side: the lung model of ``config.lungs`` copied into ``RUN/lungs`` (once) and loaded;
    None when the run uses none."""
    from hybridcxr.classify.cache import LungSide
    from hybridcxr.lungs.card import WEIGHTS, card_path

    if config.lungs is None:
        return None
    source = card_path(config.lungs)
    layout.lungs.mkdir(parents=True, exist_ok=True)
    for src in (source, source.with_name(WEIGHTS)):
        if not (layout.lungs / src.name).is_file():
            if not src.is_file():
                raise InputError(src, "missing: lungs= must name a run of `hybridcxr train lungs`")
            shutil.copyfile(src, layout.lungs / src.name)
    return LungSide.load(layout.lungs, crop=config.crop == "lungs", margin=config.crop_margin,
                         device=device or choose_device(config.device))


def train_classifier(data: str | Path, detector_weights: str | Path, out: str | Path,
                     config: Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Cache features, train the head (resumable), choose thresholds on validation, write the run folder.

    Returns the model card.
    """
    config = ensure_config("classifier", config)
    prepared, out = Path(data), Path(out)
    findings = dataset_findings(prepared, config.findings)
    layout = ClassifierLayout(out)
    if layout.card.is_file():
        raise InputError(out, "already holds a trained classifier (model/card.json); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    backbone_file = layout.backbone
    detector, backbone = open_models(detector_weights, config, backbone_file)
    if not backbone_file.is_file():  # the run keeps the exact CNN its features came from
        backbone.save(backbone_file)
    _copy_detector(detector_weights, layout.detector)
    lungs = open_lungs(config, layout)
    end_to_end = config["end_to_end"]
    # End to end, the CNN changes: its frozen-start features live apart from RUN/features, which always holds
    # the features of the run's final models (what `evaluate classifier` reads).
    frozen = layout.checkpoint / "features-start" if end_to_end else layout.features
    cache = cache_features(prepared, detector, backbone, Path(config["cache"] or frozen), progress, lungs)
    train = training_split(prepared, cache, findings, config, (detector, backbone, lungs), progress)
    val = load_split_data(prepared, cache, findings, "val")
    if end_to_end:
        from hybridcxr.classify.end_to_end import train_end_to_end

        manifest = read_manifest(prepared).set_index("image_id")
        backbone, result = train_end_to_end(
            backbone, train, val, [prepared / manifest.at[i, "image"] for i in train.image_ids],
            [prepared / manifest.at[i, "image"] for i in val.image_ids], findings, config,
            checkpoint=layout.checkpoint, progress=progress)
        backbone = backbone.to(detector.device)
        # The tuned CNN replaces RUN/backbone.safetensors only once the run is complete (below), so a run killed
        # while re-caching resumes from the CNN its starting features came from; a partial final cache from
        # such a run was made by another CNN and is dropped.
        backbone.save(layout.checkpoint / "backbone-tuned.safetensors")
        shutil.rmtree(layout.features, ignore_errors=True)
        cache = cache_features(prepared, detector, backbone, layout.features, progress, lungs)
        val = load_split_data(prepared, cache, findings, "val")
    else:
        result = train_head(train, val, findings, config, checkpoint=layout.checkpoint)
    val_logits = head_logits(result.head, val)
    calibration = (None if config.calibration == "none"
                   else fit_calibration(val_logits, val.labels, findings, str(config.calibration)))
    val_scores = apply_calibration(val_logits, calibration, findings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thresholds = choose_thresholds(val.labels, val_scores, findings, rule=config["threshold_rule"])
    write_csv(layout.history, result.history)
    from hybridcxr.report.plots import plot_classifier_history

    plot_classifier_history(result.history, layout.curves)
    card = _card(config, result, thresholds, backbone, detector, prepared, backbone_file)
    card["lungs"] = None if lungs is None else lungs.card()
    card["calibration"] = calibration
    card["unlearned"] = unlearned_findings(train.labels, findings)
    card["gating"] = _gating(config, prepared, detector, val, val_scores, findings, card["unlearned"], layout,
                             progress)
    card["augmentation"] = augmentation_card(config, train.image_ids)
    if end_to_end:
        os.replace(layout.checkpoint / "backbone-tuned.safetensors", backbone_file)
    save_checkpoint(layout.model, result.head, card=card)
    return json.loads(layout.card.read_text())


def _gating(config: ClassifierConfig, prepared: Path, detector, val: SplitData, val_scores: np.ndarray,
            findings: tuple[str, ...], unlearned: Mapping[str, str], layout: ClassifierLayout,
            progress: bool) -> dict[str, Any]:
    """The card's ``gating`` entry: the rule chosen on validation (:mod:`hybridcxr.classify.gate`), or why none."""
    if config.gating == "none":
        return {"rule": None, "reason": "gating=none"}
    from hybridcxr.classify.gate import choose_gating

    return choose_gating(prepared, detector, val.image_ids, val_scores, findings, unlearned, layout.gating,
                         progress)


def _copy_detector(weights: str | Path, folder: Path) -> None:
    """Copy the detector's weights and card into the run (a classifier run is self-contained)."""
    from hybridcxr.detect.weights import card_path, resolve_weights

    source = resolve_weights(weights)
    folder.mkdir(parents=True, exist_ok=True)
    for src, name in ((source, "best.safetensors"), (card_path(source), "best.json")):
        if not (folder / name).is_file():
            shutil.copyfile(src, folder / name)


def _weights_loaded(config: ClassifierConfig, backbone, run_backbone: Path) -> str:
    """What the CNN started from, as loaded, not as asked (``imagenet`` asked offline is random weights). A
    resumed run reloads its own saved CNN, so there the start is only known as asked."""
    source = backbone.weights_source
    if source == "random":
        return "none (random initialisation)"
    if Path(source) == Path(run_backbone):
        return f"{config.backbone_weights or 'none'} (as asked; resumed from the run's saved CNN)"
    return source


def _card(config: ClassifierConfig, result: HeadResult, thresholds: Mapping[str, float], backbone, detector,
          prepared: Path, run_backbone: Path) -> dict[str, Any]:
    """The run's model card: thresholds, best epoch, the CNN and detector it was trained with, config, data."""
    from hybridcxr.classify.cache import detector_fingerprint

    summary = read_json_or_none(PreparedLayout(prepared).summary) or {}
    return {
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "threshold_rule": str(config.threshold_rule),
        "best_epoch": result.best_epoch,
        "val_macro_auroc": result.best_auroc,
        "backbone": {"name": str(config.backbone), "size": config.backbone_size,
                     "weights": _weights_loaded(config, backbone, run_backbone),
                     "weights_requested": None if config.backbone_weights is None else str(config.backbone_weights),
                     "fine_tuned": config.end_to_end,
                     "fingerprint": backbone.fingerprint()},
        "detector": {"imgsz": detector.imgsz, "feature_dim": detector.feature_dim,
                     "fingerprint": detector_fingerprint(detector)},
        "train_config": config.to_dict(),
        "data": {"prepared": str(prepared), "source": summary.get("source"),
                 "images_per_split": summary.get("images_per_split"), "grouped_by": summary.get("grouped_by")},
    }
