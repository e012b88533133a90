"""One progress bar for every long job (decoding, detection, feature extraction), drawn by rich on stderr."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType


class progress_bar:
    """Context manager yielding ``advance(n=1)``; draws nothing when disabled (tests, pipes, logs).

    >>> with progress_bar(3, "decoding", enabled=False) as advance:
    ...     advance(3)
    """

    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        self.total, self.label, self.enabled, self.bar = total, label, enabled, None

    def __enter__(self) -> Callable[..., None]:
        if not self.enabled:
            return lambda n=1: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=False)
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda n=1: self.bar.advance(task, n)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.stop()
