"""Where a study lives: storage URLs, the RDB storage with heartbeats, opening the study, stale trials.

The study lives in a storage (SQLite ``RUN/study.db`` by default, or any SQLAlchemy URL such as
``postgresql+psycopg://...`` for workers on several machines), so a run can be watched with optuna-dashboard,
resumed after a kill, and shared by workers. Every running trial has a heartbeat in the storage, so the trial
of a killed worker can be told from a live one and failed.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hybridcxr.errors import InputError
from hybridcxr.tune.space import TUNE_YAML

#: Trial states that count towards the requested number of trials.
FINISHED: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)
#: Seconds a SQLite writer waits for another process's lock before failing ("database is locked").
SQLITE_TIMEOUT = 60


def default_storage(run_dir: str | Path) -> str:
    """``sqlite:///<run_dir>/study.db`` (absolute), the storage of a run folder."""
    return f"sqlite:///{(Path(run_dir).resolve() / 'study.db').as_posix()}"


def open_storage(url: str, heartbeat_interval: int | None = 10,
                 grace_period: int | None = 60) -> optuna.storages.RDBStorage:
    """An RDB storage for any SQLAlchemy URL, with a heartbeat so a killed worker's trial can be failed.

    For SQLite the connection waits up to :data:`SQLITE_TIMEOUT` s for another process's write lock (workers
    write concurrently), and the database's folder is created. Each process must open its own storage.
    """
    import sqlalchemy

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT}
        database = sqlalchemy.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                          grace_period=grace_period)


def make_pruner(settings: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner named by ``settings["pruner"]``: median, hyperband or none."""
    kind = settings["pruner"].lower()
    warmup = settings["warmup_epochs"]
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"], n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(warmup, 1), max_resource=settings["epochs"])
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise InputError(TUNE_YAML, f"pruner must be median, hyperband or none, not {settings['pruner']!r}")


def open_study(url: str, study_name: str, settings: Mapping[str, Any], seed: int) -> optuna.Study:
    """Create the study (maximise validation macro AUROC) or load it where it exists, with this process's
    sampler (TPE, ``seed``) and pruner (neither is stored in the storage)."""
    storage = open_storage(url, settings["heartbeat_interval"], settings["grace_period"])
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=make_pruner(settings))
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise InputError(url, f"study {study_name!r} exists and minimises; choose another study name")
    return study


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark this study's RUNNING trials whose heartbeat is older than the grace period FAIL (their process
    died, e.g. SIGKILL); return their numbers. A thin wrapper of :func:`optuna.storages.fail_stale_trials`."""
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    _fail_trials_without_heartbeat(study)
    failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return [n for n in running if n in failed]


def _fail_trials_without_heartbeat(study: optuna.Study) -> None:
    """A worker killed between creating its trial and the first heartbeat leaves a RUNNING trial with no
    heartbeat row, which optuna never fails: fail those that started more than the grace period ago."""
    storage = getattr(study._storage, "_backend", study._storage)  # optuna wraps the RDB storage in a cache
    if not isinstance(storage, optuna.storages.RDBStorage) or storage.heartbeat_interval is None:
        return
    from optuna.storages._rdb import models

    grace = timedelta(seconds=storage.grace_period or 2 * storage.heartbeat_interval)
    now = datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.datetime_start is None or now - trial.datetime_start <= grace:
            continue
        with models_session(storage) as session:
            beating = session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial._trial_id).count()
        if not beating:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def models_session(storage: optuna.storages.RDBStorage):
    """A read-only SQLAlchemy session on the storage's database (optuna's own scoped session)."""
    from optuna.storages._rdb.storage import _create_scoped_session

    return _create_scoped_session(storage.scoped_session)


def count_finished(study: optuna.Study) -> int:
    """Trials that count towards the requested total: COMPLETE or PRUNED."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))
