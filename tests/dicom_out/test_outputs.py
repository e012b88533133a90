"""`detect --sr` and `classify --sr --overlay --dicom` on the shared SIIM and NIH DICOMs: what the SRs say is
what detections.csv and predictions.csv say, and every DICOM written passes dciodvfy."""

from __future__ import annotations

import json
import shutil
import warnings

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from _dicom3tools import dciodvfy_errors
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.dicom_out.identity import is_ours
from hybridcxr.dicom_out.sr import NO_BOXES_IDENTIFIER
from hybridcxr.findings import CODES, NO_FINDING

runner = CliRunner()
SIIM = "dicom/siim-acr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


@pytest.fixture(scope="module")
def inputs(shared_data, tmp_path_factory):
    """The SIIM DICOM, three NIH-wrapped DICOMs, the CT that is refused and one NIH PNG."""
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(shared_data / SIIM, folder / "siim.dcm")
    for name in ("test1", "test2", "test3", "test5"):
        shutil.copy(shared_data / "dicom" / "nih-udacity" / f"{name}.dcm", folder / f"{name}.dcm")
    shutil.copy(shared_data / "nih" / "images" / "00000404_000.png", folder / "chest.png")
    return folder


def run(args: list[str]):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, args)
    return result, [str(w.message) for w in caught]


def boxes_of(path) -> pd.DataFrame:
    sr = hd.sr.srread(path)
    rows = []
    for group in sr.content.get_planar_roi_measurement_groups():
        corners = np.asarray(group.roi.value)
        rows.append((group.finding_type.value, group.get_measurements()[0].value, *corners.min(0), *corners.max(0)))
    return pd.DataFrame(rows, columns=["code", "score", "x_min", "y_min", "x_max", "y_max"])


def assert_same_boxes(sr_boxes: pd.DataFrame, table: pd.DataFrame) -> None:
    assert len(sr_boxes) == len(table)
    assert sr_boxes["code"].tolist() == [CODES[f][0] for f in table["finding"]]
    coords = ["x_min", "y_min", "x_max", "y_max"]
    assert np.allclose(sr_boxes[coords].to_numpy(float), table[coords].to_numpy(float), atol=0.5)
    assert np.allclose(sr_boxes["score"].to_numpy(float), table["score"].to_numpy(float), atol=1e-4)


@pytest.fixture(scope="module")
def detected(tiny_detector, inputs, tmp_path_factory):
    _, folder, _ = tiny_detector
    out = tmp_path_factory.mktemp("detect")
    result, caught = run(["detect", str(inputs), "--weights", str(folder / "run"), "--out", str(out), "--sr",
                          "--overlay", "--dicom", "--conf", "0.000001", "--no-progress"])
    return out, result, caught


@pytest.fixture(scope="module")
def classified(tiny_classifier, inputs, tmp_path_factory):
    _, run_folder, _ = tiny_classifier
    out = tmp_path_factory.mktemp("classify")
    result, caught = run(["classify", str(inputs), "--model", str(run_folder), "--out", str(out), "--sr",
                          "--overlay", "--dicom", "--no-progress"])
    return out, result, caught


def test_detect_sr_gives_the_boxes_of_detections_csv(detected):
    out, result, caught = detected
    assert result.exit_code == 3, result.output  # the CT is skipped; the PNG is detected, without an SR
    assert sorted(p.name for p in (out / "sr").iterdir()) == ["siim.dcm", "test1.dcm", "test2.dcm", "test3.dcm"]
    assert any("chest.png" in m and "no structured report" in m for m in caught)
    table = pd.read_csv(out / "detections.csv")
    assert len(table), "the tiny detector found nothing to compare"
    for path in sorted((out / "sr").iterdir()):
        mine = table[table["image_id"] == path.stem].reset_index(drop=True)
        assert_same_boxes(boxes_of(path), mine)
        image_groups = hd.sr.srread(path).content.get_image_measurement_groups()
        assert [g.tracking_identifier for g in image_groups] == ([] if len(mine) else [NO_BOXES_IDENTIFIER])


def test_classify_sr_gives_the_probabilities_of_predictions_csv(classified, inputs):
    out, result, caught = classified
    assert result.exit_code == 3, result.output
    assert any("chest.png" in m and "no structured report" in m for m in caught)
    predictions = pd.read_csv(out / "predictions.csv").set_index("image_id")
    findings = [c for c in predictions.columns if f"{c} positive" in predictions.columns]
    for path in sorted((out / "sr").iterdir()):
        sr = hd.sr.srread(path)
        groups = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
        row = predictions.loc[path.stem]
        for finding in findings:
            group = groups[f"image: {finding}"]
            assert group.finding_type.value == CODES[finding][0]
            assert group.get_measurements()[0].value == pytest.approx(row[finding], abs=1e-6)
            if pd.isna(row[f"{finding} positive"]):  # a finding the model never learned: no call
                assert not group.get_qualitative_evaluations()
                continue
            (presence,) = group.get_qualitative_evaluations()
            assert presence.value.meaning == ("Present" if row[f"{finding} positive"] else "Absent")
        if NO_FINDING in findings:
            call = groups["image: normal/abnormal"].finding_type.meaning
            assert call == ("Normal" if row[f"{NO_FINDING} positive"] else "Abnormal")
        record = json.loads((out / "json" / f"{path.stem}.json").read_text())
        boxes = pd.DataFrame([{"finding": d["finding"], "score": d["score"], **dict(zip(
            ["x_min", "y_min", "x_max", "y_max"], d["box"]))} for d in record["detections"]],
            columns=["finding", "score", "x_min", "y_min", "x_max", "y_max"])
        assert_same_boxes(boxes_of(path), boxes)
        source = pydicom.dcmread(inputs / f"{path.stem}.dcm", stop_before_pixels=True)
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert is_ours(ds)


def test_every_dicom_written_passes_dciodvfy(detected, classified):
    written = [p for out, _, _ in (detected, classified) for p in sorted(out.rglob("*.dcm"))]
    kinds = {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in written}
    assert kinds == {"SR", "OT"}  # structured reports and secondary captures (of the DICOMs and the PNG)
    assert {p: dciodvfy_errors(p) for p in written} == {p: [] for p in written}
