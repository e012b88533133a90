"""The DICOM outputs of the batch jobs (``detect``/``classify`` ``--sr`` and ``--overlay --dicom``), one file each.

Kept here so that :mod:`hybridcxr.pipeline` only says *when* to write: where a source is not a DICOM instance
(a PNG or JPEG), a Structured Report cannot reference it, so none is written and a
:class:`~hybridcxr.errors.RadiographWarning` names the file; the batch goes on.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from hybridcxr.dicom_out.study import read_source, save
from hybridcxr.errors import InputError, RadiographWarning
from hybridcxr.io.radiograph import Radiograph


def card_version(card: dict[str, Any]) -> str:
    """A model version for a loaded card (the detector's, for ``detect``): the first 16 hex digits of the
    SHA-256 of its canonical JSON. The classifier's is :attr:`hybridcxr.analyzer.Analyzer.model_version`."""
    text = json.dumps(card, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_header(radiograph: Radiograph) -> Dataset | None:
    """The header of a DICOM source (read again, without pixels), None for a PNG or JPEG."""
    meta = radiograph.meta
    if not (meta.study_uid or meta.sop_uid):
        return None
    return read_source(meta.path)


def write_capture(path: Path, rgb: np.ndarray, radiograph: Radiograph, *, model: str) -> Path:
    """An overlay picture as a Secondary Capture at ``path``, in the source's study (a new one for a PNG)."""
    from hybridcxr.dicom_out.secondary_capture import export_secondary_capture

    return export_secondary_capture(rgb, radiograph, path, model=model, source=source_header(radiograph))


def sr_bytes(analysis: Any, source: Dataset, *, model: str,
             build: Callable[[Dataset], Dataset] | None = None) -> bytes | None:
    """The SR of an analysis (or what ``build`` makes of ``source``) as DICOM file bytes (the service's ``sr``
    output); None where ``source`` has no SOP Instance to reference."""
    from hybridcxr.dicom_out.sr import sr_from_analysis

    try:
        sr = build(source) if build is not None else sr_from_analysis(analysis, source, model=model)
    except InputError:
        return None
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_sr(folder: Path, result: Any, *, model: str) -> Path | None:
    """``folder/<image_id>.dcm``: the SR of an Analysis (boxes and probabilities) or of a Detection (boxes).

    Returns None, with a :class:`RadiographWarning` naming the file, where the source is not a DICOM instance.
    """
    from hybridcxr.dicom_out.sr import sr_from_analysis, sr_from_detection

    detection = getattr(result, "detection", result)
    radiograph = detection.radiograph
    try:
        source = source_header(radiograph)
        if source is None:
            raise InputError(radiograph.meta.path, "not a DICOM (PNG or JPEG): there is no SOP Instance for a "
                                                   "Structured Report to reference")
        if hasattr(result, "probabilities"):
            sr = sr_from_analysis(result, source, model=model)
        else:
            sr = sr_from_detection(detection, source, model=model)
    except InputError as err:
        warnings.warn(RadiographWarning(f"{err}; no structured report written"), stacklevel=2)
        return None
    return save(sr, folder / f"{radiograph.image_id}.dcm")
