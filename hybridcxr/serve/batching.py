"""Requests that arrive together run as one batch: one worker thread owns the networks, fed by a queue.

Each request thread calls :meth:`Batcher.submit` with its decoded item and waits for its own answer. The worker
takes the oldest waiting item, then gathers more until ``max_batch`` are in hand or the collection window has
passed since that oldest item arrived (items that queued while the previous batch ran go in at once), and runs
them in one call. Answers go back in order, each to its own request: a batch never mixes results. Where the
batched call fails, each of its items is run alone, so only the item that fails gets the error (its own
exception, traceback included). ``max_batch=1`` serves one item at a time: batching off.

The worker starts on the first item and ends after :data:`IDLE_EXIT_S` without work (so an unused service
holds no thread); :meth:`Batcher.drain` finishes what is queued and waits for the worker to end (shutdown).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger("hybridcxr.serve")
_In = TypeVar("_In")
_Out = TypeVar("_Out")

#: Milliseconds the worker waits for more requests after the first of a batch arrived: short beside an analysis
#: (tens of ms on a CPU), long enough for clients that send together to meet.
DEFAULT_BATCH_WINDOW_MS = 10.0
#: Requests run in one batch at most (1: batching off).
DEFAULT_MAX_BATCH = 8
#: Longest collection window accepted, in ms (longer is no batching but a stall).
MAX_WINDOW_MS = 10_000.0
#: Largest batch accepted: memory is bounded by the pixel budget, time by this (a batch answers all at once).
MAX_BATCH_LIMIT = 64
#: Seconds without work after which the worker thread ends (the next request starts another).
IDLE_EXIT_S = 30.0


class Batcher(Generic[_In, _Out]):
    """Run ``run(items) -> answers`` (same length, same order) on batches of concurrently submitted items."""

    def __init__(self, run: Callable[[list[_In]], Sequence[_Out]], *, window_ms: float = DEFAULT_BATCH_WINDOW_MS,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        check_batching(window_ms, max_batch)
        self.run, self.window_ms, self.max_batch = run, window_ms, max_batch
        self.window = window_ms / 1000
        self.sizes: Counter[int] = Counter()
        """How many batches of each size were run (batches run alone after a failure are not counted)."""
        self._queue: deque[tuple[float, _In, Future]] = deque()
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._running = 0
        self._draining = False

    @property
    def busy(self) -> bool:
        """Whether a batch is running now."""
        return self._running > 0

    def stats(self) -> dict[str, int | float]:
        """Batches run, items in them, the largest batch, and the settings."""
        with self._cond:
            batches, items = sum(self.sizes.values()), sum(n * c for n, c in self.sizes.items())
            largest = max(self.sizes, default=0)
        return {"batches": batches, "images": items, "largest": largest, "max_batch": self.max_batch,
                "window_ms": self.window_ms}

    def submit(self, item: _In) -> _Out:
        """Queue ``item``, wait until its batch has run, return its answer (or raise its exception)."""
        future: Future = Future()
        with self._cond:
            self._queue.append((time.monotonic(), item, future))
            if self._worker is None:
                self._draining = False
                self._worker = threading.Thread(target=self._loop, name="hybridcxr-batcher", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return future.result()

    def drain(self, timeout: float | None = None) -> None:
        """Run what is queued, then let the worker end; wait for it (up to ``timeout`` seconds)."""
        with self._cond:
            self._draining = True
            worker = self._worker
            self._cond.notify_all()
        if worker is not None:
            worker.join(timeout)

    def _loop(self) -> None:
        while (batch := self._collect()) is not None:
            try:
                self._answer(batch)
            except BaseException as err:  # noqa: BLE001 - not an Exception (e.g. SystemExit): no request waits for ever
                log.error("the batch worker was interrupted (%s)", type(err).__name__)
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(err)
            finally:
                batch.clear()  # the images go now, not when the next batch comes
                with self._cond:
                    self._running = 0

    def _collect(self) -> list[tuple[float, _In, Future]] | None:
        """The next batch; None when the worker should end (draining, or idle too long, with nothing queued)."""
        with self._cond:
            while not self._queue:
                if self._draining or not self._cond.wait(IDLE_EXIT_S) and not self._queue:
                    self._worker = None
                    return None
            batch = [self._queue.popleft()]
            deadline = batch[0][0] + self.window  # from the oldest item's arrival: queued ones wait no more
            while len(batch) < self.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._draining:
                    break
                self._cond.wait(left)
            self._running = len(batch)
            self.sizes[len(batch)] += 1
            return batch

    def _answer(self, batch: list[tuple[float, _In, Future]]) -> None:
        """Run the batch and give each future its answer; after a failure, run each item alone."""
        try:
            answers = list(self.run([item for _, item, _ in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(answers)} answers")
        except Exception as err:  # noqa: BLE001 - re-run alone: only the failing item's request sees it
            if len(batch) == 1:
                batch[0][2].set_exception(err)
                return
            log.warning("a batch of %d failed (%s): running its items one at a time", len(batch), type(err).__name__)
            for entry in batch:
                self._answer([entry])
            return
        for (_, _, future), answer in zip(batch, answers):
            future.set_result(answer)


def check_batching(window_ms: float, max_batch: int) -> None:
    """Raise ValueError unless ``0 <= window_ms <= MAX_WINDOW_MS`` and ``1 <= max_batch <= MAX_BATCH_LIMIT``."""
    if not 0 <= window_ms <= MAX_WINDOW_MS:
        raise ValueError(f"the batch window (--batch-window-ms) must be 0 to {MAX_WINDOW_MS:g} ms, not {window_ms}")
    if not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise ValueError(f"the largest batch (--max-batch) must be 1 to {MAX_BATCH_LIMIT} requests, not {max_batch}")


__all__ = ["DEFAULT_BATCH_WINDOW_MS", "DEFAULT_MAX_BATCH", "MAX_BATCH_LIMIT", "MAX_WINDOW_MS", "Batcher", "check_batching"]
