"""The service's memory bound: decoded pixels held at once, counted from each image's header before decoding.

A batch needs its images decoded at the same time, so the bound is on pixels, not on uploads: the budget is
``max_decodes`` images at the pixel limit, so 8 small radiographs can wait for one batch together while 8
uploads at the limit still hold only ``max_decodes`` images' worth at once. Grants are first come, first
served: a large image waiting for room is not overtaken by a stream of small ones.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class PixelBudget:
    """At most ``total`` pixels held at once; :meth:`hold` waits (in arrival order) until its pixels fit."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"the pixel budget must be positive, not {total}")
        self.total = total
        self._free = total
        self._waiting: deque[object] = deque()
        self._cond = threading.Condition()

    @property
    def held(self) -> int:
        """Pixels held now."""
        return self.total - self._free

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` (at most the whole budget) for the ``with`` block, waiting for them first."""
        pixels = max(0, min(int(pixels), self.total))
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            try:
                while self._waiting[0] is not ticket or self._free < pixels:
                    self._cond.wait()
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()  # the next in line may fit too, or be first now
            self._free -= pixels
        try:
            yield
        finally:
            with self._cond:
                self._free += pixels
                self._cond.notify_all()


__all__ = ["PixelBudget"]
