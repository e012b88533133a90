"""The service's own checks, called directly: pixels counted from the header before decoding, the upload copied
under its byte limit, the demographics form fields, decode errors that never show the temporary path, model facts.

The same checks through HTTP (and with the models loaded) are in test_api.py; these need no model.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hybridcxr.errors import RadiographWarning
from hybridcxr.serve.service import (
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    _check_pixels,
    _copy_limited,
    _decode,
    model_info,
    parse_demographics,
)
from hybridcxr.serve.uploads import MIB, ServiceError


def _image(path: Path, width: int, height: int) -> Path:
    Image.fromarray(np.zeros((height, width), np.uint8)).save(path)
    return path


def _dicom(path: Path, pixels: np.ndarray | None = None, *, modality: str = "DX", **elements) -> Path:
    """A small DICOM file; with ``pixels`` None it has no Pixel Data, only the ``elements`` given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _refused(call, status: int, code: str) -> ServiceError:
    with pytest.raises(ServiceError) as err:
        call()
    assert (err.value.status_code, err.value.code) == (status, code), err.value.detail
    return err.value


# -- the pixel check before decoding ----------------------------------------------------------------------------
@pytest.mark.parametrize(("suffix", "kind"), [(".png", "png"), (".jpg", "jpeg")])
@pytest.mark.parametrize(("width", "height", "max_pixels", "code"), [
    (200, 100, 20_000, None),  # exactly the limit is accepted
    (200, 100, 19_999, "too_many_pixels"),
    (MIN_SIDE, 300, DEFAULT_MAX_PIXELS, None),
    (MIN_SIDE - 1, 300, DEFAULT_MAX_PIXELS, "not_a_radiograph"),  # too narrow
    (300, MIN_SIDE - 1, DEFAULT_MAX_PIXELS, "not_a_radiograph"),  # too low
])
def test_image_headers_are_checked_before_decoding(tmp_path, suffix, kind, width, height, max_pixels, code):
    path = _image(tmp_path / f"upload{suffix}", width, height)
    if code is None:
        assert _check_pixels(path, kind, max_pixels) == width * height  # the pixels the budget counts
    else:
        error = _refused(lambda: _check_pixels(path, kind, max_pixels), 422, code)
        assert f"{width} x {height}" in error.detail and str(tmp_path) not in error.detail


def test_dicom_rows_and_columns_are_checked_without_reading_pixel_data(tmp_path):
    huge = _dicom(tmp_path / "huge.dcm", Rows=40_000, Columns=40_000)  # claims 1.6 G pixels, holds none
    error = _refused(lambda: _check_pixels(huge, "dicom", DEFAULT_MAX_PIXELS), 422, "too_many_pixels")
    assert "40000 x 40000" in error.detail and "64,000,000" in error.detail
    thin = _dicom(tmp_path / "thin.dcm", Rows=2000, Columns=10)
    _refused(lambda: _check_pixels(thin, "dicom", DEFAULT_MAX_PIXELS), 422, "not_a_radiograph")
    assert _check_pixels(_dicom(tmp_path / "ok.dcm", Rows=2000, Columns=1500), "dicom", DEFAULT_MAX_PIXELS) == 3_000_000


@pytest.mark.parametrize(("name", "content", "kind", "code"), [
    ("nosize.dcm", None, "dicom", "not_a_radiograph"),  # no Rows/Columns: refused, never decoded blind
    ("garbage.dcm", b"\x00" * 128 + b"DICM" + b"\xff" * 40, "dicom", "undecodable"),
    ("cut.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "png", "undecodable"),
])
def test_a_header_that_says_nothing_is_refused_before_decoding(tmp_path, name, content, kind, code):
    """The pixel check fails closed: a size it cannot read is a 422, not a file handed to the decoder."""
    path = tmp_path / name
    if content is None:
        _dicom(path)
    else:
        path.write_bytes(content)
    _refused(lambda: _check_pixels(path, kind, 1), 422, code)


# -- the upload copy --------------------------------------------------------------------------------------------
def test_upload_is_copied_up_to_its_byte_limit(tmp_path):
    data = bytes(range(256)) * (MIB // 256) * 2 + b"tail"  # 2 MiB + 4 bytes: more than one read block
    assert _copy_limited(io.BytesIO(data), tmp_path / "ok", len(data)) == len(data)
    assert (tmp_path / "ok").read_bytes() == data
    error = _refused(lambda: _copy_limited(io.BytesIO(data), tmp_path / "big", len(data) - 1), 413, "upload_too_large")
    assert "--max-upload-mb" in error.detail
    assert (tmp_path / "big").stat().st_size <= 2 * MIB, "copying stops at the block that passes the limit"


# -- the demographics form fields -------------------------------------------------------------------------------
@pytest.mark.parametrize(("age", "sex", "expected"), [
    (None, None, (None, None)),
    ("", "", (None, None)),  # empty means "use the header"
    ("62", None, (62.0, None)),
    ("062Y", "f", (62.0, "F")),
    ("003M", "male", (0.25, "M")),
])
def test_demographics_form_fields(age, sex, expected):
    assert parse_demographics(age, sex) == expected


@pytest.mark.parametrize(("age", "sex", "code", "shown"), [
    ("old", None, "bad_age", "'old'"),
    ("200", None, "bad_age", "'200'"),  # over 130 years
    ("-5", None, "bad_age", "'-5'"),
    ("x" * 100, None, "bad_age", "'" + "x" * 20 + "'"),  # the echo is cut short
    (None, "O", "bad_sex", "'O' is not M or F"),
    ("62", "unknown", "bad_sex", "'unknown'"),
])
def test_bad_demographics_form_fields_are_422(age, sex, code, shown):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RadiographWarning)
        error = _refused(lambda: parse_demographics(age, sex), 422, code)
    assert shown in error.detail


# -- decoding ---------------------------------------------------------------------------------------------------
def test_decode_reads_a_radiograph(tmp_path):
    pixels = np.tile(np.arange(100, dtype=np.uint16) * 40, (80, 1))
    radiograph = _decode(_dicom(tmp_path / "abc123.dcm", pixels, PatientAge="045Y", PatientSex="F"))
    assert (radiograph.height, radiograph.width) == (80, 100)
    assert radiograph.age_years == 45.0 and radiograph.sex == "F"


@pytest.mark.parametrize(("name", "make", "code", "words"), [
    ("abc123.dcm", lambda p: _dicom(p, np.ones((80, 100)), modality="CT"), "not_a_radiograph", "Modality CT"),
    ("abc123.dcm", lambda p: _dicom(p), "not_a_radiograph", "no Pixel Data"),
    ("abc123.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "undecodable", "cannot decode the file"),
])
def test_decode_errors_are_422_without_the_temporary_path(tmp_path, name, make, code, words):
    path = tmp_path / name
    make(path)
    error = _refused(lambda: _decode(path), 422, code)
    assert words in error.detail
    assert str(tmp_path) not in error.detail and "abc123" not in error.detail
    assert "allow_modality" not in error.detail, "the service has no such switch"


# -- model facts ------------------------------------------------------------------------------------------------
def test_model_info_gives_the_cards_facts_and_no_local_paths():
    card = {"kind": "hybridcxr classifier", "card_version": 2, "versions": {"hybridcxr": "1.0"},
            "saved_at": "2024-01-01T00:00:00", "findings": ["A", "B"], "groups": ["yolo", "cnn", "age", "sex"],
            "threshold_rule": "youden", "val_macro_auroc": 0.8, "best_epoch": 3,
            "backbone": {"name": "densenet121", "size": 224, "fine_tuned": False, "weights": "/home/me/w.pth"},
            "train_config": {"data": "/home/me/prepared"}, "thresholds": {"A": 0.4, "B": 0.6}}
    detector_card = {"imgsz": 640, "feature_dim": 704, "versions": {"ultralytics": "8"}, "model_yaml": {"nc": 14},
                     "data_summary": {"data": "/home/me/prepared"}}
    info = model_info(card, detector_card)
    assert info == {
        "kind": "hybridcxr classifier", "card_version": 2, "versions": {"hybridcxr": "1.0"},
        "saved_at": "2024-01-01T00:00:00", "findings": ["A", "B"], "groups": ["yolo", "cnn", "age", "sex"],
        "threshold_rule": "youden", "val_macro_auroc": 0.8, "best_epoch": 3,
        "backbone": {"name": "densenet121", "size": 224, "fine_tuned": False},
        "detector": {"imgsz": 640, "feature_dim": 704, "versions": {"ultralytics": "8"}},
    }
    assert "/home/me" not in repr(info)
    assert model_info({}, {})["backbone"] == {"name": None, "size": None, "fine_tuned": None}
