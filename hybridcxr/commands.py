"""What every ``hybridcxr`` command shares: the consoles, the exit codes, errors, progress and batch endings.

Exit codes: 0 done; 1 bad input (the message names the file and the problem); 2 usage error, including a
setting that is unknown, mistyped or not one of its choices; 3 finished, but some inputs were skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from hybridcxr.config import config_default

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)  # no hard wraps: paths in messages stay copyable

EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3


def fail(err: Exception, code: int = 1) -> NoReturn:
    """Print ``err`` (it names the file or setting, never patient data) and exit with ``code``."""
    console.print(f"[bold red]error:[/] {err}", highlight=False)
    raise typer.Exit(code)


def default(job: str, key: str) -> str:
    """A setting's default for a help text, read from its YAML (defaults are written there only)."""
    value = config_default(job, key)
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def show_progress(wanted: bool) -> bool:
    """Progress bars only when asked for and stderr is a terminal (never in logs and pipes)."""
    return wanted and sys.stderr.isatty()


def finish_batch(result: object) -> None:
    """Print a batch job's summary; exit 3 when it skipped inputs (they are listed in the summary)."""
    out.print(str(result), highlight=False)
    if getattr(result, "skipped", None):
        raise typer.Exit(EXIT_SKIPPED)


@contextmanager
def errors() -> Iterator[None]:
    """hybridcxr's own errors end the command with their message: exit 2 for a bad setting (a usage error),
    1 for bad input or data."""
    from hybridcxr.errors import ConfigError, HybridCXRError

    try:
        yield
    except ConfigError as err:
        fail(err, EXIT_USAGE)
    except HybridCXRError as err:
        fail(err)


def open_detector(weights: Path | None, classifier: Path | None, device: str | None, runtime: str = "torch"):
    """``(detector, analyzer)`` of ``detect``: the detector of ``weights``, or with ``classifier`` that run's
    Analyzer and its detector (``weights``, when also given, must be that same detector); on ``runtime``
    (torch, onnx or onnx-int8: :mod:`hybridcxr.export.runtime`)."""
    from hybridcxr.detect.predict import Detector
    from hybridcxr.export.runtime import open_detector as load_detector

    if classifier is None:
        return load_detector(weights, device=device, runtime=runtime), None
    from hybridcxr.analyzer import Analyzer
    from hybridcxr.classify.cache import detector_fingerprint
    from hybridcxr.errors import InputError

    analyzer = Analyzer(classifier, device=device, runtime=runtime)
    if weights is not None:
        given = Detector.load(weights, device=device)
        if detector_fingerprint(given) != detector_fingerprint(analyzer.detector):
            raise InputError(weights, f"is not the detector of the classifier run {classifier} (its gating rule "
                                      "was chosen for that one): leave --weights out")
    return analyzer.detector, analyzer
