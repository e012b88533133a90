"""Overlays back into PACS: a findings overlay written as a DICOM Secondary Capture Image (highdicom).

Why: a radiologist reads in the PACS viewer, not in a folder of PNGs. A Secondary Capture filed in the source's
study (:mod:`hybridcxr.dicom_out.study`: patient and study modules copied from the source header as it has
them) sits beside the radiograph it was drawn from, in a series of its own, and points back at its source
image (Source Image Sequence and Referenced Series Sequence), so the viewer and an auditor can tell which
image the findings belong to. Burned In Annotation is YES: the findings are drawn into the pixels.

A PNG or JPEG source has no study: the capture gets a new Study Instance UID, with a :class:`RadiographWarning`,
and carries only the sex and age the reader found.

The picture is stored as it is drawn (8-bit RGB, Explicit VR Little Endian, no compression), so a reader
sees exactly the pixels of :func:`hybridcxr.viz.overlay.draw_overlay`. Pixel Spacing and Patient
Orientation are not claimed: the picture holds a legend beside the image and may have been downscaled.

>>> sc = sc_from_analysis(analysis, pydicom.dcmread("IM0001.dcm"), model=analyzer.model_version)  # doctest: +SKIP
>>> save(sc, "out/overlays/IM0001.dcm")  # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, UID_dictionary, generate_uid

from hybridcxr import __version__
from hybridcxr.dicom_out.identity import MANUFACTURER
from hybridcxr.dicom_out.study import dicom_age, join_study, new_series, save
from hybridcxr.errors import RadiographWarning
from hybridcxr.io.radiograph import Radiograph

if TYPE_CHECKING:
    from hybridcxr.analyzer import Analysis

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
"""SOP Class UID of Secondary Capture Image Storage."""

SERIES_NUMBER = 9001
"""Series Number of the overlay series: high, so that PACS lists it after the acquired series."""
SERIES_DESCRIPTION = "hybridcxr findings overlay"

CONVERSION_TYPE = "WSD"
"""Conversion Type (PS3.3 C.8.6.1): "WSD", drawn by a workstation (highdicom's default says "DI", a
capture from a digital interface)."""

_SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SOP_CLASS_BY_NAME = {entry[0]: uid for uid, entry in UID_dictionary.items()}


def sc_from_analysis(analysis: Analysis, source: Dataset, *, model: str) -> Dataset:
    """The findings overlay of one analysis (boxes, probabilities, calls) as a Secondary Capture in ``source``'s
    study; ``source`` is the source image's dataset as pydicom reads it, ``model`` the Analyzer's
    :attr:`~hybridcxr.analyzer.Analyzer.model_version`."""
    from hybridcxr.viz.overlay import draw_overlay

    detection = analysis.detection
    rgb = draw_overlay(detection.radiograph, predictions=detection.boxes, probabilities=analysis.probabilities,
                       decisions=analysis.decisions, findings=list(analysis.probabilities), title=analysis.image_id)
    return secondary_capture(rgb, detection.radiograph, source, model=model)


def export_secondary_capture(overlay_rgb: np.ndarray, radiograph: Radiograph, path: str | Path, *, model: str,
                             source: Dataset | None = None,
                             series_description: str = SERIES_DESCRIPTION) -> Path:
    """Write ``overlay_rgb`` as a Secondary Capture at ``path`` (atomically); return the path.

    ``source`` is the source's header (:func:`hybridcxr.dicom_out.study.read_source`); None for a PNG or
    JPEG source, which starts a new study with a :class:`RadiographWarning`. See :func:`secondary_capture`.
    """
    return save(secondary_capture(overlay_rgb, radiograph, source, model=model,
                                  series_description=series_description), path)


def secondary_capture(overlay_rgb: np.ndarray, radiograph: Radiograph, source: Dataset | None, *, model: str,
                      series_description: str = SERIES_DESCRIPTION) -> Dataset:
    """The SC dataset of an overlay drawn from ``radiograph`` (whose header is ``source``, None if not DICOM).

    Raises:
        ValueError: ``overlay_rgb`` is not an (H, W, 3) uint8 array, or the description is too long for DICOM.
    """
    pixels = np.asarray(overlay_rgb)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape or pixels.dtype != np.uint8:
        raise ValueError(
            f"a secondary capture needs an (H, W, 3) uint8 RGB picture; got {pixels.dtype} of shape {pixels.shape}"
        )
    if len(series_description) > 64:
        raise ValueError(f"a Series Description has 64 characters at most; got {len(series_description)}")
    sc = _sc_image(np.ascontiguousarray(pixels), radiograph, source)
    if source is not None:
        join_study(sc, source)
    new_series(sc, series_description, SERIES_NUMBER, model=model, source=source)
    sc.BurnedInAnnotation = "YES"
    _reference_source(sc, radiograph)
    return sc


def _sc_image(pixels: np.ndarray, radiograph: Radiograph, source: Dataset | None) -> Dataset:
    """highdicom's Secondary Capture of the pixels, in the source's study or (a PNG) a new one."""
    from highdicom.sc import SCImage  # heavy import: only when a capture is written

    meta = radiograph.meta
    study_uid = str(source.get("StudyInstanceUID", "") or "") if source is not None else meta.study_uid
    if not study_uid:
        study_uid = generate_uid()
        warnings.warn(
            RadiographWarning(
                f"{meta.path}: the source has no Study Instance UID (not a DICOM); the secondary capture "
                "starts a new study, which PACS will not file beside the radiograph"
            ),
            stacklevel=4,
        )
    sc = SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        # highdicom requires an orientation for PATIENT; cleared below, as the picture cannot claim one
        patient_orientation=("L", "F"), study_instance_uid=study_uid, series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=f"hybridcxr {__version__}",
        software_versions=__version__, series_description=SERIES_DESCRIPTION, patient_sex=meta.sex)
    sc.PatientOrientation = None  # Type 2: present and empty, i.e. unknown
    sc.ConversionType = CONVERSION_TYPE
    age = dicom_age(meta.age_years)
    if age is not None:
        sc.PatientAge = age
    sc.DerivationDescription = "hybridcxr findings overlay (boxes, probabilities) drawn over the source image"
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
