"""Optuna over the fusion head: every trial trains on cached features (seconds), never on images (hours).

The search space is declarative (``configs/tune.yaml``); a trial turns it into overrides of
``configs/classifier.yaml`` and trains with :func:`~hybridcxr.classify.train.train_head`, reporting the
validation macro AUROC after every epoch so the pruner can stop a lagging trial. The study lives in a storage
(SQLite ``RUN/study.db`` by default, or any SQLAlchemy URL such as ``postgresql+psycopg://...`` for workers on
several machines), so a run can be watched with optuna-dashboard, resumed after a kill, and shared by workers
(how resuming and crashes work: :mod:`hybridcxr.tune.study`).

Modules, each one job; this package re-exports their public names:

- :mod:`~hybridcxr.tune.space`: settings, the declarative search space, categorical labels.
- :mod:`~hybridcxr.tune.objective`: the features trials train on and the objective of one trial.
- :mod:`~hybridcxr.tune.storage`: storage URLs, the RDB storage with heartbeats, opening a study, stale trials.
- :mod:`~hybridcxr.tune.study`: :func:`run_tune`, its worker processes and trial budget.
- :mod:`~hybridcxr.tune.export`: the best trial as a full classifier config.
- :mod:`~hybridcxr.tune.report`: the static study report (PNGs, ``study.html``, ``trials.csv``).
- :mod:`~hybridcxr.tune.dashboard`: the optuna-dashboard server.
- :mod:`~hybridcxr.tune.job`: the ``hybridcxr tune`` job end to end.

Typical use (``load_tune_data`` reads a prepared dataset and its feature cache)::

    study = run_tune(functools.partial(load_tune_data, "prepared", "RUN/features"), "tune-run", trials=100, workers=4)
    export_best(study, "tune-run", classifier_config())        # tune-run/best_config.yaml
    write_study_report(study, "tune-run")                      # PNGs, study.html, trials.csv
"""

from __future__ import annotations

from hybridcxr.tune.dashboard import dashboard_command, dashboard_url, start_dashboard, wait_until_up
from hybridcxr.tune.export import export_best
from hybridcxr.tune.job import tune_fusion
from hybridcxr.tune.objective import Objective, TuneData, load_tune_data
from hybridcxr.tune.report import write_study_report
from hybridcxr.tune.space import Param, choice_label, decode_label, load_space, suggest, tune_settings
from hybridcxr.tune.storage import (
    FINISHED,
    SQLITE_TIMEOUT,
    count_finished,
    default_storage,
    fail_stale_trials,
    make_pruner,
    open_storage,
    open_study,
)
from hybridcxr.tune.study import StopWhenTaken, run_tune, worker_seed, worker_threads

__all__ = [
    "FINISHED",
    "SQLITE_TIMEOUT",
    "Objective",
    "Param",
    "StopWhenTaken",
    "TuneData",
    "choice_label",
    "count_finished",
    "dashboard_command",
    "dashboard_url",
    "decode_label",
    "default_storage",
    "export_best",
    "fail_stale_trials",
    "load_space",
    "load_tune_data",
    "make_pruner",
    "open_storage",
    "open_study",
    "run_tune",
    "start_dashboard",
    "suggest",
    "tune_fusion",
    "tune_settings",
    "wait_until_up",
    "worker_seed",
    "worker_threads",
    "write_study_report",
]
