"""The PACS over DIMSE (pynetdicom): C-FIND to find, C-GET to retrieve, C-STORE to store.

C-GET brings the instances back over the same association (we play the Storage SCP role in it), so no port
of ours needs to be reachable from the PACS; the PACS must know our AE title (its modality list) for C-GET.
An association that cannot be opened is retried with backoff; one the PACS rejects (an AE title it does not
know) is not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    RLELossless,
)

from hybridcxr.dicom_out.identity import MANUFACTURER, is_ours
from hybridcxr.errors import PacsAuthError, PacsError, PacsStoreError
from hybridcxr.files import atomic_path
from hybridcxr.pacs.remote import Query, Retry, Series, Study, dicom_date, with_retries

#: Storage classes we accept in C-GET: radiographs (CR, DX for presentation and processing) and Secondary Capture.
_IMAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
                  "1.2.840.10008.5.1.4.1.1.7")
#: Structured Report classes we accept in C-GET (to read an SR's Software Versions where C-FIND does not say them).
_SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
               "1.2.840.10008.5.1.4.1.1.88.34")
_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit,
             JPEGExtended12Bit, JPEGLosslessSV1, JPEG2000Lossless, JPEG2000, RLELossless]
_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
_GET = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve Information Model - GET
_PENDING = (0xFF00, 0xFF01)

logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines name every association and request


class _Unavailable(Exception):
    """An association that could not be opened (connection refused, timeout, aborted): worth retrying."""


class DimsePacs:
    """A DICOM node reached over DIMSE: ``host:port`` with its AE title (``called_aet``) and ours (``aet``)."""

    def __init__(self, host: str, port: int, *, aet: str = "HYBRIDCXR", called_aet: str = "ANY-SCP",
                 retry: Retry = Retry(), timeout_s: float = 60) -> None:
        self.host, self.port, self.aet, self.called_aet = host, port, aet, called_aet
        self.server = f"{host}:{port} (AE {called_aet})"
        self.retry = retry
        self.timeout_s = timeout_s

    @contextmanager
    def _association(self, what: str, contexts: Sequence[tuple[str, Sequence[str]]], *,
                     scp_classes: Sequence[str] = (), handlers: list | None = None) -> Iterator:
        """An open association for ``what`` with these presentation contexts; released afterwards."""
        from pynetdicom import AE, build_role

        ae = AE(ae_title=self.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, list(syntaxes))
        roles = [build_role(uid, scp_role=True) for uid in scp_classes]

        def open_it():
            assoc = ae.associate(self.host, self.port, ae_title=self.called_aet, ext_neg=roles,
                                 evt_handlers=handlers or [])
            if assoc.is_rejected:
                raise PacsAuthError(self.server, f"{what}: the PACS rejected the association (our AE title "
                                                 f"{self.aet!r} or its {self.called_aet!r} is not one it accepts)")
            if not assoc.is_established:
                raise _Unavailable("no association (connection refused, timed out or aborted)")
            return assoc

        assoc = with_retries(open_it, self.retry, (_Unavailable,), self.server, f"{what} (association)")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _find(self, what: str, identifier: Dataset) -> list[Dataset]:
        """The identifiers a Study Root C-FIND answers; PacsError on a failure status."""
        with self._association(what, [(_FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]) as assoc:
            found = []
            for status, answer in assoc.send_c_find(identifier, _FIND):
                code = int(getattr(status, "Status", -1))
                if code in _PENDING and answer is not None:
                    found.append(answer)
                elif code != 0x0000:
                    raise PacsError(self.server, f"{what}: C-FIND failed (status {code:#06x})"
                                    if code >= 0 else f"{what}: no C-FIND answer (association lost)")
            return found

    def find_studies(self, query: Query) -> list[Study]:
        """C-FIND at STUDY level: one study UID, or a Study Date from ``since`` on."""
        ask = _identifier("STUDY", StudyInstanceUID=query.study_uid or "", StudyDate="")
        if query.since:
            ask.StudyDate = f"{dicom_date(query.since)}-"
        return [Study(str(a.StudyInstanceUID), str(a.get("StudyDate", "")))
                for a in self._find("C-FIND studies", ask) if a.get("StudyInstanceUID")]

    def series(self, study_uid: str) -> list[Series]:
        """C-FIND at SERIES level: every series of the study, with modality and manufacturer."""
        ask = _identifier("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="", Modality="", Manufacturer="")
        return [Series(study_uid, str(a.SeriesInstanceUID), str(a.get("Modality", "")), str(a.get("Manufacturer", "")))
                for a in self._find("C-FIND series", ask) if a.get("SeriesInstanceUID")]

    def answered(self, study_uid: str, model: str) -> bool:
        """Whether an SR of this model version is in the study: C-FIND its SR series, then their instances'
        Manufacturer and Software Versions; where the PACS does not answer those (many return only the keys
        they index), C-GET the SR series and read them from the files."""
        import tempfile

        for series in self.series(study_uid):
            if series.modality != "SR" or series.manufacturer not in ("", MANUFACTURER):
                continue
            ask = _identifier("IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series.uid,
                              SOPInstanceUID="", Manufacturer="", SoftwareVersions="")
            answers = self._find("C-FIND SR instances", ask)
            if any(is_ours(a, model) for a in answers):
                return True
            if any(not a.get("SoftwareVersions") and str(a.get("Manufacturer", "") or "") in ("", MANUFACTURER)
                   for a in answers):
                with tempfile.TemporaryDirectory(prefix="hybridcxr-sr-") as tmp:
                    files = self._get(series, Path(tmp), _SR_CLASSES, "C-GET SR series")
                    if any(is_ours(dcmread(f, stop_before_pixels=True), model) for f in files):
                        return True
        return False

    def retrieve(self, series: Series, folder: Path) -> list[Path]:
        """C-GET the series into ``folder`` as ``<SOP Instance UID>.dcm`` (we are the Storage SCP)."""
        return self._get(series, folder, _IMAGE_CLASSES, "C-GET series")

    def _get(self, series: Series, folder: Path, classes: Sequence[str], what: str) -> list[Path]:
        """C-GET the series' instances of these storage classes into ``folder``; the files written."""
        from pynetdicom import evt

        written: list[Path] = []
        contexts = [(_GET, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])] + [(c, _SYNTAXES) for c in classes]
        handlers = [(evt.EVT_C_STORE, _saver(folder, written))]
        ask = _identifier("SERIES", StudyInstanceUID=series.study_uid, SeriesInstanceUID=series.uid)
        with self._association(what, contexts, scp_classes=classes, handlers=handlers) as assoc:
            final = None
            for status, _ in assoc.send_c_get(ask, _GET):
                final = int(getattr(status, "Status", -1))
            if final not in (0x0000, 0xB000) and not written:
                raise PacsError(self.server, f"{what}: failed (status {final if final is None else hex(final)})")
        return written

    def store(self, datasets: Sequence[Dataset]) -> None:
        """C-STORE the datasets; PacsStoreError naming the refused instances and their status."""
        if not datasets:
            return
        contexts = {}
        for ds in datasets:
            syntax = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
            contexts.setdefault(str(ds.SOPClassUID), {ExplicitVRLittleEndian, ImplicitVRLittleEndian}).update(
                [str(syntax)] if syntax else [])
        refused = []
        with self._association("C-STORE", [(k, sorted(v)) for k, v in contexts.items()]) as assoc:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(getattr(status, "Status", -1))
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    refused.append(f"{ds.SOPInstanceUID} (status {code:#06x})" if code >= 0
                                   else f"{ds.SOPInstanceUID} (no answer)")
        if refused:
            raise PacsStoreError(self.server, f"C-STORE refused {len(refused)} of {len(datasets)} object(s): "
                                              f"{', '.join(refused)}")
        missing = [str(ds.SOPInstanceUID) for ds in datasets if not self._holds(ds)]
        if missing:  # e.g. Orthanc answers success for an instance its filter dropped: only a look tells
            raise PacsStoreError(self.server, f"C-STORE answered success, but {len(missing)} of {len(datasets)} "
                                              f"object(s) are not in the PACS afterwards: {', '.join(missing)}")

    def _holds(self, ds: Dataset) -> bool:
        """Whether the PACS now holds this instance (C-FIND at IMAGE level by its UIDs)."""
        ask = _identifier("IMAGE", StudyInstanceUID=str(ds.StudyInstanceUID),
                          SeriesInstanceUID=str(ds.SeriesInstanceUID), SOPInstanceUID=str(ds.SOPInstanceUID))
        return bool(self._find("C-FIND check of a stored instance", ask))


def _identifier(level: str, **keys: str) -> Dataset:
    """A C-FIND/C-GET identifier at ``level`` with these keys (empty: a return key)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


def _saver(folder: Path, written: list[Path]) -> Callable:
    """A C-STORE handler writing each instance of a C-GET to ``folder`` (atomically), listing it in ``written``."""

    def handle(event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        try:
            with atomic_path(path) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        except OSError:
            return 0xA700  # out of resources: the PACS reports the instance as failed
        written.append(path)
        return 0x0000

    return handle
