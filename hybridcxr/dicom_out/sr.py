"""Findings back into PACS as a DICOM Structured Report: TID 1500 (Measurement Report) through highdicom.

One Comprehensive SR per source image, filed in the source's study (:mod:`hybridcxr.dicom_out.study`):

- each detector box is a planar ROI group (TID 1410): a closed POLYLINE of the box's corners in the source
  image's pixel frame (column, row; 0.0 is the top-left corner of the first pixel, as the detector's boxes
  are), referencing the source's SOP Instance; its finding a coded concept
  (:func:`hybridcxr.findings.finding_code`) and its detector score a "Probability" (DCM 122157, no units);
- each classifier finding is an image-level group (TID 1501): its probability and, as a qualitative
  evaluation "Presence of property" (DCM 121052), Present or Absent (SCT 52101004 / 272519000) at the
  model's threshold; where the classifier has "No finding", one more group (tracking identifier
  ``image: normal/abnormal``) calls the image Normal or Abnormal (SCT 17621005 / 263654008) as its finding
  type (DCM 121071 "Finding");
- every group names the algorithm: "hybridcxr", the package version, and the model version (the card's
  hash, ``model <16 hex digits>``) as its parameter; the observer context is a device (hybridcxr), never a
  person; the procedure reported is "XR Chest Single View" (LOINC 36554-4, as IHE RAD.IDR codes it).

A detector-only SR (no classifier) of an image without boxes holds one image-level group, ``image: no
boxes``, of finding type "No finding" (TID 1500 needs at least one). Body Part Examined is CHEST where the
source says chest: the SR IOD has no such attribute (dciodvfy warns: it makes the SR "Standard Extended"),
but PACS rules route and hang series by it; Laterality is left out (it means nothing for a report). Codes
of the local scheme ``99HYBRIDCXR`` are declared in the Coding Scheme Identification Sequence.

>>> sr = sr_from_analysis(analysis, pydicom.dcmread("IM0001.dcm"), model=analyzer.model_version)  # doctest: +SKIP
>>> save(sr, "out/sr/IM0001.dcm")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from hybridcxr import __version__
from hybridcxr.dicom_out.identity import MANUFACTURER
from hybridcxr.dicom_out.study import CHEST, is_chest, join_study, new_series, require_instance, without_patient
from hybridcxr.findings import LOCAL_SCHEME, LOCAL_SCHEME_NAME, NO_FINDING, finding_code

if TYPE_CHECKING:
    from hybridcxr.analyzer import Analysis
    from hybridcxr.detect.predict import Detection

SERIES_NUMBER = 9003
"""Series Number of the SR series (beside the overlays' 9001 and the lungs' 9002)."""
SERIES_DESCRIPTION = "hybridcxr findings (structured report)"
ALGORITHM = "hybridcxr"
NO_BOXES_IDENTIFIER = "image: no boxes"
"""Tracking identifier of the one group of a detector-only SR where the detector found no box."""
CALL_IDENTIFIER = "image: normal/abnormal"
"""Tracking identifier of the group whose finding type is the image's call, Normal or Abnormal."""
PROCEDURE = ("36554-4", "LN", "XR Chest Single View")
"""Procedure reported: LOINC's single-view chest radiograph (as IHE RAD.IDR's example procedure codes it)."""


def sr_from_analysis(analysis: Analysis, source: Dataset, *, model: str) -> Dataset:
    """The SR of one analysis: its boxes and the classifier's probabilities and calls, in ``source``'s study.

    ``source`` is the source image's dataset as pydicom reads it (pixels not needed); ``model`` is
    :attr:`hybridcxr.analyzer.Analyzer.model_version`. Raises InputError naming the file where the source has
    no SOP Instance to reference (e.g. it came from a PNG).
    """
    detection = analysis.detection
    return structured_report(detection.boxes, source, model=model, path=detection.radiograph.meta.path,
                             probabilities=analysis.probabilities, decisions=analysis.decisions)


def sr_from_detection(detection: Detection, source: Dataset, *, model: str) -> Dataset:
    """The SR of the detector alone (``detect --sr``): its boxes and scores, no classifier findings."""
    return structured_report(detection.boxes, source, model=model, path=detection.radiograph.meta.path)


def structured_report(boxes: pd.DataFrame, source: Dataset, *, model: str, path: str = "the source",
                      probabilities: Mapping[str, float] | None = None,
                      decisions: Mapping[str, bool | None] | None = None) -> Dataset:
    """A TID 1500 Comprehensive SR of ``boxes`` (finding, score, x_min..y_max in source pixels) and, where
    given, image-level ``probabilities`` and ``decisions``; see the module doc for its content."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    require_instance(source, path, "a Structured Report")
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM, version=__version__, parameters=[f"model {model}"])
    groups: list[Any] = [_box_group(row, i, source, algorithm) for i, row in
                         enumerate(boxes.itertuples(index=False), start=1)]
    if probabilities:
        groups += _image_groups(probabilities, decisions or {}, source, algorithm)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_device(model)),
        procedure_reported=hd.sr.CodedConcept(*PROCEDURE), title=codes.DCM.ImagingMeasurementReport,
        imaging_measurements=groups or [_nothing_found(source, algorithm)])
    sr = hd.sr.ComprehensiveSR(
        evidence=[without_patient(source)], content=report, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True)
    join_study(sr, source)
    new_series(sr, SERIES_DESCRIPTION, SERIES_NUMBER, model=model, source=source, anatomy=False)
    if is_chest(source):  # not in the SR IOD (dciodvfy: a warning, "Standard Extended"), but PACS route on it
        sr.BodyPartExamined = CHEST
    sr.CodingSchemeIdentificationSequence = [_local_scheme()]
    return sr


def _device(model: str):
    """The observer: this software as a device, with a UID fixed per model version."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    attributes = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[ALGORITHM, model]), name=ALGORITHM, manufacturer_name=MANUFACTURER,
        model_name=f"hybridcxr {__version__} model {model}"[:64])
    return hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=attributes)


def _probability(value: float, algorithm: Any):
    """A probability measurement (DCM "Probability", no units) by ``algorithm``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.Measurement(name=codes.DCM.Probability, value=float(value), unit=codes.UCUM.NoUnits,
                             algorithm_id=algorithm)


def _box_group(row: Any, number: int, source: Dataset, algorithm: Any):
    """One box as a TID 1410 planar ROI: closed polyline of its corners, finding and score."""
    import highdicom as hd

    x0, y0, x1, y1 = (float(v) for v in (row.x_min, row.y_min, row.x_max, row.y_max))
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
        source_image=hd.sr.SourceImageForRegion(str(source.SOPClassUID), str(source.SOPInstanceUID)))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"box {number}: {row.finding}"[:64]),
        referenced_region=region, finding_type=finding_code(row.finding), algorithm_id=algorithm,
        measurements=[_probability(row.score, algorithm)])


def _image_groups(probabilities: Mapping[str, float], decisions: Mapping[str, bool | None], source: Dataset,
                  algorithm: Any) -> list[Any]:
    """One TID 1501 group per classifier finding (probability, present/absent), and the normal/abnormal call."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    image = [hd.sr.SourceImageForMeasurementGroup(str(source.SOPClassUID), str(source.SOPInstanceUID))]
    groups = []
    for finding, probability in probabilities.items():
        evaluations = []
        if decisions.get(finding) is not None:  # None: a finding the model never learned carries no call
            present = codes.SCT.Present if decisions[finding] else codes.SCT.Absent
            evaluations.append(hd.sr.QualitativeEvaluation(codes.DCM.PresenceOfProperty, present))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"image: {finding}"[:64]),
            finding_type=finding_code(finding), algorithm_id=algorithm, source_images=image,
            measurements=[_probability(probability, algorithm)], qualitative_evaluations=evaluations or None))
    if decisions.get(NO_FINDING) is not None:
        call = codes.SCT.Normal if decisions[NO_FINDING] else codes.SCT.Abnormal
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=CALL_IDENTIFIER),
            finding_type=call, algorithm_id=algorithm, source_images=image))
    return groups


def _nothing_found(source: Dataset, algorithm: Any):
    """The one group of a detector-only SR without boxes (TID 1500 needs one): finding type "No finding"."""
    import highdicom as hd

    image = [hd.sr.SourceImageForMeasurementGroup(str(source.SOPClassUID), str(source.SOPInstanceUID))]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=NO_BOXES_IDENTIFIER),
        finding_type=finding_code(NO_FINDING), algorithm_id=algorithm, source_images=image)


def _local_scheme() -> Dataset:
    """The Coding Scheme Identification item of hybridcxr's own codes (:data:`hybridcxr.findings.LOCAL_SCHEME`)."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    item.CodingSchemeVersion = "1"
    return item
