"""The ``hybridcxr tune`` job end to end: cache features, run the study, export the best config, report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hybridcxr.classify.train import classifier_config
from hybridcxr.layout import ClassifierLayout
from hybridcxr.tune.export import export_best
from hybridcxr.tune.objective import load_tune_data
from hybridcxr.tune.report import write_study_report
from hybridcxr.tune.storage import count_finished
from hybridcxr.tune.study import run_tune


def seed_from_run(source: ClassifierLayout, target: ClassifierLayout) -> None:
    """Copy a classifier run's CNN, lung model and feature cache into a tune run where it has none yet."""
    import shutil

    from hybridcxr.errors import InputError

    if not source.features.is_dir() or not source.backbone.is_file():
        raise InputError(source.root, "holds no feature cache and CNN (features/, backbone.safetensors): "
                                      "--features-from must name a run of `hybridcxr train classifier`")
    if not target.backbone.is_file():
        shutil.copyfile(source.backbone, target.backbone)
    for name in ("features", "lungs"):
        src, dst = source.root / name, target.root / name
        if src.is_dir() and not dst.exists():
            shutil.copytree(src, dst)


def tune_fusion(data: str | Path, detector: str | Path, out_dir: str | Path, *, trials: int, storage: str | None = None,
                study_name: str | None = None, workers: int = 1, overrides: Mapping[str, Any] | None = None,
                progress: bool = True, features_from: str | Path | None = None) -> str:
    """The ``hybridcxr tune`` job: cache features, run the study, export the best config, write the report.

    The run folder keeps the CNN the features came from (``backbone.safetensors``) and the exported
    ``best_config.yaml`` points at it and at the cache, so ``train classifier --config best_config.yaml``
    trains on exactly the features the trials saw. ``features_from``: a classifier run trained with the same
    detector and settings, whose CNN, lung model and feature cache seed this run instead of being computed
    again (the cache's fingerprints are still checked against the models). Returns a summary for the terminal.
    """
    from functools import partial

    from hybridcxr.classify.train import cache_features, dataset_findings, open_lungs, open_models, training_split

    prepared, out = Path(data), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = ClassifierLayout(out)  # a tune run keeps the CNN and the feature cache where a classifier run does
    if features_from is not None:
        seed_from_run(ClassifierLayout(Path(features_from)), layout)
    backbone_file = layout.backbone
    config = classifier_config(overrides)
    det, backbone = open_models(detector, config, backbone_file)
    if not backbone_file.is_file():
        backbone.save(backbone_file)
    lungs = open_lungs(config, layout)  # the lung model, copied into the tune run like the CNN
    cache = cache_features(prepared, det, backbone, layout.features, progress, lungs)
    if config.augment_views:  # the trials train on the augmented views too (computed here, once)
        training_split(prepared, cache, dataset_findings(prepared, config.findings), config, (det, backbone, lungs), progress)
    del det, backbone, lungs
    base = {**config, "backbone_weights": str(backbone_file.resolve()), "cache": str(layout.features.resolve())}
    if config.lungs is not None:
        base["lungs"] = str(layout.lungs.resolve())
    study = run_tune(partial(load_tune_data, prepared, layout.features, config.to_dict()), out, trials=trials, storage=storage,
                     study_name=study_name, workers=workers, base_config=base)
    best = export_best(study, out, base)
    report = write_study_report(study, out / "study-report")
    finished = count_finished(study)
    return (f"Study {study.study_name!r}: {finished} finished trials, best validation macro AUROC "
            f"{study.best_value:.4f} (trial {study.best_trial.number})\n"
            f"best config: {best}\nreport: {report[0].parent if report else out / 'study-report'}\n"
            f"train it: hybridcxr train classifier --data {prepared} --detector {detector} --out RUN --config {best}")
