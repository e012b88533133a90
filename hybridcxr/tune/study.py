"""Running a study: :func:`run_tune` and its worker processes, each trial budget-checked against the study.

Resuming and crashes:

- **Re-running continues the study.** :func:`run_tune` runs ``trials`` minus the trials already COMPLETE or
  PRUNED (FAIL ones do not count), so the same command after an interruption finishes the job, and a larger
  ``trials`` extends it.
- **A killed worker's trial becomes FAIL, not a ghost.** The storage records a heartbeat of every running
  trial (``heartbeat_interval`` seconds, in ``tune.yaml``); a RUNNING trial whose heartbeat is older than
  ``grace_period`` belongs to a dead process. Optuna marks such trials FAIL before each new trial, and
  :func:`run_tune` also does so explicitly when it starts (:func:`~hybridcxr.tune.storage.fail_stale_trials`),
  before it counts what is left to run. A trial killed less than ``grace_period`` ago still looks alive: it
  stays RUNNING until a later check (the next trial of this or any run, or the next run) finds its heartbeat
  stale.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from hybridcxr.classify.train import classifier_config
from hybridcxr.errors import HybridCXRError
from hybridcxr.tune.export import export_best
from hybridcxr.tune.objective import Objective, TuneData
from hybridcxr.tune.space import load_space, tune_settings
from hybridcxr.tune.storage import FINISHED, count_finished, default_storage, fail_stale_trials, open_study

log = logging.getLogger("hybridcxr.tune")  # the package's logger, as before it was split into modules


def worker_seed(seed: int, first_number: int, worker: int) -> int:
    """Sampler seed of one worker of one run: ``seed`` itself for the single worker of a fresh study.

    Workers and resumed runs get different seeds, so they do not repeat the random start-up trials.
    """
    return int(seed) + 1_000_003 * int(first_number) + 7919 * int(worker)


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


class ExportBest:
    """Optuna callback: after each trial that becomes the study's best, rewrite ``best_config.yaml`` (atomically),
    so a run killed part-way still leaves the best configuration of the trials that did finish."""

    def __init__(self, out_dir: str | Path, base_config: Mapping[str, Any]) -> None:
        self.out_dir, self.base_config = Path(out_dir), base_config

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE and study.best_trial.number == trial.number:
            export_best(study, self.out_dir, self.base_config)


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
    out: str = ""  # the run folder: best_config.yaml is kept up to date there as trials finish
    threads: int = 1  # torch threads of each worker process: the cores shared out between the workers


def _work(job: _Job, data: TuneData | Callable[[], TuneData], worker: int, study: optuna.Study | None = None) -> None:
    """Run trials of the study until it holds ``job.trials`` finished ones."""
    tune_data = data() if callable(data) else data
    if study is None:
        study = open_study(job.url, job.study_name, job.settings, worker_seed(job.seed, job.first_number, worker))
    objective = Objective(tune_data, job.base_config, load_space(job.settings), job.settings["epochs"],
                          job.settings["patience"])
    budget = StopWhenTaken(job.trials, job.first_number)
    if budget.taken(study):  # a worker that started late finds the work done
        return
    callbacks = [MaxTrialsCallback(job.trials, states=FINISHED), budget]
    if job.out:
        callbacks.append(ExportBest(job.out, job.base_config))
    study.optimize(objective, callbacks=callbacks)


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
               optuna.logging.get_verbosity(), out=str(out))
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
    from hybridcxr.device import cpu_threads

    return max(1, cpu_threads() // max(1, int(n_workers)))


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
