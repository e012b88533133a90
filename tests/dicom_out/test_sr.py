"""The TID 1500 SR: boxes and probabilities read back with highdicom, the source study joined, dciodvfy clean."""

from __future__ import annotations

import warnings

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from _dicom3tools import dciodvfy_errors

from hybridcxr.analyzer import Analysis
from hybridcxr.detect.predict import Detection
from hybridcxr.dicom_out.identity import is_ours
from hybridcxr.dicom_out.sr import (
    CALL_IDENTIFIER,
    NO_BOXES_IDENTIFIER,
    SERIES_NUMBER,
    sr_from_analysis,
    sr_from_detection,
)
from hybridcxr.dicom_out.study import read_source, save
from hybridcxr.errors import InputError
from hybridcxr.findings import CODES, LOCAL_SCHEME, NO_FINDING, VINDR_PCXR_LESIONS
from hybridcxr.io.dicom import read_dicom_metadata
from hybridcxr.io.radiograph import Radiograph, RadiographMeta

SIIM = "dicom/siim-acr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
NIH = "dicom/nih-udacity/test1.dcm"
MODEL = "0123456789abcdef"
BOXES = pd.DataFrame(
    [("Cardiomegaly", 0.91234, 300.25, 400.5, 700.75, 800.0), ("Nodule/Mass", 0.4, 10.0, 20.125, 50.5, 60.0),
     ("Pleural effusion", 0.05, 0.0, 0.0, 1024.0, 1024.0)],
    columns=["finding", "score", "x_min", "y_min", "x_max", "y_max"])
PROBABILITIES = {"Cardiomegaly": 0.8123, "Pleural effusion": 0.1, NO_FINDING: 0.05}
DECISIONS = {"Cardiomegaly": True, "Pleural effusion": False, NO_FINDING: False}


def analysis_of(path, boxes=BOXES, probabilities=PROBABILITIES, decisions=DECISIONS) -> Analysis:
    """An Analysis of ``path`` as the Analyzer returns it (header-read metadata; the pixels are not needed)."""
    meta = read_dicom_metadata(path)
    radiograph = Radiograph(np.zeros((4, 4), np.float32), meta)
    return Analysis(Detection(radiograph, boxes.assign(image_id=meta.image_id)), dict(probabilities),
                    dict(decisions), meta.age_years, meta.sex)


def written(tmp_path, path, **kwargs):
    source = read_source(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DICOM source must not warn
        sr = sr_from_analysis(analysis_of(path, **kwargs), pydicom.dcmread(path, stop_before_pixels=True),
                              model=MODEL)
    return source, save(sr, tmp_path / "sr" / "x.dcm")


def boxes_read_back(sr) -> pd.DataFrame:
    rows = []
    for group in sr.content.get_planar_roi_measurement_groups():
        corners = np.asarray(group.roi.value)
        (probability,) = [m.value for m in group.get_measurements() if m.name.value == "122157"]
        rows.append((group.finding_type.value, probability, *corners.min(axis=0), *corners.max(axis=0),
                     group.roi.graphic_type.value, bool(np.array_equal(corners[0], corners[-1]))))
    return pd.DataFrame(rows, columns=["code", "score", "x_min", "y_min", "x_max", "y_max", "type", "closed"])


@pytest.mark.parametrize("name", [SIIM, NIH])
def test_sr_reads_back_the_boxes_and_probabilities(name, shared_data, tmp_path):
    path = shared_data / name
    source, out = written(tmp_path, path)
    sr = hd.sr.srread(out)
    back = boxes_read_back(sr)
    assert back["code"].tolist() == [CODES[f][0] for f in BOXES["finding"]]
    assert np.allclose(back[["x_min", "y_min", "x_max", "y_max"]], BOXES[["x_min", "y_min", "x_max", "y_max"]],
                       atol=0.5)
    assert np.allclose(back["score"], BOXES["score"], atol=1e-6)
    assert set(back["type"]) == {"POLYLINE"} and back["closed"].all()
    for group in sr.content.get_planar_roi_measurement_groups():
        (ref,) = group.roi.ContentSequence[0].ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
    image = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    for finding, probability in PROBABILITIES.items():
        group = image[f"image: {finding}"]
        assert group.finding_type.value == CODES[finding][0]
        assert group.get_measurements()[0].value == pytest.approx(probability)
        (presence,) = group.get_qualitative_evaluations()
        assert presence.value.meaning == ("Present" if DECISIONS[finding] else "Absent")
    assert image[CALL_IDENTIFIER].finding_type.value == "263654008"  # Abnormal: "No finding" is not called


@pytest.mark.parametrize("name", [SIIM, NIH])
def test_sr_joins_the_source_study_as_a_series_of_ours(name, shared_data, tmp_path):
    source, out = written(tmp_path, shared_data / name)
    ds = pydicom.dcmread(out)
    for keyword in ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        assert keyword in ds and ds.get(keyword) == source.get(keyword, ""), keyword
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SeriesNumber == SERIES_NUMBER
    assert "structured report" in ds.SeriesDescription
    assert is_ours(ds, MODEL) and ds.BodyPartExamined == "CHEST" and "Laterality" not in ds
    assert ds.PatientAge in ("062Y", "081Y")  # the sources say "62" and "81": written as Age Strings
    schemes = {item.CodingSchemeDesignator for item in ds.CodingSchemeIdentificationSequence}
    assert LOCAL_SCHEME in schemes


@pytest.mark.parametrize("name", [SIIM, NIH, "dicom/siim-acr/Fake_MONOHR1.dcm", "dicom/nih-udacity/test4.dcm",
                                  "dicom/nih-udacity/test6.dcm"])
def test_sr_passes_dciodvfy(name, shared_data, tmp_path):
    _, out = written(tmp_path, shared_data / name)
    assert dciodvfy_errors(out) == []


#: One box of every VinDr-PCXR lesion (SNOMED-coded or in our scheme), and a classifier over three of them.
LESION_BOXES = pd.DataFrame([(name, 0.5, 10.0 + i, 20.0, 50.0 + i, 60.0) for i, name in enumerate(VINDR_PCXR_LESIONS)],
                            columns=["finding", "score", "x_min", "y_min", "x_max", "y_max"])
LESION_PROBABILITIES = {"Boot-shaped heart": 0.7, "Bronchectasis": 0.2, "Other nodule/mass": 0.4, NO_FINDING: 0.1}
LESION_DECISIONS = {"Boot-shaped heart": True, "Bronchectasis": False, "Other nodule/mass": None, NO_FINDING: False}


def lesion_sr(shared_data, tmp_path):
    return written(tmp_path, shared_data / SIIM, boxes=LESION_BOXES, probabilities=LESION_PROBABILITIES,
                   decisions=LESION_DECISIONS)[1]


def test_sr_codes_every_paediatric_lesion(shared_data, tmp_path):
    sr = hd.sr.srread(lesion_sr(shared_data, tmp_path))
    types = [g.finding_type for g in sr.content.get_planar_roi_measurement_groups()]
    assert [(t.value, t.scheme_designator) for t in types] == [CODES[f][:2] for f in VINDR_PCXR_LESIONS]
    schemes = {CODES[f][1] for f in VINDR_PCXR_LESIONS}
    assert schemes == {"SCT", LOCAL_SCHEME}  # those without a SNOMED concept are coded in our scheme
    image = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    boot = image["image: Boot-shaped heart"]
    assert (boot.finding_type.value, boot.finding_type.scheme_designator) == ("BOOT-HEART", LOCAL_SCHEME)
    assert image["image: Bronchectasis"].finding_type.value == "12295008"
    assert image["image: Other nodule/mass"].get_qualitative_evaluations() == []  # no call: none made


def test_sr_of_paediatric_lesions_passes_dciodvfy(shared_data, tmp_path):
    assert dciodvfy_errors(lesion_sr(shared_data, tmp_path)) == []


def test_a_datasets_own_finding_names_get_private_codes_and_pass_dciodvfy(shared_data, tmp_path):
    own = BOXES.assign(finding=["Rib notching", "Cardiomegaly", "Pacemaker lead"])
    _, out = written(tmp_path, shared_data / SIIM, boxes=own, probabilities={"Rib notching": 0.6, NO_FINDING: 0.2},
                     decisions={"Rib notching": True, NO_FINDING: False})
    sr = hd.sr.srread(out)
    types = [g.finding_type for g in sr.content.get_planar_roi_measurement_groups()]
    assert [t.meaning for t in types] == ["Rib notching", "Cardiomegaly", "Pacemaker lead"]
    assert [t.scheme_designator for t in types] == [LOCAL_SCHEME, "SCT", LOCAL_SCHEME]
    assert dciodvfy_errors(out) == []


def test_observer_is_a_device_and_the_algorithm_is_named(shared_data, tmp_path):
    _, out = written(tmp_path, shared_data / SIIM)
    sr = hd.sr.srread(out)
    (observer,) = sr.content.get_observer_contexts()
    assert observer.observer_type.meaning == "Device"
    text = str(pydicom.dcmread(out))
    assert f"model {MODEL}" in text and "Algorithm Name" in text and "Algorithm Version" in text


def test_detector_only_sr_has_boxes_and_no_image_findings(shared_data, tmp_path):
    path = shared_data / NIH
    analysis = analysis_of(path)
    sr = sr_from_detection(analysis.detection, pydicom.dcmread(path, stop_before_pixels=True), model=MODEL)
    read = hd.sr.srread(save(sr, tmp_path / "d.dcm"))
    assert len(read.content.get_planar_roi_measurement_groups()) == len(BOXES)
    assert read.content.get_image_measurement_groups() == []
    assert dciodvfy_errors(tmp_path / "d.dcm") == []


def test_no_boxes_still_gives_an_sr(shared_data, tmp_path):
    _, out = written(tmp_path, shared_data / NIH, boxes=BOXES.iloc[:0])
    assert hd.sr.srread(out).content.get_planar_roi_measurement_groups() == []
    assert dciodvfy_errors(out) == []


def test_a_source_without_sop_instance_is_refused_naming_the_file(shared_data):
    path = shared_data / NIH
    source = pydicom.dcmread(path, stop_before_pixels=True)
    del source.SOPInstanceUID
    with pytest.raises(InputError, match=r"test1\.dcm: the source has no SOPInstanceUID"):
        sr_from_analysis(analysis_of(path), source, model=MODEL)


def test_png_analysis_cannot_get_an_sr(tmp_path):
    meta = RadiographMeta(path=str(tmp_path / "chest.png"), image_id="chest")
    analysis = Analysis(Detection(Radiograph(np.zeros((4, 4), np.float32), meta), BOXES), {}, {}, None, None)
    with pytest.raises(InputError, match=r"chest\.png: the source has no StudyInstanceUID, SOPClassUID"):
        sr_from_analysis(analysis, pydicom.Dataset(), model=MODEL)


def test_detector_only_sr_without_boxes_is_valid(shared_data, tmp_path):
    path = shared_data / NIH
    analysis = analysis_of(path, boxes=BOXES.iloc[:0])
    sr = sr_from_detection(analysis.detection, pydicom.dcmread(path, stop_before_pixels=True), model=MODEL)
    read = hd.sr.srread(save(sr, tmp_path / "empty.dcm"))
    assert read.content.get_planar_roi_measurement_groups() == []
    (group,) = read.content.get_image_measurement_groups()
    assert group.tracking_identifier == NO_BOXES_IDENTIFIER and group.finding_type.value == CODES[NO_FINDING][0]
    assert dciodvfy_errors(tmp_path / "empty.dcm") == []


def test_a_full_source_dataset_with_pixels_is_taken_as_it_is(shared_data, tmp_path):
    """The PACS client hands over what it retrieved: the whole instance, pixels and all; it is not changed."""
    path = shared_data / SIIM
    source = pydicom.dcmread(path)
    before = len(source)
    sr = sr_from_analysis(analysis_of(path), source, model=MODEL)
    assert len(source) == before and "PixelData" in source and "PixelData" not in sr
    assert sr.PatientName == source.PatientName
    assert dciodvfy_errors(save(sr, tmp_path / "sr.dcm")) == []
