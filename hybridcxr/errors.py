"""Typed errors and warnings. Every message names the file (or table) and the problem, never patient data."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from pathlib import Path


class HybridCXRError(Exception):
    """Base of every error hybridcxr raises on purpose."""


class InputError(HybridCXRError):
    """A file or table that cannot be used; ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OutputError(InputError):
    """A file that cannot be written (disk full, read-only folder); ``str(err)`` is ``"<path>: <problem>"``."""


class RadiographError(InputError):
    """An image file that cannot be read as a radiograph."""


class NotAnImageError(RadiographError):
    """Neither a DICOM nor an image format we decode (or a corrupt one)."""


class NoPixelDataError(RadiographError):
    """A DICOM file without Pixel Data (e.g. a Structured Report or a header-only file)."""


class TooManyPixelsError(RadiographError):
    """An image larger than the pixel limit (checked from its header, before decoding)."""


class MultiFrameError(RadiographError):
    """A DICOM with more than one frame: a projection radiograph has one."""


class UnsupportedModalityError(RadiographError):
    """A DICOM whose Modality is not a projection radiograph (CT, MR, US, ...)."""


class ConfigError(InputError):
    """A setting that is unknown, of the wrong type or not one of its choices (the CLI exits 2: a usage error)."""


class DatasetError(InputError):
    """A dataset table or folder that does not match the layout its adapter expects."""


class RadiographWarning(UserWarning):
    """Something odd but usable in a radiograph's header (unparseable age, body part other than chest)."""


class DataWarning(UserWarning):
    """Something odd but usable in a dataset table (unknown label, box clipped to the image)."""


class PacsError(InputError):
    """A PACS that cannot be used; ``str(err)`` is ``"<server>: <problem>"``, the server named without credentials."""


class PacsUnreachableError(PacsError):
    """The PACS does not answer (connection refused, timeout) even after the retries."""


class PacsAuthError(PacsError):
    """The PACS refuses our credentials (HTTP 401/403, or a rejected DICOM association)."""


class PacsStoreError(PacsError):
    """The PACS refused to store an object we sent (STOW-RS failure, C-STORE failure status)."""


_WARNINGS_LOCK = threading.RLock()


@contextmanager
def guarded_warnings(action: str | None = None, *, record: bool = False) -> Iterator[list | None]:
    """``warnings.catch_warnings`` (with ``simplefilter(action)`` when given) that never interleaves with another
    of hybridcxr's: the standard one swaps process-wide state, so two threads entering and leaving it out of
    order (the detector's decoder threads read DICOMs while the main thread writes DICOMs) leave the warning
    machinery pointing at a finished block's list, and every later warning is lost. Warnings raised by other
    threads while a block records are caught by it; the readers re-emit what they catch."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=record) as caught:
        if action is not None:
            warnings.simplefilter(action)  # type: ignore[arg-type]
        yield caught
