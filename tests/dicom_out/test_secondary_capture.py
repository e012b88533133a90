from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.uid import UID

from _dicom3tools import dciodvfy_errors

from hybridcxr.dicom_out.identity import is_ours
from hybridcxr.dicom_out.secondary_capture import SECONDARY_CAPTURE, export_secondary_capture, sc_from_analysis
from hybridcxr.dicom_out.study import dicom_age, read_source
from hybridcxr.errors import RadiographWarning
from hybridcxr.io import read_radiograph
from hybridcxr.viz.overlay import draw_overlay

NIH_DICOM = "dicom/nih-udacity/test1.dcm"  # NIH image wrapped as a Secondary Capture, Modality DX, PA
SIIM_DICOM = "dicom/siim-acr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"  # CR, with names
MODEL = "0123456789abcdef"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def overlay_of(radiograph, max_side: int | None = 384) -> np.ndarray:
    h, w = radiograph.height, radiograph.width
    boxes = pd.DataFrame(
        [("Cardiomegaly", 0.3 * w, 0.45 * h, 0.7 * w, 0.8 * h, 0.91)],
        columns=["finding", "x_min", "y_min", "x_max", "y_max", "score"],
    )
    return draw_overlay(radiograph, predictions=boxes, probabilities={"Cardiomegaly": 0.91, "Nodule/Mass": 0.12},
                        decisions={"Cardiomegaly": True, "Nodule/Mass": False}, max_side=max_side)


def export_quietly(rgb, radiograph, path, **kwargs):
    """Export with every warning turned into an error: a DICOM source must not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return export_secondary_capture(rgb, radiograph, path, model=MODEL, source=read_source(radiograph.path),
                                        **kwargs)


def assert_no_identifiers(ds: pydicom.Dataset) -> None:
    """A PNG has no names, ids or birth dates, so they are present (Type 2) and empty."""
    for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
        assert keyword in ds and not str(ds[keyword].value or "")


def assert_patient_of(ds: pydicom.Dataset, path) -> None:
    """The patient and study modules are the source's, as it has them (empty where it has none)."""
    source = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyInstanceUID"):
        assert keyword in ds and ds.get(keyword) == source.get(keyword, ""), keyword


@pytest.fixture(scope="module")
def nih(shared_data):
    return read_radiograph(shared_data / NIH_DICOM)


@pytest.fixture
def phantom(tmp_path):
    from hybridcxr.data.phantom import make_phantom_dataset

    make_phantom_dataset(tmp_path / "phantoms", n=1, size=(256, 224))
    (path,) = sorted((tmp_path / "phantoms").glob("*/*.dicom"))
    return path, read_radiograph(path)


def test_real_dicom_overlay_is_a_secondary_capture_in_the_source_study(nih, tmp_path):
    rgb = overlay_of(nih)
    out = export_quietly(rgb, nih, tmp_path / "out" / "overlay.dcm")
    assert out == tmp_path / "out" / "overlay.dcm"

    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == SECONDARY_CAPTURE == ds.file_meta.MediaStorageSOPClassUID
    assert ds.StudyInstanceUID == nih.meta.study_uid
    assert ds.SeriesInstanceUID != nih.meta.series_uid
    assert ds.SOPInstanceUID != nih.meta.sop_uid
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    for uid in (ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert UID(uid).is_valid
    assert ds.Modality == "OT" and ds.ConversionType == "WSD"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3 and ds.BitsStored == 8
    assert ds.SeriesDescription == "hybridcxr findings overlay"
    assert ds.Manufacturer == "hybridcxr" and ds.ManufacturerModelName.startswith("hybridcxr ")
    assert is_ours(ds, MODEL) and ds.BurnedInAnnotation == "YES"
    assert ds.BodyPartExamined == "CHEST" and "Laterality" not in ds  # 2C: absent beside an unpaired part
    assert "PixelSpacing" not in ds  # the picture (legend, downscaled panel) has no single spacing
    assert (ds.Rows, ds.Columns) == rgb.shape[:2]
    pixels = ds.pixel_array
    assert pixels.dtype == np.uint8 and pixels.shape == rgb.shape
    assert np.array_equal(pixels, rgb)


def test_real_dicom_source_is_referenced_and_demographics_copied(nih, tmp_path):
    ds = pydicom.dcmread(export_quietly(overlay_of(nih), nih, tmp_path / "overlay.dcm"))
    (source,) = ds.SourceImageSequence
    assert source.ReferencedSOPInstanceUID == nih.meta.sop_uid
    assert source.ReferencedSOPClassUID == SECONDARY_CAPTURE  # the NIH wrapper is itself a Secondary Capture
    assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == nih.meta.series_uid
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == nih.meta.sop_uid
    assert nih.sex == "M" and nih.age_years == 81.0  # the header says "81": written back the DICOM way
    assert ds.PatientSex == "M" and ds.PatientAge == "081Y"
    assert_patient_of(ds, nih.path)


def test_export_leaves_no_temporary_files_and_replaces_an_older_file(nih, tmp_path):
    target = tmp_path / "overlay.dcm"
    target.write_bytes(b"an older export")
    rgb = overlay_of(nih, max_side=200)
    first = pydicom.dcmread(export_quietly(rgb, nih, target))
    second = pydicom.dcmread(export_quietly(rgb, nih, target))
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.dcm"]  # no ".overlay.*.dcm" left beside it
    assert first.StudyInstanceUID == second.StudyInstanceUID == nih.meta.study_uid
    assert first.SeriesInstanceUID != second.SeriesInstanceUID  # every export is a series of its own
    assert first.SOPInstanceUID != second.SOPInstanceUID


def test_a_failed_write_leaves_nothing_behind(nih, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pydicom.Dataset, "save_as", broken)
    with pytest.raises(OSError, match="disk full"):
        export_quietly(overlay_of(nih, max_side=128), nih, tmp_path / "overlay.dcm")
    assert list(tmp_path.iterdir()) == []


def test_phantom_dicom_round_trips(phantom, tmp_path):
    path, radiograph = phantom
    header = pydicom.dcmread(path, stop_before_pixels=True)
    rgb = overlay_of(radiograph, max_side=None)
    ds = pydicom.dcmread(export_quietly(rgb, radiograph, tmp_path / "phantom.dcm"))

    assert ds.StudyInstanceUID == header.StudyInstanceUID
    assert ds.SeriesInstanceUID != header.SeriesInstanceUID
    assert ds.SOPInstanceUID != header.SOPInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPClassUID == DX_FOR_PRESENTATION == header.SOPClassUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == header.SeriesInstanceUID
    assert ds.PatientSex == (header.PatientSex or "")
    assert ds.get("PatientAge") == dicom_age(radiograph.age_years)
    assert_patient_of(ds, path)  # the phantom's PatientName "PHANTOM^n" and PatientID too
    assert np.array_equal(ds.pixel_array, rgb)
    # the capture reads back through our own reader (Modality OT is a projection modality there)
    again = read_radiograph(tmp_path / "phantom.dcm")
    assert again.pixels.shape == rgb.shape[:2]


def test_png_source_starts_a_new_study_with_a_warning(tmp_path):
    png = tmp_path / "chest.png"
    Image.fromarray(np.linspace(0, 255, 160 * 128, dtype=np.uint8).reshape(160, 128)).save(png)
    radiograph = read_radiograph(png)
    assert radiograph.meta.study_uid is None
    rgb = overlay_of(radiograph, max_side=None)
    with pytest.warns(RadiographWarning, match="no Study Instance UID.*new study"):
        out = export_secondary_capture(rgb, radiograph, tmp_path / "out" / "chest.dcm", model=MODEL)
    ds = pydicom.dcmread(out)
    assert UID(ds.StudyInstanceUID).is_valid
    assert "SourceImageSequence" not in ds and "ReferencedSeriesSequence" not in ds
    assert ds.PatientSex == "" and "PatientAge" not in ds
    assert_no_identifiers(ds)
    assert np.array_equal(ds.pixel_array, rgb)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["chest.dcm"]


def test_each_png_export_gets_its_own_study(tmp_path):
    png = tmp_path / "chest.png"
    Image.fromarray(np.full((130, 130), 90, dtype=np.uint8)).save(png)
    radiograph = read_radiograph(png)
    rgb = overlay_of(radiograph, max_side=None)
    with pytest.warns(RadiographWarning):
        a = pydicom.dcmread(export_secondary_capture(rgb, radiograph, tmp_path / "a.dcm", model=MODEL))
        b = pydicom.dcmread(export_secondary_capture(rgb, radiograph, tmp_path / "b.dcm", model=MODEL))
    assert a.StudyInstanceUID != b.StudyInstanceUID


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 12), dtype=np.uint8),  # grey, not RGB
        np.zeros((10, 12, 4), dtype=np.uint8),  # RGBA
        np.zeros((10, 12, 3), dtype=np.float32),  # floats
        np.zeros((0, 12, 3), dtype=np.uint8),  # empty
    ],
)
def test_not_an_rgb_picture_is_refused_before_anything_is_written(bad, nih, tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        export_secondary_capture(bad, nih, tmp_path / "overlay.dcm", model=MODEL)
    assert list(tmp_path.iterdir()) == []


def test_custom_description_is_written(nih, tmp_path):
    rgb = overlay_of(nih, max_side=128)
    ds = pydicom.dcmread(export_quietly(rgb, nih, tmp_path / "o.dcm", series_description="AI findings (test)"))
    assert ds.SeriesDescription == "AI findings (test)"


@pytest.mark.parametrize("name", [NIH_DICOM, SIIM_DICOM, "dicom/siim-acr/Fake_MONOHR1.dcm",
                                  "dicom/nih-udacity/test4.dcm"])  # test4: body part RIBCAGE
def test_capture_passes_dciodvfy(name, shared_data, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RadiographWarning)  # test4's body part
        radiograph = read_radiograph(shared_data / name)
    out = export_quietly(overlay_of(radiograph, max_side=256), radiograph, tmp_path / "sc.dcm")
    assert_patient_of(pydicom.dcmread(out), shared_data / name)
    assert dciodvfy_errors(out) == []


def test_png_capture_passes_dciodvfy(tmp_path):
    png = tmp_path / "chest.png"
    Image.fromarray(np.full((130, 130), 90, dtype=np.uint8)).save(png)
    radiograph = read_radiograph(png)
    with pytest.warns(RadiographWarning):
        out = export_secondary_capture(overlay_of(radiograph, max_side=None), radiograph, tmp_path / "c.dcm",
                                       model=MODEL)
    assert dciodvfy_errors(out) == []


@pytest.mark.parametrize(
    ("years", "expected"),
    [(81.0, "081Y"), (81.9, "081Y"), (1.0, "001Y"), (0.5, "006M"), (0.02, "007D"), (1200.0, "999Y"),
     (None, None), (float("nan"), None), (-1.0, None)],
)
def test_dicom_age(years, expected):
    assert dicom_age(years) == expected



def test_sc_from_analysis_draws_the_analysis_into_the_source_study(nih, shared_data, tmp_path):
    from hybridcxr.analyzer import Analysis
    from hybridcxr.detect.predict import Detection
    from hybridcxr.dicom_out.study import save
    from hybridcxr.viz.overlay import draw_overlay

    boxes = pd.DataFrame([("Cardiomegaly", 0.91, 300.0, 450.0, 700.0, 800.0)],
                         columns=["finding", "score", "x_min", "y_min", "x_max", "y_max"])
    probabilities, decisions = {"Cardiomegaly": 0.9, "No finding": 0.1}, {"Cardiomegaly": True, "No finding": False}
    analysis = Analysis(Detection(nih, boxes), probabilities, decisions, nih.age_years, nih.sex)
    source = pydicom.dcmread(shared_data / NIH_DICOM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = sc_from_analysis(analysis, source, model=MODEL)
    expected = draw_overlay(nih, predictions=boxes, probabilities=probabilities, decisions=decisions,
                            findings=list(probabilities), title=nih.image_id)
    assert np.array_equal(ds.pixel_array, expected)
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert is_ours(ds, MODEL) and ds.BurnedInAnnotation == "YES"
    assert dciodvfy_errors(save(ds, tmp_path / "sc.dcm")) == []
