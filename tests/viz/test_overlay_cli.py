"""Overlays from the command line on real files: ground truth drawn dashed, DICOM Secondary Capture export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image, ImageColor
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.findings import VINDR_CXR, colour

runner = CliRunner()


def count(column: np.ndarray, finding: str) -> int:
    want = np.array(ImageColor.getrgb(colour(finding, VINDR_CXR))[:3], dtype=np.uint8)
    return int((column == want).all(axis=-1).sum())


def test_detect_overlay_of_nih_image_with_its_ground_truth(tiny_detector, shared_data, tmp_path):
    from hybridcxr.data.sources.chestx_det10 import read_boxes
    from hybridcxr.data.sources.nih import read_bbox_list

    image = shared_data / "nih" / "images" / "00002578_000.png"
    if not image.is_file():
        pytest.skip(f"NIH sample {image} not found")
    boxes = pd.concat([read_bbox_list(shared_data / "nih" / "nih_bbox_list.csv"),
                       read_boxes(shared_data / "nih" / "chestx_det10_boxes.json")[1]])
    boxes.to_csv(tmp_path / "boxes.csv", index=False)
    _, folder, _ = tiny_detector
    result = runner.invoke(app, ["detect", str(image), "--weights", str(folder / "run"), "--out", str(tmp_path / "o"),
                                 "--overlay", "--truth", str(tmp_path / "boxes.csv"), "--conf", "0.99",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "o" / "overlays" / "00002578_000.png") as png:
        out = np.asarray(png.convert("RGB"))
    # NIH's nodule (x 796..874, 60 px high) and ChestX-Det10's consolidation (x 588..965, y 501..839),
    # dashed in their colours along their left edges; the same columns elsewhere do not hold those colours
    assert 15 <= count(out[:, 796], "Nodule") <= 120  # the dashed edge and its tag
    assert 100 <= count(out[:, 588], "Consolidation") <= 340
    assert count(out[:, 700], "Nodule") == 0


def test_detect_overlay_of_a_dicom_goes_back_to_its_study(tiny_detector, shared_data, tmp_path):
    source = shared_data / "dicom" / "nih-udacity" / "test1.dcm"
    if not source.is_file():
        pytest.skip(f"DICOM sample {source} not found")
    _, folder, _ = tiny_detector
    result = runner.invoke(app, ["detect", str(source), "--weights", str(folder / "run"), "--out",
                                 str(tmp_path / "o"), "--overlay", "--dicom", "--conf", "0.001", "--no-progress"])
    assert result.exit_code == 0, result.output
    original = pydicom.dcmread(source, stop_before_pixels=True)
    capture = pydicom.dcmread(tmp_path / "o" / "overlays" / "test1.dcm")
    assert capture.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert capture.StudyInstanceUID == original.StudyInstanceUID
    assert capture.SeriesInstanceUID != original.SeriesInstanceUID
    assert capture.PatientID == original.PatientID
    with Image.open(tmp_path / "o" / "overlays" / "test1.png") as png:
        assert np.array_equal(capture.pixel_array, np.asarray(png.convert("RGB")))


def test_dicom_and_truth_need_overlay(tmp_path):
    for flag in (["--dicom"], ["--truth", str(tmp_path)]):
        result = runner.invoke(app, ["detect", str(tmp_path), "--weights", str(tmp_path), "--out", str(tmp_path), *flag])
        assert result.exit_code == 2 and "--overlay" in result.output
