"""The PACS over DICOMweb (dicomweb-client): QIDO-RS to find, WADO-RS to retrieve, STOW-RS to store.

Credentials ride on the HTTP session (basic: user and password; bearer: a token), never in the URL that
messages and logs show: a URL given as ``http://user:pass@host/...`` is split into the two. dicomweb-client
retries, with exponential backoff, connection failures, timeouts and HTTP 408/429/503/504 (we set its attempts
and waits from :class:`~hybridcxr.pacs.remote.Retry`); 401/403 are refused credentials and are not retried.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
from pydicom.dataset import Dataset

from hybridcxr.dicom_out.identity import is_ours
from hybridcxr.errors import PacsAuthError, PacsError, PacsStoreError
from hybridcxr.files import atomic_path
from hybridcxr.pacs.remote import Query, Retry, Series, Study, dicom_date, unreachable

T = TypeVar("T")
_TRANSIENT = (requests.ConnectionError, requests.Timeout)
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_MODALITY, _MANUFACTURER, _STUDY_DATE = "00080060", "00080070", "00080020"


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its ``user:password@`` part, and that user and password (None where absent)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return urlunsplit(parts._replace(netloc=netloc)), user, password


def _value(item: dict, tag: str) -> str:
    """The first value of a DICOM JSON attribute, as text ("" where absent)."""
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


class DicomWebPacs:
    """A DICOMweb server (QIDO-RS, WADO-RS, STOW-RS under one root URL)."""

    def __init__(self, url: str, *, user: str | None = None, password: str | None = None,
                 token: str | None = None, retry: Retry = Retry(), timeout_s: float = 60) -> None:
        from dicomweb_client.api import DICOMwebClient

        url, url_user, url_password = split_credentials(url)
        self.server = url.rstrip("/")
        self.retry = retry
        session = requests.Session()
        user, password = user or url_user, password or url_password
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        elif user is not None:
            session.auth = (user, password or "")
        self.client = DICOMwebClient(self.server, session=session, timeout=timeout_s)
        # its waits are multiplier * 2**attempt ms: half our backoff makes the first wait our backoff
        self.client.set_http_retry_params(max_attempts=retry.attempts,
                                          wait_exponential_multiplier=int(retry.backoff_s * 500))

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """``action()`` with retries on connection errors; HTTP errors as hybridcxr's PACS errors."""
        try:
            return action()
        except _TRANSIENT as err:  # dicomweb-client has retried it already
            raise unreachable(self.server, what, self.retry.attempts, err) from None
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else 0
            if status in (401, 403):
                raise PacsAuthError(self.server, f"{what}: the PACS refused our credentials (HTTP {status}); "
                                                 "check --user/--password or --token") from None
            raise PacsError(self.server, f"{what}: HTTP {status} {getattr(err.response, 'reason', '')}") from None
        except requests.RequestException as err:
            raise PacsError(self.server, f"{what}: {type(err).__name__}") from None

    def find_studies(self, query: Query) -> list[Study]:
        """QIDO-RS studies matching the query (one study UID, or a Study Date from ``since`` on)."""
        filters: dict[str, str] = {}
        if query.study_uid:
            filters["StudyInstanceUID"] = query.study_uid
        if query.since:
            filters["StudyDate"] = f"{dicom_date(query.since)}-"
        found = self._call("QIDO-RS search for studies", lambda: self.client.search_for_studies(
            search_filters=filters, get_remaining=True))
        return [Study(_value(s, _STUDY_UID), _value(s, _STUDY_DATE)) for s in found]

    def series(self, study_uid: str) -> list[Series]:
        """QIDO-RS series of a study, with modality and manufacturer."""
        found = self._call("QIDO-RS search for series", lambda: self.client.search_for_series(
            study_uid, fields=["Manufacturer"], get_remaining=True))
        return [Series(study_uid, _value(s, _SERIES_UID), _value(s, _MODALITY), _value(s, _MANUFACTURER))
                for s in found]

    def answered(self, study_uid: str, model: str) -> bool:
        """Whether an SR of this model version is in the study (QIDO-RS for SR instances, then their metadata)."""
        found = self._call("QIDO-RS search for SR instances", lambda: self.client.search_for_instances(
            study_uid, search_filters={"Modality": "SR"}, get_remaining=True))
        for item in found:
            meta = self._call("WADO-RS instance metadata", lambda item=item: self.client.retrieve_instance_metadata(
                study_uid, _value(item, _SERIES_UID), _value(item, _SOP_UID)))
            if is_ours(Dataset.from_json(meta, bulk_data_uri_handler=lambda *_: b""), model):
                return True
        return False

    def retrieve(self, series: Series, folder: Path) -> list[Path]:
        """WADO-RS the series' instances into ``folder`` as ``<SOP Instance UID>.dcm``."""
        datasets = self._call("WADO-RS retrieve series", lambda: self.client.retrieve_series(
            series.study_uid, series.uid))
        return [_save(ds, folder) for ds in datasets]

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS the datasets; PacsStoreError naming the refused instances where the PACS refuses any."""
        if not datasets:
            return
        try:
            answer = self._call("STOW-RS store", lambda: self.client.store_instances(list(datasets)))
        except PacsError as err:
            if isinstance(err, PacsAuthError):
                raise
            raise PacsStoreError(self.server, f"refused {len(datasets)} object(s): {err.problem}") from None
        failed = list(getattr(answer, "FailedSOPSequence", []) or [])
        if failed:
            detail = ", ".join(f"{getattr(f, 'ReferencedSOPInstanceUID', '?')} (reason "
                               f"{int(getattr(f, 'FailureReason', 0)):#06x})" for f in failed)
            raise PacsStoreError(self.server, f"STOW-RS refused {len(failed)} of {len(datasets)} object(s): {detail}")
        missing = [ds.SOPInstanceUID for ds in datasets if not self._holds(ds)]
        if missing:  # e.g. Orthanc answers success for an instance its filter dropped: only a look tells
            raise PacsStoreError(self.server, f"STOW-RS answered success, but {len(missing)} of {len(datasets)} "
                                              f"object(s) are not in the PACS afterwards: {', '.join(missing)}")

    def _holds(self, ds: Dataset) -> bool:
        """Whether the PACS now holds this instance (QIDO-RS by its UIDs)."""
        found = self._call("QIDO-RS check of a stored instance", lambda: self.client.search_for_instances(
            ds.StudyInstanceUID, search_filters={"SOPInstanceUID": ds.SOPInstanceUID}))
        return bool(found)


def _save(ds: Dataset, folder: Path) -> Path:
    """Write a retrieved dataset as a DICOM file (atomically), named by its SOP Instance UID."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
