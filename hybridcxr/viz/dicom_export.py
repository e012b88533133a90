"""Overlays back into PACS: a findings overlay written as a DICOM Secondary Capture Image (highdicom).

Why: a radiologist reads in the PACS viewer, not in a folder of PNGs. A Secondary Capture that carries the
source's Study Instance UID is filed beside the radiograph it was drawn from, in a series of its own (new
Series and SOP Instance UIDs), and points back at its source image (Source Image Sequence and Referenced
Series Sequence), so the viewer and an auditor can tell which image the findings belong to.

What is copied from the source is what :class:`~hybridcxr.io.radiograph.RadiographMeta` carries and no more:
the study, series and instance UIDs, the patient's sex and age. The metadata keeps no patient names, ids or
birth dates, so none is written (those Type 2 attributes stay empty) and none is invented. A PNG or JPEG
source has no study: the capture gets a new Study Instance UID, with a :class:`RadiographWarning`.

The picture is stored as it is drawn (8-bit RGB, Explicit VR Little Endian, no compression), so a reader
sees exactly the pixels of :func:`hybridcxr.viz.overlay.draw_overlay`. Pixel Spacing and Patient
Orientation are not claimed: the picture holds a legend beside the image and may have been downscaled.

>>> rgb = draw_overlay(radiograph, predictions=boxes, probabilities=probs)  # doctest: +SKIP
>>> export_secondary_capture(rgb, radiograph, "out/overlay.dcm")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, UID_dictionary, generate_uid

from hybridcxr import __version__
from hybridcxr.errors import HybridCXRError, RadiographWarning
from hybridcxr.files import atomic_path
from hybridcxr.io.radiograph import Radiograph

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
"""SOP Class UID of Secondary Capture Image Storage."""

MANUFACTURER = "hybridcxr"
SERIES_NUMBER = 9001
"""Series Number of the overlay series: high, so that PACS lists it after the acquired series."""

CONVERSION_TYPE = "WSD"
"""Conversion Type (PS3.3 C.8.6.1): "WSD", drawn by a workstation (highdicom's default says "DI", a
capture from a digital interface)."""

_SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SOP_CLASS_BY_NAME = {entry[0]: uid for uid, entry in UID_dictionary.items()}


def export_secondary_capture(
    overlay_rgb: np.ndarray,
    source: Radiograph,
    path: str | Path,
    *,
    series_description: str = "hybridcxr findings overlay",
    manufacturer_model: str = f"hybridcxr {__version__}",
    patient_id: str | None = None,
) -> Path:
    """Write ``overlay_rgb`` as a DICOM Secondary Capture filed in the study of ``source``; return the path.

    Args:
        overlay_rgb: the picture, (H, W, 3) uint8 RGB as :func:`~hybridcxr.viz.overlay.draw_overlay`
            returns it; stored losslessly, pixel for pixel.
        source: the radiograph the overlay was drawn from; its Study Instance UID is kept (a new one is
            made, with a :class:`RadiographWarning`, where it has none, e.g. a PNG) and its Series and SOP
            Instance UIDs are referenced.
        path: the file to write (atomically: a reader never sees half a file).
        series_description: Series Description of the new series (64 characters at most).
        manufacturer_model: Manufacturer's Model Name (64 characters at most).
        patient_id: the source's Patient ID (see :func:`source_patient_id`), which PACS match the study on;
            left empty when not given. Never logged.

    Raises:
        ValueError: ``overlay_rgb`` is not an (H, W, 3) uint8 array, or a description is too long for DICOM.
    """
    pixels = np.asarray(overlay_rgb)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape or pixels.dtype != np.uint8:
        raise ValueError(
            f"a secondary capture needs an (H, W, 3) uint8 RGB picture; got {pixels.dtype} of shape {pixels.shape}"
        )
    dataset = _secondary_capture(np.ascontiguousarray(pixels), source, series_description, manufacturer_model)
    if patient_id:
        dataset.PatientID = patient_id
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return Path(path)


def source_patient_id(path: str | Path) -> str | None:
    """The Patient ID of a DICOM file (only that element is read), or None for other files.

    :class:`~hybridcxr.io.Radiograph` does not keep identifiers, so the export reads this one from the file
    when it files the capture back into the patient's study.
    """
    from hybridcxr.io.dicom import header_text, read_header

    try:
        ds = read_header(path, ["PatientID"])
    except (HybridCXRError, OSError):  # not a DICOM (PNG, JPEG): no Patient ID
        return None
    return header_text(ds, "PatientID")


def _secondary_capture(pixels: np.ndarray, source: Radiograph, series_description: str,
                       manufacturer_model: str) -> Dataset:
    """The SC dataset: highdicom's Secondary Capture plus the references to the source image."""
    from highdicom.sc import SCImage  # heavy import: only when a capture is written

    meta = source.meta
    study_uid = meta.study_uid
    if not study_uid:
        study_uid = generate_uid()
        warnings.warn(
            RadiographWarning(
                f"{meta.path}: the source has no Study Instance UID (not a DICOM); the secondary capture "
                "starts a new study, which PACS will not file beside the radiograph"
            ),
            stacklevel=3,
        )
    sc = SCImage(
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        # highdicom requires an orientation for PATIENT; cleared below, as the picture cannot claim one
        patient_orientation=("L", "F"),
        study_instance_uid=study_uid,
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=manufacturer_model,
        software_versions=__version__,
        series_description=series_description,
        patient_sex=meta.sex,
    )
    sc.PatientOrientation = None  # Type 2: present and empty, i.e. unknown
    sc.ConversionType = CONVERSION_TYPE
    age = dicom_age(meta.age_years)
    if age is not None:
        sc.PatientAge = age
    sc.DerivationDescription = "hybridcxr findings overlay (boxes, probabilities) drawn over the source image"
    _reference_source(sc, source)
    return sc


def _reference_source(sc: Dataset, source: Radiograph) -> None:
    """Source Image Sequence and Referenced Series Sequence pointing at the source image, where known."""
    meta = source.meta
    sop_class = _sop_class_uid(meta.extra.get("sop_class"))
    if not (meta.sop_uid and sop_class):
        if meta.study_uid:  # a DICOM that does not say which instance it is: nothing to point at
            warnings.warn(
                RadiographWarning(
                    f"{meta.path}: the source's SOP Class or Instance UID is unknown; the secondary "
                    "capture does not reference it"
                ),
                stacklevel=4,
            )
        return
    instance = Dataset()
    instance.ReferencedSOPClassUID = sop_class
    instance.ReferencedSOPInstanceUID = meta.sop_uid
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = _SOURCE_PURPOSE
    source_item = Dataset()
    source_item.ReferencedSOPClassUID = sop_class
    source_item.ReferencedSOPInstanceUID = meta.sop_uid
    source_item.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [source_item]
    if meta.series_uid:
        series = Dataset()
        series.SeriesInstanceUID = meta.series_uid
        series.ReferencedInstanceSequence = [instance]
        sc.ReferencedSeriesSequence = [series]


def _sop_class_uid(value: str | None) -> str | None:
    """The SOP Class UID of the metadata's ``sop_class``, which holds the registered name (or the UID)."""
    if not value:
        return None
    if _UID_RE.match(value):
        return value
    uid = _SOP_CLASS_BY_NAME.get(value)
    return str(UID(uid)) if uid else None


def dicom_age(age_years: float | None) -> str | None:
    """An age in years as a DICOM Age String: ``"081Y"``; ``"011M"``, ``"020D"`` under a year.

    >>> dicom_age(81.4), dicom_age(0.5), dicom_age(None)
    ('081Y', '006M', None)
    """
    if age_years is None or not math.isfinite(age_years) or age_years < 0:
        return None
    if age_years >= 1:
        return f"{min(int(age_years), 999):03d}Y"
    if age_years * 12 >= 1:
        return f"{int(age_years * 12):03d}M"
    return f"{int(age_years * 365.25):03d}D"
