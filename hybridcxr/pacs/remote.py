"""What a PACS client offers the driver, whichever protocol it speaks (DICOMweb or DIMSE), and retrying.

The driver (:mod:`hybridcxr.pacs.job`) sees a :class:`Pacs`: find studies, list their series, tell whether this
model version already answered a study, retrieve a series into a folder, store datasets back. Both clients
raise :mod:`hybridcxr.errors` types naming the server (never its credentials): unreachable, refused
credentials, refused store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol, TypeVar

from pydicom.dataset import Dataset

from hybridcxr.errors import PacsUnreachableError

RADIOGRAPH_MODALITIES = ("CR", "DX")
"""Series of these modalities are analyzed; other image series are skipped with the reason."""
NON_IMAGE_MODALITIES = ("SR", "KO", "PR", "SEG", "REG", "RWV", "DOC", "PLAN")
"""Series of these modalities hold no radiograph and are passed over without a word."""

T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    """Which studies to look at: one study, or those with a Study Date from ``since`` on (both None: all)."""

    study_uid: str | None = None
    since: date | None = None


@dataclass(frozen=True)
class Study:
    """A study the PACS holds (UIDs and dates only: no patient data travels through here)."""

    uid: str
    date: str = ""


@dataclass(frozen=True)
class Series:
    """A series of a study, with its modality and (where the PACS says) its manufacturer."""

    study_uid: str
    uid: str
    modality: str
    manufacturer: str = ""


class Pacs(Protocol):
    """A PACS as the driver uses it; :class:`~hybridcxr.pacs.dicomweb.DicomWebPacs` and
    :class:`~hybridcxr.pacs.dimse.DimsePacs` are the two."""

    server: str
    """The server as messages and the state name it: URL or host:port/AET, without credentials."""

    def find_studies(self, query: Query) -> list[Study]:
        """Studies with a CR or DX series matching ``query``."""
        ...

    def series(self, study_uid: str) -> list[Series]:
        """Every series of the study."""
        ...

    def answered(self, study_uid: str, model: str) -> bool:
        """Whether an SR written by this model version is already in the study."""
        ...

    def retrieve(self, series: Series, folder: Path) -> list[Path]:
        """Fetch the series' instances into ``folder``; the files written."""
        ...

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Store the datasets; :class:`~hybridcxr.errors.PacsStoreError` when the PACS refuses any."""
        ...


@dataclass(frozen=True)
class Retry:
    """How often and how patiently to retry what may pass (connection refused, timeouts, HTTP 5xx)."""

    attempts: int = 3
    backoff_s: float = 0.5
    """Wait before the second attempt; it doubles before each further one."""


def with_retries(action: Callable[[], T], retry: Retry, transient: tuple[type[BaseException], ...],
                 server: str, what: str) -> T:
    """``action()``, retried with exponential backoff on ``transient`` errors; then PacsUnreachableError."""
    for attempt in range(1, retry.attempts + 1):
        try:
            return action()
        except transient as err:
            if attempt == retry.attempts:
                raise unreachable(server, what, retry.attempts, err) from None
            time.sleep(retry.backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def unreachable(server: str, what: str, attempts: int, err: BaseException) -> PacsUnreachableError:
    """The error for an action that failed ``attempts`` times with ``err`` (a connection error, a timeout)."""
    return PacsUnreachableError(server, f"{what} failed {attempts} times; last: {_short(err)}")


def _short(err: BaseException) -> str:
    """An error's type and first line, without anything that could carry a credential (URLs keep no userinfo)."""
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def dicom_date(day: date) -> str:
    """``YYYYMMDD``, the DICOM DA form."""
    return day.strftime("%Y%m%d")
