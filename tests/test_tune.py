"""Optuna tuning of the fusion head on small synthetic features: workers, resume, SIGKILL, export, report, dashboard.

Two tests need services that `.ci/run` provides: a PostgreSQL server (its SQLAlchemy URL in
``HYBRIDCXR_TEST_POSTGRES_URL``) and Debian's headless Chromium. Elsewhere they skip with the reason; under
``CI=true`` they fail instead, so CI cannot pass without running them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from _services import CHROMIUM_FLAGS, missing_service
from optuna.trial import TrialState

from hybridcxr.classify.cache import FeatureCache
from hybridcxr.classify.train import SplitData, classifier_config, train_head
from hybridcxr.config import CONFIG_DIR
from hybridcxr.errors import InputError
from hybridcxr.tune import (
    FINISHED,
    TuneData,
    dashboard_url,
    default_storage,
    export_best,
    load_space,
    load_tune_data,
    open_storage,
    run_tune,
    start_dashboard,
    suggest,
    tune_settings,
    wait_until_up,
    worker_threads,
    write_study_report,
)

FINDINGS = ("Cardiomegaly", "Pleural effusion", "Nodule/Mass")
#: Trials of a few tenths of a second; heartbeats every second, a trial stale after 3 s without one.
TUNE = {"epochs": 5, "patience": 5, "warmup_epochs": 2, "startup_trials": 2, "heartbeat_interval": 1,
        "grace_period": 3, "study": "test-fusion"}
BASE = {"device": "cpu"}
N = 6
POSTGRES_ENV = "HYBRIDCXR_TEST_POSTGRES_URL"
def synthetic_split(n: int, rng: np.random.Generator, prefix: str) -> SplitData:
    """``n`` images: 16-d yolo and 32-d cnn features, the first three dims of each shifted by the labels."""
    labels = (rng.random((n, len(FINDINGS))) < [0.35, 0.25, 0.2]).astype(float)
    cnn = rng.normal(size=(n, 32)).astype(np.float32)
    cnn[:, :3] += 1.5 * labels
    yolo = rng.normal(size=(n, 16)).astype(np.float32)
    yolo[:, :3] += 1.0 * labels
    age = rng.uniform(20, 90, n)
    age[::10] = np.nan
    sex: list = [str(s) for s in rng.choice(["M", "F"], n)]
    sex[::7] = [None] * len(sex[::7])
    return SplitData([f"{prefix}{i}" for i in range(n)], {"yolo": yolo, "cnn": cnn}, age, sex, labels)


def synthetic_data(seed: int = 0) -> TuneData:
    """200 training and 80 validation images (module-level: picklable for worker processes)."""
    rng = np.random.default_rng(seed)
    return TuneData(synthetic_split(200, rng, "t"), synthetic_split(80, rng, "v"), FINDINGS)


def load(url: str, name: str = "test-fusion") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, 1, 3))


def assert_numbers_consecutive(study: optuna.Study) -> None:
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    assert sorted(numbers) == list(range(len(numbers)))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny heads train several times faster on one thread than on two contended ones (as each worker does)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> TuneData:
    return synthetic_data()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, data):
    """A study of N trials made by two worker processes on one SQLite file."""
    out = tmp_path_factory.mktemp("tune")
    run_tune(data, out, trials=N, workers=2, tune_config=TUNE, base_config=classifier_config(BASE))
    return out, default_storage(out)


# -- search space ------------------------------------------------------------------------------------------
def test_space_labels_decode_to_classifier_overrides():
    space = load_space(tune_settings())
    trial = optuna.trial.FixedTrial({"lr": 3e-3, "weight_decay": 1e-5, "hidden": "512-128", "dropout": 0.1,
                                     "layer_norm": True, "groups": "cnn+age+sex", "pos_weight": "sqrt-inverse",
                                     "loss": "focal", "batch_size": 128, "head": "gcn"})
    overrides = suggest(trial, space)
    assert overrides["hidden"] == [512, 128] and overrides["groups"] == ["cnn", "age", "sex"]
    assert overrides["pos_weight"] == "sqrt-inverse" and overrides["layer_norm"] is True
    assert classifier_config(overrides)["hidden"] == [512, 128] and classifier_config(overrides).head == "gcn"
    assert set(space["head"].choices) == {"mlp", "gcn"}
    assert all(isinstance(label, (str, int, float, bool)) or label is None
               for p in space.values() if p.kind == "categorical" for label in p.choices)
    assert "none" in space["hidden"].choices and space["hidden"].choices["none"] == []


def test_space_fixed_keys_string_labels_and_errors():
    space = load_space({"space": {"hidden": {"type": "categorical", "choices": ["256-64", "none"]}, "lr": 1e-3,
                                  "groups": "yolo+cnn"}})
    trial = optuna.trial.FixedTrial({"hidden": "256-64"})
    assert suggest(trial, space) == {"hidden": [256, 64], "lr": 1e-3, "groups": ["yolo", "cnn"]}
    with pytest.raises(InputError, match="'learning_rate' is not a key"):
        load_space({"space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    with pytest.raises(InputError, match="space.lr: log needs low > 0"):
        load_space({"space": {"lr": {"type": "float", "low": 0, "high": 1, "log": True}}})
    with pytest.raises(InputError, match="space.dropout: missing 'high'"):
        load_space({"space": {"dropout": {"type": "float", "low": 0}}})
    with pytest.raises(InputError, match="choices must be distinct"):
        load_space({"space": {"hidden": {"type": "categorical", "choices": [[256, 64], "256-64"]}}})


# -- workers, resume, kill -----------------------------------------------------------------------------------
def test_two_workers_fill_the_study_and_a_rerun_continues_it(two_workers, data):
    out, url = two_workers
    study = load(url)
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    # Documented bound: at least N, at most N + workers - 1 (two workers finishing at the same instant).
    assert N <= len(finished) <= N + 1
    assert len(finished) == len(study.trials), [t.state for t in study.trials]  # no FAIL, no RUNNING left
    assert_numbers_consecutive(study)
    assert (out / "study.db").is_file()
    config = study.trials[0].user_attrs["config"]
    assert config["epochs"] == 5 and isinstance(config["hidden"], list)
    assert all(len(t.intermediate_values) >= 1 for t in finished)

    # The same call with a larger total continues this study (one worker: exactly the total).
    run_tune(data, out, trials=N + 3, tune_config=TUNE, base_config=classifier_config(BASE))
    study = load(url)
    assert len(study.get_trials(deepcopy=False, states=FINISHED)) == N + 3 == len(study.trials)
    assert_numbers_consecutive(study)
    # ... and once the total is reached, re-running adds nothing.
    before = [(t.number, t.state) for t in study.trials]
    run_tune(data, out, trials=N + 3, tune_config=TUNE, base_config=classifier_config(BASE))
    assert [(t.number, t.state) for t in load(url).trials] == before


def test_workers_share_the_cores_out_as_torch_threads():
    cores = len(os.sched_getaffinity(0))
    assert worker_threads(1) == cores and worker_threads(cores) == 1 and worker_threads(10 * cores) == 1
    assert worker_threads(2) == max(1, cores // 2)


KILL_SCRIPT = """
import importlib.util, os, sys, time
sys.path.insert(0, os.path.dirname({test_file!r}))  # the helpers beside the test module (_services)
spec = importlib.util.spec_from_file_location("tune_test", {test_file!r})
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
import hybridcxr.tune as tune
import hybridcxr.tune.objective as objective
from hybridcxr.classify.train import classifier_config

real, calls = objective.train_head, []

def slow_third_trial(train, val, findings, config, callback=None, checkpoint=None):
    calls.append(1)
    if len(calls) <= 2:
        return real(train, val, findings, config, callback=callback, checkpoint=checkpoint)
    callback(1, 0.5)  # one epoch reported, then "training" until killed
    time.sleep(600)

objective.train_head = slow_third_trial
tune.run_tune(tests.synthetic_data, {out!r}, trials=4, tune_config=tests.TUNE,
              base_config=classifier_config(tests.BASE))
"""


def _reported_third_trial(db: Path) -> int | None:
    """The number of the RUNNING trial that reported an epoch once two trials finished, read from the SQLite
    file in read-only mode (optuna's storage constructor writes its schema version: it would race the child)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            states = dict(con.execute("SELECT number, state FROM trials").fetchall())
            reported = {n for (n,) in con.execute(
                "SELECT DISTINCT t.number FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id")}
    except sqlite3.Error:  # tables not created yet, or locked for a moment
        return None
    if sum(state in ("COMPLETE", "PRUNED") for state in states.values()) != 2:
        return None
    return next((n for n, state in states.items() if state == "RUNNING" and n in reported), None)


def test_sigkilled_trial_becomes_fail_and_the_rerun_completes(tmp_path, data, caplog):
    out = tmp_path / "run"
    script = tmp_path / "kill_me.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT.format(test_file=__file__, out=str(out))))
    url = default_storage(out)
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        running = None
        deadline = time.monotonic() + 90
        while running is None:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no trial started reporting in time"
            time.sleep(0.3)
            if (out / "study.db").is_file():
                running = _reported_third_trial(out / "study.db")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    study = load(url)
    assert running == 2 and study.trials[2].state == TrialState.RUNNING
    assert len(study.get_trials(deepcopy=False, states=FINISHED)) == 2
    best = yaml.safe_load((out / "best_config.yaml").read_text())  # kept up to date as trials finished
    assert best["epochs"] == TUNE["epochs"] and "lr" in best

    time.sleep(TUNE["grace_period"] + 2)  # the heartbeat (second resolution in SQLite) is now stale
    with caplog.at_level(logging.WARNING, logger="hybridcxr.tune"):
        run_tune(synthetic_data, out, trials=4, tune_config=TUNE, base_config=classifier_config(BASE))
    assert "trials [2]" in caplog.text and "marked FAIL" in caplog.text  # failed by run_tune's own check
    study = load(url)
    assert study.trials[2].state == TrialState.FAIL
    assert len(study.get_trials(deepcopy=False, states=FINISHED)) == 4
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert_numbers_consecutive(study)
    assert len(study.trials) == 5


def test_a_trial_killed_before_its_first_heartbeat_is_failed_too(tmp_path):
    """optuna leaves a RUNNING trial without a heartbeat row alone forever; fail_stale_trials does not."""
    from hybridcxr.tune.storage import fail_stale_trials, open_study

    settings = tune_settings({**TUNE, "grace_period": 1})
    study = open_study(default_storage(tmp_path), "no-beat", settings, seed=0)
    study.ask()  # created RUNNING, as by a worker killed before its heartbeat thread started
    assert fail_stale_trials(study) == []  # within the grace period: may still be starting
    time.sleep(1.5)
    assert fail_stale_trials(study) == [0]
    assert study.trials[0].state == TrialState.FAIL


# -- PostgreSQL storage -------------------------------------------------------------------------------------
@pytest.fixture
def postgres_url() -> str:
    """The SQLAlchemy URL of a PostgreSQL database the test may write to (``.ci/run`` starts a server)."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if not url:
        missing_service(f"no PostgreSQL server: set {POSTGRES_ENV} (.ci/run starts one)")
    return url


@pytest.mark.slow
def test_a_study_on_postgresql_with_two_workers_and_a_resume(postgres_url, tmp_path, data):
    """The same code path as on SQLite (`hybridcxr tune --storage postgresql+psycopg://...`): two worker
    processes fill the study in the server, a second run continues it; the study is dropped afterwards."""
    name = f"test-fusion-pg-{uuid.uuid4().hex[:12]}"  # never collides with an earlier or concurrent run
    try:
        run_tune(data, tmp_path, trials=N, storage=postgres_url, study_name=name, workers=2, tune_config=TUNE,
                 base_config=classifier_config(BASE))
        assert name in optuna.get_all_study_names(postgres_url)
        assert not (tmp_path / "study.db").exists(), "the study went to SQLite, not to PostgreSQL"
        study = load(postgres_url, name)
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        assert N <= len(finished) <= N + 1 and len(finished) == len(study.trials), [t.state for t in study.trials]
        assert_numbers_consecutive(study)
        assert all(t.intermediate_values and t.user_attrs["config"]["epochs"] == TUNE["epochs"] for t in finished)

        total = len(finished) + 2
        run_tune(data, tmp_path, trials=total, storage=postgres_url, study_name=name, tune_config=TUNE,
                 base_config=classifier_config(BASE))
        study = load(postgres_url, name)
        assert len(study.get_trials(deepcopy=False, states=FINISHED)) == total == len(study.trials)
        assert_numbers_consecutive(study)
        assert export_best(study, tmp_path, classifier_config(BASE)).is_file()
    finally:
        storage = open_storage(postgres_url, None, None)
        if name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)
        storage.engine.dispose()
    assert name not in optuna.get_all_study_names(postgres_url)


# -- results -------------------------------------------------------------------------------------------------
def test_export_best_is_a_full_classifier_config_that_reproduces_the_trial(two_workers, data, tmp_path):
    _, url = two_workers
    study = load(url)
    path = export_best(study, tmp_path, classifier_config(BASE))
    exported = yaml.safe_load(path.read_text())
    keys = set(yaml.safe_load((CONFIG_DIR / "classifier.yaml").read_text()))
    assert set(exported) == keys
    assert classifier_config(exported) == exported
    best = study.best_trial
    assert {k: exported[k] for k in best.user_attrs["config"]} == best.user_attrs["config"]
    assert isinstance(exported["hidden"], list) and isinstance(exported["groups"], list)
    assert exported["device"] == "cpu" and exported["epochs"] == TUNE["epochs"]
    result = train_head(data.train, data.val, data.findings, exported)
    assert result.best_auroc == pytest.approx(best.value, abs=1e-6)  # same seed, one thread: the same run


def test_export_best_refuses_a_study_without_complete_trials():
    with pytest.raises(InputError, match="no complete trial"):
        export_best(optuna.create_study(direction="maximize"), Path("unused"))


def test_study_report_writes_pngs_csv_and_an_offline_page(two_workers, tmp_path):
    _, url = two_workers
    study = load(url)
    written = write_study_report(study, tmp_path)
    names = {p.name for p in written}
    for name in ("optimization_history.png", "intermediate_values.png", "parallel_coordinate.png",
                 "param_importances.png", "trials.csv", "study.html"):
        assert name in names and (tmp_path / name).is_file(), name
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png.name
    page = (tmp_path / "study.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "http" not in page
    assert f"<td>{study.best_trial.number}</td><td>{study.best_value:.4f}</td>" in page
    assert len((tmp_path / "trials.csv").read_text().strip().splitlines()) == len(study.trials) + 1


def test_study_report_skips_importances_that_cannot_be_ranked(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-2), n_trials=1)
    names = {p.name for p in write_study_report(study, tmp_path)}
    assert "param_importances.png" not in names and "optimization_history.png" in names


def test_dashboard_serves_the_study_on_localhost(two_workers):
    _, url = two_workers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = start_dashboard(url, port=port)
    try:
        address = dashboard_url(port=port)
        assert address == f"http://127.0.0.1:{port}/"
        wait_until_up(address, timeout=60, process=process)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(address, timeout=10) as response:
            assert response.status == 200
        with opener.open(address + "api/studies", timeout=10) as response:
            assert "test-fusion" in json.dumps(json.loads(response.read()))
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert process.returncode is not None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium (``HYBRIDCXR_TEST_CHROMIUM`` may name another build); checked before the study is made."""
    path = os.environ.get("HYBRIDCXR_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        missing_service("no Chromium: install Debian's chromium (.ci/run does: apt-get install chromium)")
    return path


@pytest.mark.slow
def test_headless_chromium_renders_the_dashboard_with_the_study(chromium, two_workers, tmp_path):
    """`hybridcxr dashboard`, rendered by a real browser: optuna-dashboard is a React app, so the study's name is
    only in the page once its JavaScript ran and fetched the study list. The server is stopped by its PID (the
    one the command prints), and the command then exits."""
    _, url = two_workers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}  # the pid line at once, on one line
    command = [sys.executable, "-m", "hybridcxr.cli", "dashboard", "--storage", url, "--port", str(port)]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    server_pid = None
    try:
        lines = []
        for line in cli.stdout:  # the command prints its address and the server's PID once the server answers
            lines.append(line)
            match = re.search(r"Optuna dashboard: (\S+) \(pid (\d+);", line)
            if match:
                address, server_pid = match[1], int(match[2])
                break
        assert server_pid is not None, "".join(lines)[-3000:]
        assert address == dashboard_url(port=port) and server_pid != cli.pid
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(address, timeout=10) as response:
            assert b"test-fusion" not in response.read()  # not in the served HTML: only in the rendered DOM
        profile = tmp_path / "chromium-profile"
        profile.mkdir()
        browser = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                                    "--virtual-time-budget=15000", address],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            dom, errors = browser.communicate(timeout=120)
        finally:
            if browser.poll() is None:  # hung: stop its process group (renderers included)
                os.killpg(browser.pid, signal.SIGKILL)
                browser.wait()
        assert browser.returncode == 0, errors.decode(errors="replace")[-3000:]
        page = dom.decode()
        assert "<html" in page and "test-fusion" in page, page[-3000:]

        os.kill(server_pid, signal.SIGTERM)  # the server, by its PID
        assert cli.wait(timeout=30) == 0  # `hybridcxr dashboard` returns once its server is gone
    finally:
        if cli.poll() is None:
            if server_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server_pid, signal.SIGKILL)
            cli.kill()
            cli.wait()
        cli.stdout.close()
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)  # gone (the command reaped it)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the dashboard's port still answers"


def test_load_tune_data_reads_a_prepared_dataset_and_its_cache(tmp_path):
    import pandas as pd

    prepared, cache = tmp_path / "prepared", tmp_path / "features"
    prepared.mkdir()
    (prepared / "data.yaml").write_text(yaml.safe_dump({"names": {i: f for i, f in enumerate(FINDINGS)}}))
    ids = [f"img{i}" for i in range(6)]
    pd.DataFrame({"image_id": ids, "split": ["train"] * 4 + ["val"] * 2, "age_years": [50, None, 60, 70, 40, 30],
                  "sex": ["M", "F", None, "M", "F", "M"], **{f: [0, 1, 0, 1, 1, 0] for f in FINDINGS}}
                 ).to_csv(prepared / "manifest.csv", index=False)
    rng = np.random.default_rng(0)
    FeatureCache(cache, {"detector": "d", "backbone": "b"}).add(ids, {"yolo": rng.normal(size=(6, 8)), "cnn": rng.normal(size=(6, 4))})
    loaded = load_tune_data(prepared, cache)
    assert loaded.findings == (*FINDINGS, "No finding"), "the classifier also learns the normal/abnormal output"
    assert loaded.train.image_ids == ids[:4] and loaded.val.image_ids == ids[4:]
    assert loaded.train.features["yolo"].shape == (4, 8) and loaded.val.features["cnn"].shape == (2, 4)
    assert loaded.train.sex[2] is None and np.isnan(loaded.train.age_years[1])
    with pytest.raises(InputError, match="not a feature cache"):
        load_tune_data(prepared, tmp_path / "nowhere")


def test_tune_cli_then_train_with_the_best_config(tiny_detector, tmp_path):
    """`hybridcxr tune` caches features, runs trials, exports a config `train classifier --config` takes as is."""
    from typer.testing import CliRunner

    from hybridcxr.cli import app

    _, folder, _ = tiny_detector
    runner = CliRunner()
    out = tmp_path / "tune"
    result = runner.invoke(app, ["tune", "--data", str(folder / "prepared"), "--detector", str(folder / "run"),
                                 "--out", str(out), "--trials", "3", "--no-progress", "backbone_size=64"])
    assert result.exit_code == 0, result.output
    assert "3 finished trials" in result.output
    assert (out / "study.db").is_file() and (out / "best_config.yaml").is_file()
    assert (out / "study-report" / "trials.csv").is_file()
    chunks = sorted((out / "features").glob("chunk_*.safetensors"))
    result = runner.invoke(app, ["train", "classifier", "--data", str(folder / "prepared"), "--detector",
                                 str(folder / "run"), "--out", str(tmp_path / "cls"), "--config",
                                 str(out / "best_config.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted((out / "features").glob("chunk_*.safetensors")) == chunks, "the tuned features were reused"


def test_tune_features_from_a_classifier_run_reuses_its_cache(tiny_detector, tmp_path, monkeypatch):
    """`tune --features-from RUN` starts from the run's CNN and feature cache: no image is embedded again."""
    from typer.testing import CliRunner

    import hybridcxr.classify.cache as cache_module
    from hybridcxr.cli import app

    _, folder, _ = tiny_detector
    runner = CliRunner()
    cls = tmp_path / "cls"
    result = runner.invoke(app, ["train", "classifier", "--data", str(folder / "prepared"), "--detector",
                                 str(folder / "run"), "--out", str(cls), "--no-progress", "backbone_size=64"])
    assert result.exit_code == 0, result.output

    def no_embedding(*_args, **_kwargs):
        raise AssertionError("features were computed again")

    monkeypatch.setattr(cache_module, "_vectors", no_embedding)
    out = tmp_path / "tune"
    args = ["tune", "--data", str(folder / "prepared"), "--detector", str(folder / "run"), "--out", str(out),
            "--trials", "2", "--no-progress", "--features-from", str(cls), "backbone_size=64"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 finished trials" in result.output
    assert sorted(p.name for p in (out / "features").glob("chunk_*")) == sorted(p.name for p in (cls / "features").glob("chunk_*"))
    result = runner.invoke(app, [*args[:-3], "--out", str(tmp_path / "bad"), "--features-from", str(tmp_path)])
    assert result.exit_code != 0 and "--features-from must name a run" in result.output
