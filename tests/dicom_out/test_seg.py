"""The lung Segmentation: filed in the source study as a series of ours, readable by highdicom, dciodvfy clean."""

from __future__ import annotations

import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from _dicom3tools import dciodvfy_errors
from PIL import Image

from hybridcxr.dicom_out.identity import MANUFACTURER, is_ours
from hybridcxr.dicom_out.seg import SERIES_NUMBER, export_segmentation
from hybridcxr.errors import InputError

SOURCES = ["dicom/nih-udacity/test1.dcm",
           "dicom/siim-acr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
           "dicom/siim-acr/Fake_MONOHR1.dcm"]
MODEL = "0123456789abcdef"


def lungs(shape=(1024, 1024)) -> tuple[np.ndarray, np.ndarray]:
    right, left = np.zeros(shape, bool), np.zeros(shape, bool)
    right[200:800, 150:450] = True  # the patient's right: the image's left half
    left[200:800, 600:900] = True
    return right, left


@pytest.mark.parametrize("name", SOURCES)
def test_segmentation_joins_the_study_and_passes_dciodvfy(name, shared_data, tmp_path):
    path = shared_data / name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing warns, and so nothing quotes a patient's name
        out = export_segmentation(*lungs(), path, tmp_path / "seg.dcm", model=MODEL)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    seg = hd.seg.segread(out)
    for keyword in ("StudyInstanceUID", "StudyDate", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        assert keyword in seg and seg.get(keyword) == source.get(keyword, ""), keyword
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID and seg.SeriesNumber == SERIES_NUMBER
    assert seg.Manufacturer == MANUFACTURER and is_ours(seg, MODEL)
    assert seg.SeriesDescription == "hybridcxr lung fields" and seg.BodyPartExamined == "CHEST"
    assert source.SOPInstanceUID in [uids[2] for uids in seg.get_source_image_uids()]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right lung", "Left lung"]
    assert dciodvfy_errors(out) == []


def test_segmentation_of_a_source_not_said_to_be_a_chest_passes_dciodvfy(shared_data, tmp_path):
    out = export_segmentation(*lungs(), shared_data / "dicom/nih-udacity/test4.dcm", tmp_path / "seg.dcm")
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert "BodyPartExamined" not in ds  # the source says RIBCAGE: no body part is claimed
    assert dciodvfy_errors(out) == []


def test_segmentation_without_model_still_says_who_made_it(shared_data, tmp_path):
    out = export_segmentation(*lungs(), shared_data / SOURCES[0], tmp_path / "seg.dcm")
    assert is_ours(pydicom.dcmread(out, stop_before_pixels=True))


def test_png_source_is_refused_naming_the_file(tmp_path):
    png = tmp_path / "chest.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png)
    with pytest.raises(InputError, match=r"chest\.png"):
        export_segmentation(*lungs((64, 64)), png, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_masks_of_another_size_or_empty_are_refused(shared_data, tmp_path):
    path = shared_data / SOURCES[0]
    with pytest.raises(InputError, match="do not match"):
        export_segmentation(*lungs((512, 512)), path, tmp_path / "seg.dcm")
    empty = np.zeros((1024, 1024), bool)
    with pytest.raises(InputError, match="no lung was found"):
        export_segmentation(empty, empty, path, tmp_path / "seg.dcm")
    assert list(tmp_path.iterdir()) == []
