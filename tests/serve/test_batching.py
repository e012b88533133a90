"""Requests that arrive together run as one batch: the batcher alone (no model), then the service through HTTP."""

from __future__ import annotations

import io
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve.test_api import app_factory, assert_error, post
from starlette.exceptions import StarletteDeprecationWarning

from hybridcxr.serve.batching import DEFAULT_BATCH_WINDOW_MS, DEFAULT_MAX_BATCH, Batcher, check_batching

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

LONG_MS = 3000  # a window no batch in these tests waits out: it closes when max_batch items are in


def _together(call, items) -> list:
    """``call(item)`` for every item from its own thread, all started at once; the answers (or exceptions)."""
    answers: list = [None] * len(items)

    def one(index: int) -> None:
        try:
            answers[index] = call(items[index])
        except Exception as err:  # noqa: BLE001 - the test looks at it
            answers[index] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def _doubling(calls: list[list[int]]):
    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if -1 in items:
            raise ValueError("minus one is refused")
        return [2 * item for item in items]

    return run


# -- the batcher ------------------------------------------------------------------------------------------------
def test_items_submitted_together_run_as_one_batch_and_get_their_own_answers():
    calls: list[list[int]] = []
    batcher = Batcher(_doubling(calls), window_ms=LONG_MS, max_batch=6)
    started = time.monotonic()
    assert _together(batcher.submit, list(range(6))) == [0, 2, 4, 6, 8, 10]
    assert [sorted(c) for c in calls] == [list(range(6))] and batcher.sizes == {6: 1}
    assert time.monotonic() - started < LONG_MS / 1000, "a full batch runs at once, without waiting out its window"
    assert batcher.stats() == {"batches": 1, "images": 6, "largest": 6, "max_batch": 6, "window_ms": LONG_MS}


def test_max_batch_one_runs_one_at_a_time():
    calls: list[list[int]] = []
    batcher = Batcher(_doubling(calls), window_ms=LONG_MS, max_batch=1)
    assert _together(batcher.submit, [1, 2, 3, 4]) == [2, 4, 6, 8]
    assert sorted(calls) == [[1], [2], [3], [4]] and batcher.sizes == {1: 4}


def test_the_window_waits_for_more_and_no_longer():
    calls: list[list[int]] = []
    batcher = Batcher(_doubling(calls), window_ms=400, max_batch=8)
    started = time.monotonic()
    assert batcher.submit(5) == 10
    assert time.monotonic() - started >= 0.4, "alone, an item waits out the window for company"
    early = threading.Thread(target=batcher.submit, args=(1,))
    early.start()
    time.sleep(0.05)  # well inside the window: the second item joins the first's batch
    assert batcher.submit(2) == 4
    early.join()
    assert calls[1:] == [[1, 2]]
    calls.clear()
    zero = Batcher(_doubling(calls), window_ms=0, max_batch=8)
    started = time.monotonic()
    assert zero.submit(3) == 6 and time.monotonic() - started < 0.4 and calls == [[3]]


def test_an_item_arriving_after_its_batch_started_goes_in_the_next():
    entered, release, calls = threading.Event(), threading.Event(), []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        entered.set()
        release.wait(timeout=30)
        return items

    batcher = Batcher(run, window_ms=0, max_batch=8)
    first = threading.Thread(target=batcher.submit, args=(1,))
    first.start()
    assert entered.wait(timeout=30)
    assert batcher.busy
    later = threading.Thread(target=batcher.submit, args=(2,))
    later.start()
    time.sleep(0.1)
    release.set()
    first.join(timeout=30)
    later.join(timeout=30)
    assert calls == [[1], [2]] and not batcher.busy


def test_a_failing_item_fails_alone_with_its_own_error():
    calls: list[list[int]] = []
    batcher = Batcher(_doubling(calls), window_ms=LONG_MS, max_batch=4)
    answers = _together(batcher.submit, [1, -1, 3, 4])
    assert answers[0] == 2 and answers[2:] == [6, 8]
    assert isinstance(answers[1], ValueError) and "minus one" in str(answers[1])
    assert answers[1].__traceback__ is not None, "the traceback travels with it (the service logs where it arose)"
    assert sorted(calls[0]) == [-1, 1, 3, 4] and sorted(calls[1:]) == [[-1], [1], [3], [4]], "re-run alone"


def test_drain_finishes_the_queue_and_the_worker_ends():
    calls: list[list[int]] = []
    batcher = Batcher(_doubling(calls), window_ms=LONG_MS, max_batch=8)
    waiting = [threading.Thread(target=batcher.submit, args=(i,)) for i in range(3)]
    for thread in waiting:
        thread.start()
    time.sleep(0.2)  # queued, inside the long window
    started = time.monotonic()
    batcher.drain(timeout=30)
    assert time.monotonic() - started < LONG_MS / 1000, "draining does not wait out the window"
    assert sorted(sum(calls, [])) == [0, 1, 2] and batcher._worker is None
    for thread in waiting:
        thread.join(timeout=5)
        assert not thread.is_alive()
    assert batcher.submit(7) == 14, "a later item starts a worker again"


@pytest.mark.parametrize(("window", "size", "words"), [(-1, 8, "--batch-window-ms"), (10_001, 8, "0 to 10000"),
                                                       (5, 0, "--max-batch"), (5, 65, "1 to 64")])
def test_batching_settings_are_checked(window, size, words):
    with pytest.raises(ValueError, match=words):
        check_batching(window, size)


def test_serve_command_refuses_bad_batching_settings(tmp_path):
    from typer.testing import CliRunner

    from hybridcxr.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["serve", "--model", str(tmp_path), "--max-batch", "0"])
    assert bad.exit_code == 2 and "--max-batch" in bad.output, bad.output
    bad = runner.invoke(app, ["serve", "--model", str(tmp_path), "--batch-window-ms", "-3"])
    assert bad.exit_code == 2 and "--batch-window-ms" in bad.output, bad.output
    good = runner.invoke(app, ["serve", "--model", str(tmp_path), "--max-batch", "1", "--batch-window-ms", "0"])
    assert good.exit_code == 1 and "not a classifier run folder" in good.output  # the options parsed


def test_serve_defaults_are_the_services():
    import inspect

    from hybridcxr.cli import serve
    from hybridcxr.serve.app import create_app

    for function in (serve, create_app):
        parameters = inspect.signature(function).parameters
        assert parameters["batch_window_ms"].default == DEFAULT_BATCH_WINDOW_MS
        assert parameters["max_batch"].default == DEFAULT_MAX_BATCH


# -- the service ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def make_app(tiny_classifier):
    return app_factory(tiny_classifier)


@pytest.fixture(scope="module")
def uploads(tiny_detector) -> list[tuple[str, bytes]]:
    """Four phantom DICOMs and two PNGs (different images, different answers)."""
    phantom, folder, _ = tiny_detector
    dicoms = sorted(phantom.rglob("*.dicom"))[:4]
    pngs = sorted((folder / "prepared" / "images").rglob("*.png"))[:2]
    return [(p.name, p.read_bytes()) for p in dicoms + pngs]


def _post_all(http: TestClient, files: list[tuple[str, bytes]]) -> list:
    return _together(lambda item: post(http, item[0], item[1]), files)


def _comparable(body: dict) -> tuple:
    return ({f["finding"]: f["probability"] for f in body["findings"]},
            [(b["finding"], b["x_min"], b["y_min"], b["x_max"], b["y_max"]) for b in body["boxes"]], body["image"])


def test_concurrent_requests_run_in_one_batch_with_the_one_at_a_time_answers(make_app, uploads):
    with TestClient(make_app(max_batch=len(uploads), batch_window_ms=LONG_MS)) as http:
        together = _post_all(http, uploads)
        health = http.get("/healthz").json()["batching"]
        sizes = dict(http.app.state.service.batcher.sizes)
    with TestClient(make_app(max_batch=1)) as http:
        alone = [post(http, name, data) for name, data in uploads]
    assert [a.status_code for a in together + alone] == [200] * 2 * len(uploads)
    assert sizes == {len(uploads): 1}, f"batches run: {sizes}"
    assert health == {"batches": 1, "images": len(uploads), "largest": len(uploads), "max_batch": len(uploads),
                      "window_ms": LONG_MS}
    for batched, single in zip(together, alone):
        probs, boxes, image = _comparable(batched.json())
        probs_alone, boxes_alone, image_alone = _comparable(single.json())
        assert image == image_alone and probs == pytest.approx(probs_alone, abs=2e-5)
        assert [b[0] for b in boxes] == [b[0] for b in boxes_alone]
        assert np.allclose([b[1:] for b in boxes], [b[1:] for b in boxes_alone], atol=0.02)
    assert len({str(_comparable(a.json())[0]) for a in together}) > 1, "different images, different answers"


def test_max_batch_one_serves_one_request_at_a_time(make_app, uploads):
    with TestClient(make_app(max_batch=1, batch_window_ms=LONG_MS)) as http:
        answers = _post_all(http, uploads[2:])  # two DICOMs, two PNGs
        assert [a.status_code for a in answers] == [200] * 4
        assert dict(http.app.state.service.batcher.sizes) == {1: 4}


def test_a_corrupt_upload_among_good_ones_fails_alone_with_todays_error(make_app, uploads, client_alone):
    corrupt = ("cut.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    expected = post(client_alone, *corrupt)  # what one corrupt upload alone gets
    with TestClient(make_app(max_batch=3, batch_window_ms=LONG_MS)) as http:
        answers = _post_all(http, [uploads[0], corrupt, uploads[1], uploads[2]])
        sizes = dict(http.app.state.service.batcher.sizes)
    assert [answers[i].status_code for i in (0, 2, 3)] == [200] * 3
    assert_error(answers[1], 422, "undecodable")
    assert answers[1].json() == expected.json()
    assert sizes == {3: 1}, "the good ones ran together; the corrupt one never reached the networks"


def test_an_image_the_networks_fail_on_fails_only_its_own_request(make_app, uploads):
    app = make_app(max_batch=3, batch_window_ms=LONG_MS)
    analyzer = app.state.service.analyzer
    poison = _decoded_sum(uploads[1])  # the image is told apart by its pixels' sum

    with TestClient(app) as http, pytest.MonkeyPatch.context() as mp:
        original = analyzer.analyze_radiographs

        def failing(radiographs, *args, **kwargs):
            if any(abs(float(r.pixels.sum()) - poison) < 1e-3 for r in radiographs):
                raise RuntimeError("the network failed on this image")
            return original(radiographs, *args, **kwargs)

        mp.setattr(analyzer, "analyze_radiographs", failing)
        answers = _post_all(http, uploads[:3])
        sizes = dict(http.app.state.service.batcher.sizes)
    assert sizes == {3: 1}, "they met in one batch, which failed; then each ran alone"
    assert [a.status_code for a in answers] == [200, 500, 200]
    assert answers[1].json()["error"] == "internal_error"


def test_shutdown_drains_the_batch_worker(make_app, uploads):
    with TestClient(make_app()) as http:
        assert post(http, *uploads[0]).status_code == 200
        batcher = http.app.state.service.batcher
        assert batcher._worker is not None
    assert batcher._worker is None, "the app's shutdown ended the worker"


@pytest.fixture(scope="module")
def client_alone(make_app):
    with TestClient(make_app(max_batch=1)) as http:
        yield http


def _decoded_sum(upload: tuple[str, bytes]) -> float:
    import tempfile

    from hybridcxr.io import read_radiograph

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / upload[0]
        path.write_bytes(upload[1])
        return float(read_radiograph(path).pixels.sum())


def test_small_uploads_batch_while_large_ones_hold_the_pixel_budget(make_app):
    """8 small images fit the budget together; images at the pixel limit take a whole share each."""
    def png(side: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray((np.arange(side * side) % 251).astype(np.uint8).reshape(side, side)).save(buffer, "PNG")
        return buffer.getvalue()

    limits = {"max_decodes": 2, "max_pixels": 256 * 256, "max_batch": 8}
    with TestClient(make_app(**limits, batch_window_ms=LONG_MS)) as http:
        service = http.app.state.service
        assert service.pixels.total == 2 * 256 * 256
        small = _post_all(http, [(f"s{i}.png", png(90)) for i in range(8)])  # 8 x 8100 px: all fit at once
        assert [a.status_code for a in small] == [200] * 8
        assert dict(service.batcher.sizes) == {8: 1}
    with TestClient(make_app(**limits, batch_window_ms=300)) as http:
        service = http.app.state.service
        large = _post_all(http, [(f"l{i}.png", png(256)) for i in range(4)])  # each a whole share
        assert [a.status_code for a in large] == [200] * 4
        assert max(service.batcher.sizes) <= 2, f"at most 2 limit-sized images at once: {service.batcher.sizes}"
        assert service.pixels.held == 0
