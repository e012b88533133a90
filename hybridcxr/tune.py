"""Optuna over the fusion head: every trial trains on cached features (seconds), never on images (hours).

The search space is declarative (``configs/tune.yaml``); a trial turns it into overrides of
``configs/classifier.yaml`` and trains with :func:`~hybridcxr.classify.train.train_head`, reporting the
validation macro AUROC after every epoch so the pruner can stop a lagging trial. The study lives in a storage
(SQLite ``RUN/study.db`` by default, or any SQLAlchemy URL such as ``postgresql+psycopg://...`` for workers on
several machines), so a run can be watched with optuna-dashboard, resumed after a kill, and shared by workers.

Resuming and crashes:

- **Re-running continues the study.** :func:`run_tune` runs ``trials`` minus the trials already COMPLETE or
  PRUNED (FAIL ones do not count), so the same command after an interruption finishes the job, and a larger
  ``trials`` extends it.
- **A killed worker's trial becomes FAIL, not a ghost.** The storage records a heartbeat of every running
  trial (``heartbeat_interval`` seconds, in ``tune.yaml``); a RUNNING trial whose heartbeat is older than
  ``grace_period`` belongs to a dead process. Optuna marks such trials FAIL before each new trial, and
  :func:`run_tune` also does so explicitly when it starts (:func:`fail_stale_trials`), before it counts what is
  left to run. A trial killed less than ``grace_period`` ago still looks alive: it stays RUNNING until a later
  check (the next trial of this or any run, or the next run) finds its heartbeat stale.

Typical use (``load_tune_data`` reads a prepared dataset and its feature cache)::

    study = run_tune(functools.partial(load_tune_data, "prepared", "RUN/features"), "tune-run", trials=100, workers=4)
    export_best(study, "tune-run", classifier_config())        # tune-run/best_config.yaml
    write_study_report(study, "tune-run")                      # PNGs, study.html, trials.csv
"""

from __future__ import annotations

import base64
import copy
import html
import logging
import math
import multiprocessing as mp
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.exceptions import ExperimentalWarning
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from hybridcxr.classify.train import SplitData, classifier_config, dataset_findings, load_split_data, train_head
from hybridcxr.config import CONFIG_DIR, load_config
from hybridcxr.errors import HybridCXRError, InputError
from hybridcxr.files import atomic_path, read_json_or_none, write_csv, write_text

log = logging.getLogger(__name__)

#: Trial states that count towards the requested number of trials.
FINISHED: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)
#: Seconds a SQLite writer waits for another process's lock before failing ("database is locked").
SQLITE_TIMEOUT = 60
_TUNE_YAML = CONFIG_DIR / "tune.yaml"


# -- settings and search space -------------------------------------------------------------------------------
def tune_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults from ``configs/tune.yaml`` with ``overrides`` applied; a ``space`` given replaces the whole space.

    Other keys follow :func:`~hybridcxr.config.load_config` (``epochs``, ``space.lr``; unknown keys raise).
    """
    rest = dict(overrides or {})
    space = rest.pop("space", None)
    settings = load_config("tune", overrides=rest)
    if space is not None:
        settings["space"] = copy.deepcopy(dict(space))
    return settings


@dataclass
class Param:
    """One searched (or fixed) classifier setting.

    ``kind`` is ``float``, ``int``, ``categorical`` or ``fixed``; categorical ``choices`` map the primitive label
    Optuna stores (``"256-64"``) to the value the classifier gets (``[256, 64]``).
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: dict[Any, Any] | None = None
    value: Any = None


def choice_label(value: Any) -> str | int | float | bool | None:
    """The primitive Optuna stores for a categorical choice: lists become ``"256-64"`` / ``"yolo+cnn"``.

    >>> choice_label([512, 128]), choice_label(["cnn", "age", "sex"]), choice_label([]), choice_label("focal")
    ('512-128', 'cnn+age+sex', 'none', 'focal')
    """
    if isinstance(value, (list, tuple)):
        if not value:
            return "none"
        separator = "+" if any(isinstance(v, str) for v in value) else "-"
        return separator.join(str(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"a categorical choice must be a primitive or a list, not {type(value).__name__}")


def decode_label(label: str) -> list[Any]:
    """The list a label such as ``"256-64"`` or ``"yolo+cnn"`` stands for (``"none"``: the empty list).

    >>> decode_label("256-64"), decode_label("yolo+cnn"), decode_label("none")
    ([256, 64], ['yolo', 'cnn'], [])
    """
    if label in ("", "none"):
        return []
    parts = label.split("+") if "+" in label else label.split("-")
    return [int(p) if p.isdigit() else p for p in parts]


def load_space(config: Mapping[str, Any]) -> dict[str, Param]:
    """The search space of a tune config (its ``space``; a bare space mapping works too), checked against
    ``configs/classifier.yaml``.

    A spec that is not a mapping fixes that key for every trial (``lr: 1.0e-3``). For a key whose classifier
    default is a list (``hidden``, ``groups``), string choices are read as labels (``"256-64"``).
    Raises InputError naming the key for an unknown key or a malformed distribution.
    """
    space = config.get("space", config) if isinstance(config, Mapping) else None
    if not isinstance(space, Mapping) or not space:
        raise InputError(_TUNE_YAML, "space must be a non-empty mapping of classifier keys to distributions")
    defaults = classifier_config()
    out: dict[str, Param] = {}
    for name, spec in space.items():
        if name not in defaults:
            raise InputError(_TUNE_YAML, f"space: {name!r} is not a key of configs/classifier.yaml; "
                                         f"known keys: {sorted(defaults)}")
        if not isinstance(spec, Mapping):
            fixed = decode_label(spec) if isinstance(spec, str) and isinstance(defaults[name], list) else spec
            out[name] = Param(name, "fixed", value=copy.deepcopy(_plain(fixed)))
            continue
        kind = spec.get("type")
        try:
            if kind in ("float", "int"):
                low, high = float(spec["low"]), float(spec["high"])
                step = None if spec.get("step") is None else float(spec["step"])
                is_log = bool(spec.get("log", False))
                if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                    raise ValueError(f"needs finite low <= high, got {low}, {high}")
                if is_log and (low <= 0 or step is not None):
                    raise ValueError("log needs low > 0 and no step")
                if kind == "int" and not (low.is_integer() and high.is_integer()):
                    raise ValueError(f"int bounds must be integers, got {low}, {high}")
                out[name] = Param(name, kind, low, high, is_log, step)
            elif kind == "categorical":
                values = list(spec["choices"])
                if not values:
                    raise ValueError("needs at least one choice")
                if isinstance(defaults[name], list):
                    values = [decode_label(v) if isinstance(v, str) else v for v in values]
                choices = {choice_label(v): copy.deepcopy(list(v) if isinstance(v, tuple) else v) for v in values}
                if len(choices) != len(values):
                    raise ValueError(f"choices must be distinct, got {values}")
                out[name] = Param(name, kind, choices=choices)
            else:
                raise ValueError(f"type must be float, int or categorical, got {kind!r}")
        except (KeyError, TypeError, ValueError) as err:
            detail = f"missing {err}" if isinstance(err, KeyError) else str(err)
            raise InputError(_TUNE_YAML, f"space.{name}: {detail}") from None
    return out


def suggest(trial: optuna.Trial, space: Mapping[str, Param]) -> dict[str, Any]:
    """Ask ``trial`` for every searched key; the classifier overrides (lists decoded, fixed keys included)."""
    out: dict[str, Any] = {}
    for name, p in space.items():
        if p.kind == "fixed":
            out[name] = copy.deepcopy(p.value)
        elif p.kind == "float":
            out[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            label = trial.suggest_categorical(name, list(p.choices))
            out[name] = copy.deepcopy(p.choices[label])
    return out


# -- the objective -----------------------------------------------------------------------------------------
@dataclass
class TuneData:
    """What every trial trains and validates on: cached features of two splits and the findings."""

    train: SplitData
    val: SplitData
    findings: tuple[str, ...]


def load_tune_data(prepared: str | Path, cache_folder: str | Path) -> TuneData:
    """The train and val splits of a prepared dataset from an existing feature cache (no model is loaded).

    ``functools.partial(load_tune_data, prepared, cache)`` is the picklable factory to give :func:`run_tune`
    so each worker process reads the cache itself instead of receiving the arrays through a pipe.
    """
    from hybridcxr.classify.cache import FeatureCache

    folder = Path(cache_folder)
    meta = read_json_or_none(folder / "meta.json")
    if not meta or "fingerprints" not in meta:
        raise InputError(folder, "not a feature cache (no meta.json): run `hybridcxr train classifier` first")
    cache = FeatureCache(folder, meta["fingerprints"])
    findings = dataset_findings(Path(prepared))
    return TuneData(load_split_data(Path(prepared), cache, findings, "train"),
                    load_split_data(Path(prepared), cache, findings, "val"), findings)


@dataclass
class Objective:
    """One trial: suggest overrides, train the head with per-epoch reports, return its best validation AUROC.

    Plain data only, so it pickles; a worker process may equally rebuild it from the same pieces. The overrides
    a trial trained with (the searched keys plus the tuning ``epochs`` and ``patience``) are stored in
    ``trial.user_attrs["config"]``, so the best trial can be reproduced exactly (:func:`export_best`).
    """

    data: TuneData
    base_config: dict[str, Any]
    space: dict[str, Param]
    epochs: int
    patience: int

    def __post_init__(self) -> None:
        missing = [k for k in self.space if k not in self.base_config]
        if missing:
            raise InputError(_TUNE_YAML, f"space keys {missing} are not in the base classifier config")

    def overrides(self, trial: optuna.Trial) -> dict[str, Any]:
        """The classifier overrides of ``trial``: its suggestions and the tuning epochs and patience."""
        return {"epochs": int(self.epochs), "patience": int(self.patience), **suggest(trial, self.space)}

    def __call__(self, trial: optuna.Trial) -> float:
        overrides = self.overrides(trial)
        trial.set_user_attr("config", overrides)
        config = {**self.base_config, **overrides}

        def report(epoch: int, auroc: float) -> None:
            trial.report(auroc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: validation macro AUROC {auroc:.4f}")

        result = train_head(self.data.train, self.data.val, self.data.findings, config, callback=report)
        trial.set_user_attr("best_epoch", result.best_epoch)
        return float(result.best_auroc)


# -- storage and study ---------------------------------------------------------------------------------------
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
    kind = str(settings["pruner"]).lower()
    warmup = int(settings["warmup_epochs"])
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(settings["startup_trials"]), n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(warmup, 1), max_resource=int(settings["epochs"]))
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise InputError(_TUNE_YAML, f"pruner must be median, hyperband or none, not {settings['pruner']!r}")


def worker_seed(seed: int, first_number: int, worker: int) -> int:
    """Sampler seed of one worker of one run: ``seed`` itself for the single worker of a fresh study.

    Workers and resumed runs get different seeds, so they do not repeat the random start-up trials.
    """
    return int(seed) + 1_000_003 * int(first_number) + 7919 * int(worker)


def open_study(url: str, study_name: str, settings: Mapping[str, Any], seed: int) -> optuna.Study:
    """Create the study (maximise validation macro AUROC) or load it where it exists, with this process's
    sampler (TPE, ``seed``) and pruner (neither is stored in the storage)."""
    storage = open_storage(url, int(settings["heartbeat_interval"]), int(settings["grace_period"]))
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
    failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return [n for n in running if n in failed]


def count_finished(study: optuna.Study) -> int:
    """Trials that count towards the requested total: COMPLETE or PRUNED."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class StopWhenTaken:
    """Stop a worker once finished trials plus the trials this run still has RUNNING reach ``n_trials``.

    :class:`optuna.study.MaxTrialsCallback` only counts finished trials, so a worker finishing while another is
    mid-trial starts one more, and the study usually overshoots. Counting the running trials of this run
    (numbers from ``first_number`` on: older RUNNING ones may belong to killed processes) avoids that, except
    when two workers finish at the same instant. A counted trial that ends FAIL either raises in its worker
    (the run fails with an error) or leaves its worker running to replace it; only a process killed mid-trial
    can leave the study short, and re-running completes it.
    """

    def __init__(self, n_trials: int, first_number: int) -> None:
        self.n_trials = int(n_trials)
        self.first_number = int(first_number)

    def taken(self, study: optuna.Study) -> bool:
        """Whether the finished trials and this run's running ones already make ``n_trials``."""
        trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        return sum(t.state != TrialState.RUNNING or t.number >= self.first_number for t in trials) >= self.n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.taken(study):
            study.stop()


@dataclass
class _Job:
    """What a worker process needs to join the study (all picklable)."""

    url: str
    study_name: str
    trials: int
    first_number: int
    seed: int
    settings: dict[str, Any]
    base_config: dict[str, Any]
    verbosity: int  # optuna's log level in the parent, kept in the workers
    threads: int = 1  # torch threads of each worker process: the cores shared out between the workers


def _work(job: _Job, data: TuneData | Callable[[], TuneData], worker: int, study: optuna.Study | None = None) -> None:
    """Run trials of the study until it holds ``job.trials`` finished ones."""
    tune_data = data() if callable(data) else data
    if study is None:
        study = open_study(job.url, job.study_name, job.settings, worker_seed(job.seed, job.first_number, worker))
    objective = Objective(tune_data, job.base_config, load_space(job.settings), int(job.settings["epochs"]),
                          int(job.settings["patience"]))
    budget = StopWhenTaken(job.trials, job.first_number)
    if budget.taken(study):  # a worker that started late finds the work done
        return
    study.optimize(objective, callbacks=[MaxTrialsCallback(job.trials, states=FINISHED), budget])


def _worker_main(job: _Job, data: TuneData | Callable[[], TuneData], worker: int) -> None:
    """Entry point of a spawned worker: its share of the cores as torch threads, its own storage."""
    import torch

    torch.set_num_threads(max(1, int(job.threads)))
    optuna.logging.set_verbosity(job.verbosity)
    _work(job, data, worker)


def run_tune(
    data: TuneData | Callable[[], TuneData], out_dir: str | Path, *, trials: int, storage: str | None = None,
    study_name: str | None = None, workers: int = 1, seed: int | None = None,
    tune_config: Mapping[str, Any] | None = None, base_config: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Create or continue the study until it holds ``trials`` finished (COMPLETE or PRUNED) trials.

    Args:
        data: the features, or a picklable factory of them (called once in each worker process).
        out_dir: run folder; the default storage is ``out_dir/study.db``.
        trials: total finished trials wanted; those already in the study count, FAIL ones do not.
        storage: any SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``); workers on other
            machines join by running the same call against the same URL.
        study_name: default ``tune.yaml``'s ``study``.
        workers: local worker processes (spawned; each opens its own storage connection and uses
            :func:`worker_threads` torch threads: the cores shared out, one each where workers >= cores). One
            worker runs in this process, with torch's own thread setting. A script calling this with
            ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard (spawned processes import the
            main module).
        seed: TPE sampler seed (default ``tune.yaml``'s ``sampler_seed``); see :func:`worker_seed`.
        tune_config: overrides of ``configs/tune.yaml`` (see :func:`tune_settings`).
        base_config: the classifier config every trial starts from (default ``configs/classifier.yaml``).

    Stale RUNNING trials are failed first (see the module doc). Each worker stops through
    :class:`optuna.study.MaxTrialsCallback` over COMPLETE and PRUNED trials, helped by :class:`StopWhenTaken`.
    The study then holds at least ``trials`` finished trials and at most ``trials + min(workers, left) - 1``
    (workers finishing at the same instant can each start one more); with one worker, and no other run on the
    same study at the same time, exactly ``trials``.
    Trial numbers stay unique and consecutive (the storage assigns them).
    """
    if trials < 1 or workers < 1:
        raise ValueError(f"trials and workers must be positive, got {trials} and {workers}")
    settings = tune_settings(tune_config)
    load_space(settings)  # a malformed space fails here, not in every worker
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    name = str(study_name or settings["study"])
    seed = int(settings["sampler_seed"] if seed is None else seed)
    study = open_study(url, name, settings, seed)
    first_number = len(study.get_trials(deepcopy=False))  # numbers from here on are this run's trials
    study.sampler = optuna.samplers.TPESampler(seed=worker_seed(seed, first_number, 0))
    stale = fail_stale_trials(study)
    if stale:
        log.warning("trials %s of study %r had no heartbeat for %ss (killed worker): marked FAIL",
                     stale, name, settings["grace_period"])
    left = trials - count_finished(study)
    if left <= 0:
        return study
    job = _Job(url, name, int(trials), first_number, seed, settings, dict(base_config or classifier_config()),
               optuna.logging.get_verbosity())
    n_workers = min(int(workers), left)
    if n_workers == 1:
        _work(job, data, 0, study)
    else:
        job.threads = worker_threads(n_workers)
        _run_workers(job, data, n_workers)
    return study


def worker_threads(n_workers: int) -> int:
    """Torch threads of each of ``n_workers`` worker processes: this process's cores shared out, at least one.

    A trial's matrices are small: threads beyond a worker's share of the cores only contend with the others.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(n_workers)))


def _run_workers(job: _Job, data: TuneData | Callable[[], TuneData], n_workers: int) -> None:
    """Start ``n_workers`` spawned processes on the study; wait for all; raise if any failed."""
    context = mp.get_context("spawn")  # a fresh interpreter: no inherited DB connection, torch or OpenMP state
    processes = [context.Process(target=_worker_main, args=(job, data, i), name=f"hybridcxr-tune-{i}")
                 for i in range(n_workers)]
    try:
        for p in processes:
            p.start()
        for p in processes:
            p.join()
    finally:
        for p in processes:  # interrupted: stop the others; their RUNNING trials fail via the heartbeat
            if p.is_alive():
                p.terminate()
                p.join()
    failed = [(p.name, p.exitcode) for p in processes if p.exitcode != 0]
    if failed:
        raise HybridCXRError(f"tuning workers failed (name, exit code): {failed}; their tracebacks are above")


# -- results -------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (YAML-safe and what the CLI writes)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def export_best(study: optuna.Study, out_dir: str | Path, base_config: Mapping[str, Any] | None = None) -> Path:
    """Write ``best_config.yaml``: the full classifier config of the best trial (base config + its overrides).

    Every key is one of ``configs/classifier.yaml`` and lists stay lists, so the file can be given to
    ``hybridcxr train classifier`` unchanged; it reproduces the best trial (same epochs, patience and seed).
    """
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise InputError(f"study {study.study_name}", "has no complete trial yet: nothing to export")
    best = study.best_trial
    overrides = best.user_attrs.get("config")
    if not isinstance(overrides, Mapping):
        raise InputError(f"study {study.study_name}", f"trial {best.number} holds no classifier config "
                                                      "(user attribute 'config'): was it run by hybridcxr tune?")
    config = classifier_config({**_plain(dict(base_config or classifier_config())), **overrides})
    header = (f"# Best trial {best.number} of Optuna study {study.study_name!r}: validation macro AUROC "
              f"{best.value:.4f} (epoch {best.user_attrs.get('best_epoch', '?')}).\n"
              "# A full configs/classifier.yaml: train with it as is to reproduce that trial.\n")
    return write_text(Path(out_dir) / "best_config.yaml", header + yaml.safe_dump(_plain(config), sort_keys=False))


def _can_rank_importances(study: optuna.Study) -> bool:
    """Parameter importances need two complete trials and a parameter that took two values among them."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return False
    names = set.intersection(*(set(t.params) for t in complete))
    return any(len({repr(t.params[n]) for t in complete}) > 1 for n in names)


def write_study_report(study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """A static report of the study in ``out_dir``; returns the files written.

    PNGs (optuna.visualization.matplotlib): optimisation history, per-epoch validation AUROC of every trial,
    parallel coordinates and, where they can be ranked, parameter importances. Where plotly is installed,
    the interactive versions as self-contained HTML (plotly.js inlined). Always ``study.html`` (the PNGs
    embedded, the top trials as a table; no network needed) and ``trials.csv``.
    """
    import optuna.visualization.matplotlib as vm

    from hybridcxr.report.plots import _pyplot, _save

    _pyplot()  # headless backend before optuna touches pyplot
    out = Path(out_dir)
    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "optimization_history": vm.plot_optimization_history,
        "intermediate_values": vm.plot_intermediate_values,
        "parallel_coordinate": vm.plot_parallel_coordinate,
    }
    if _can_rank_importances(study):
        plots["param_importances"] = vm.plot_param_importances
    written: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # cosmetic: e.g. a flat axis when one trial is complete
        for name, plot in plots.items():
            figure = plot(study).figure
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            written.append(_save(figure, out / f"{name}.png"))
        interactive = _write_plotly(study, out, list(plots))
    written += interactive
    written.append(write_csv(out / "trials.csv", study.trials_dataframe()))
    written.append(write_text(out / "study.html", _study_html(study, [p for p in written if p.suffix == ".png"],
                                                                 interactive)))
    return written


def _write_plotly(study: optuna.Study, out: Path, names: list[str]) -> list[Path]:
    """The plotly versions of the named plots as standalone HTML; none where plotly is not installed."""
    import optuna.visualization as vp

    if not vp.is_available():
        return []
    written = []
    for name in names:
        figure = getattr(vp, f"plot_{name}")(study)
        with atomic_path(out / f"{name}.html") as tmp:
            figure.write_html(str(tmp), include_plotlyjs=True, full_html=True)
        written.append(out / f"{name}.html")
    return written


def _study_html(study: optuna.Study, pngs: list[Path], interactive: list[Path], top: int = 10) -> str:
    """One self-contained page: state counts, the PNGs (inline), links to interactive plots, the top trials."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)
    names = sorted({k for t in complete[:top] for k in t.params})
    rows = []
    for t in complete[:top]:
        seconds = t.duration.total_seconds() if t.duration is not None else float("nan")
        cells = [str(t.number), f"{t.value:.4f}", str(t.user_attrs.get("best_epoch", "")), f"{seconds:.1f}"]
        cells += [_cell(t.params.get(k, "")) for k in names]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", "val macro AUROC", "best epoch", "seconds", *names])
    images = "".join(
        f'<h2>{html.escape(p.stem.replace("_", " "))}</h2><img alt="{html.escape(p.stem)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in pngs)
    links = "".join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.stem)}</a></li>' for p in interactive)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Optuna study {html.escape(study.study_name)}</title><style>"
        "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right} img{max-width:100%}</style></head><body>"
        f"<h1>Optuna study {html.escape(study.study_name)}</h1>"
        f"<p>{html.escape(', '.join(f'{v} {k}' for k, v in counts.items()) or 'no trials')}</p>"
        + (f"<h2>Interactive plots</h2><ul>{links}</ul>" if links else "")
        + f"<h2>Top {min(top, len(complete))} complete trials</h2><table><tr>{head}</tr>{''.join(rows)}</table>"
        + images + "</body></html>\n"
    )


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- dashboard -----------------------------------------------------------------------------------------------
def dashboard_command(storage: str, host: str = "127.0.0.1", port: int = 8080) -> list[str]:
    """The optuna-dashboard command line: its console script beside this Python, else its module."""
    script = Path(sys.executable).parent / "optuna-dashboard"
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "optuna_dashboard._cli"]
    return [*launcher, storage, "--host", host, "--port", str(int(port))]


def start_dashboard(storage: str, host: str = "127.0.0.1", port: int = 8080) -> subprocess.Popen:
    """Launch optuna-dashboard on ``storage`` (it reads the study live); stop it with ``.terminate()``."""
    return subprocess.Popen(dashboard_command(storage, host, port))


def dashboard_url(host: str = "127.0.0.1", port: int = 8080) -> str:
    """The dashboard's address (IPv6 hosts bracketed)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{int(port)}/"


def wait_until_up(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers HTTP 200; raise TimeoutError after ``timeout`` s, or HybridCXRError at
    once if ``process`` (the server) exits. Proxies are bypassed: the server is local."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise HybridCXRError(f"the server for {url} exited with code {process.returncode}")
        try:
            with opener.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer HTTP 200 within {timeout:.0f} s")
        time.sleep(0.2)


def tune_fusion(data: str | Path, detector: str | Path, out_dir: str | Path, *, trials: int, storage: str | None = None,
                study_name: str | None = None, workers: int = 1, overrides: Mapping[str, Any] | None = None,
                progress: bool = True) -> str:
    """The ``hybridcxr tune`` job: cache features, run the study, export the best config, write the report.

    The run folder keeps the CNN the features came from (``backbone.safetensors``) and the exported
    ``best_config.yaml`` points at it and at the cache, so ``train classifier --config best_config.yaml``
    trains on exactly the features the trials saw. Returns a summary for the terminal.
    """
    from functools import partial

    from hybridcxr.classify.train import cache_features, open_models

    prepared, out = Path(data), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone_file = out / "backbone.safetensors"
    config = classifier_config(overrides)
    det, backbone = open_models(detector, config, backbone_file)
    if not backbone_file.is_file():
        backbone.save(backbone_file)
    cache_features(prepared, det, backbone, out / "features", progress)
    del det, backbone
    base = {**config, "backbone_weights": str(backbone_file.resolve()), "cache": str((out / "features").resolve())}
    study = run_tune(partial(load_tune_data, prepared, out / "features"), out, trials=trials, storage=storage,
                     study_name=study_name, workers=workers, base_config=base)
    best = export_best(study, out, base)
    report = write_study_report(study, out / "study-report")
    finished = count_finished(study)
    return (f"Study {study.study_name!r}: {finished} finished trials, best validation macro AUROC "
            f"{study.best_value:.4f} (trial {study.best_trial.number})\n"
            f"best config: {best}\nreport: {report[0].parent if report else out / 'study-report'}\n"
            f"train it: hybridcxr train classifier --data {prepared} --detector {detector} --out RUN --config {best}")
