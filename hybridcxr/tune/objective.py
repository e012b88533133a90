"""A trial: the features every trial trains on, and the objective that trains one fusion head.

Every trial trains on cached features (seconds), never on images (hours), with
:func:`~hybridcxr.classify.train.train_head`, and reports the validation macro AUROC after every epoch so the
pruner can stop a lagging trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from hybridcxr.classify.train import SplitData, dataset_findings, load_split_data, train_head, training_split
from hybridcxr.config import ensure_config
from hybridcxr.errors import InputError
from hybridcxr.files import read_json_or_none
from hybridcxr.tune.space import TUNE_YAML, Param, suggest


@dataclass
class TuneData:
    """What every trial trains and validates on: cached features of two splits and the findings."""

    train: SplitData
    val: SplitData
    findings: tuple[str, ...]


def load_tune_data(prepared: str | Path, cache_folder: str | Path, config: Mapping[str, Any] | None = None) -> TuneData:
    """The train and val splits of a prepared dataset from an existing feature cache (no model is loaded); with a
    ``config`` asking for ``augment_views``, the training split's cached augmented views too.

    ``functools.partial(load_tune_data, prepared, cache)`` is the picklable factory to give
    :func:`~hybridcxr.tune.study.run_tune` so each worker process reads the cache itself instead of receiving
    the arrays through a pipe.
    """
    from hybridcxr.classify.cache import FeatureCache

    folder = Path(cache_folder)
    meta = read_json_or_none(folder / "meta.json")
    if not meta or "fingerprints" not in meta:
        raise InputError(folder, "not a feature cache (no meta.json): run `hybridcxr train classifier` first")
    cache = FeatureCache(folder, meta["fingerprints"])
    findings = dataset_findings(Path(prepared), None if config is None else ensure_config("classifier", config).findings)
    train = (load_split_data(Path(prepared), cache, findings, "train") if config is None
             else training_split(Path(prepared), cache, findings, config))
    return TuneData(train, load_split_data(Path(prepared), cache, findings, "val"), findings)


@dataclass
class Objective:
    """One trial: suggest overrides, train the head with per-epoch reports, return its best validation AUROC.

    Plain data only, so it pickles; a worker process may equally rebuild it from the same pieces. The overrides
    a trial trained with (the searched keys plus the tuning ``epochs`` and ``patience``) are stored in
    ``trial.user_attrs["config"]``, so the best trial can be reproduced exactly
    (:func:`~hybridcxr.tune.export.export_best`).
    """

    data: TuneData
    base_config: dict[str, Any]
    space: dict[str, Param]
    epochs: int
    patience: int

    def __post_init__(self) -> None:
        missing = [k for k in self.space if k not in self.base_config]
        if missing:
            raise InputError(TUNE_YAML, f"space keys {missing} are not in the base classifier config")

    def overrides(self, trial: optuna.Trial) -> dict[str, Any]:
        """The classifier overrides of ``trial``: its suggestions and the tuning epochs and patience."""
        return {"epochs": int(self.epochs), "patience": int(self.patience), **suggest(trial, self.space)}

    def __call__(self, trial: optuna.Trial) -> float:
        overrides = self.overrides(trial)
        trial.set_user_attr("config", overrides)
        config = {**self.base_config, **overrides}

        def report(epoch: int, auroc: float) -> None:
            """Hand the epoch's validation AUROC to the pruner; stop the trial where it says so."""
            trial.report(auroc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: validation macro AUROC {auroc:.4f}")

        result = train_head(self.data.train, self.data.val, self.data.findings, config, callback=report)
        trial.set_user_attr("best_epoch", result.best_epoch)
        return float(result.best_auroc)
