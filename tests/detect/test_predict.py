"""Running the detector: letterbox and the mapping of boxes back, pooled features, TTA, the detect CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.detect.predict import Detector, Prepared, letterbox
from hybridcxr.io import Radiograph, RadiographMeta, read_radiograph

runner = CliRunner()


def test_pooled_features_equal_ultralytics_embeddings(run, phantom):
    """Our hooks give the same vector as ultralytics' own ``embed`` of the same layers."""
    out, _ = run
    detector = Detector.load(out / "run", device="cpu")
    radiograph = read_radiograph(next((phantom / "test").glob("*.dicom")))
    ours = detector.predict([radiograph], features=True)[0].features
    assert ours.shape == (704,)
    item = detector.prepare(radiograph)
    x = torch.from_numpy(item.image)[None, None].expand(-1, 3, -1, -1).float() / 255
    with torch.inference_mode():
        reference = detector.model._predict_once(x, embed=detector.card["feature_layers"])[0].numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_boxes_map_back_to_original_pixels():
    """A box drawn in letterboxed pixels lands where it belongs in a non-square original."""
    radiograph = Radiograph(np.zeros((300, 500), np.float32), RadiographMeta(path="x.png", image_id="x"))
    image, scale, (left, top) = letterbox(radiograph.pixels, 100)
    assert image.shape == (100, 100) and scale == pytest.approx(0.2) and (left, top) == (0, 20)
    detector = Detector.__new__(Detector)  # the mapping needs no model
    box = np.array([[left + 10 * scale, top + 30 * scale, left + 400 * scale, top + 290 * scale, 0.9, 3]], np.float32)
    item = Prepared(radiograph, image, scale, (left, top))
    np.testing.assert_allclose(Detector._to_original(detector, box, item, flip=False)[0, :4], [10, 30, 400, 290], atol=1e-3)
    flipped = Detector._to_original(detector, box, item, flip=True)[0, :4]
    np.testing.assert_allclose(flipped, [100, 30, 490, 290], atol=1e-3)
    outside = np.array([[-50, -50, 120, 120, 0.5, 0]], np.float32)
    clipped = Detector._to_original(detector, outside, item, flip=False)[0, :4]
    assert clipped.min() >= 0 and clipped[2] <= 500 and clipped[3] <= 300


def test_detect_cli_writes_outputs_and_lists_bad_files(run, phantom, tmp_path, no_network):
    out, _ = run
    inputs = tmp_path / "inputs"
    shutil.copytree(phantom / "test", inputs)
    (inputs / "corrupt.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"garbage")
    result = runner.invoke(app, ["detect", str(inputs), "--weights", str(out / "run"), "--out", str(tmp_path / "det"),
                                 "--conf", "0.0001", "--no-progress"])
    assert result.exit_code == 3, result.output
    assert "corrupt.dcm" in result.output
    det = tmp_path / "det"
    n = len(list((phantom / "test").glob("*.dicom")))
    detections = pd.read_csv(det / "detections.csv", dtype={"image_id": str})
    submission = pd.read_csv(det / "submission.csv", dtype={"image_id": str})
    assert len(submission) == n and len(list((det / "json").glob("*.json"))) == n
    assert list(detections.columns) == ["image_id", "finding", "score", "x_min", "y_min", "x_max", "y_max", "path"]
    assert len(detections) > 0, "at conf 1e-4 even a 1-epoch detector proposes boxes"
    for image_id, boxes in detections.groupby("image_id"):
        record = json.loads((det / "json" / f"{image_id}.json").read_text())
        assert (boxes["x_min"] >= 0).all() and (boxes["x_max"] <= record["width"]).all()
        assert (boxes["y_min"] >= 0).all() and (boxes["y_max"] <= record["height"]).all()
        assert len(record["detections"]) == len(boxes)
        assert record["age_years"] is not None and record["sex"] in ("M", "F")
    for row in submission.itertuples():
        values = row.PredictionString.split()
        assert len(values) % 6 == 0 and "14" in values[::6]  # every image carries a No finding score
    skipped = pd.read_csv(det / "skipped.csv")
    assert skipped["path"].str.endswith("corrupt.dcm").tolist() == [True]


def test_detect_with_tta(run, phantom, tmp_path):
    out, _ = run
    detector = Detector.load(out / "run", device="cpu")
    radiograph = read_radiograph(next((phantom / "test").glob("*.dicom")))
    plain = detector.predict([radiograph], conf=0.0001)[0].boxes
    merged = detector.predict([radiograph], conf=0.0001, tta=True)[0].boxes
    assert len(plain) and len(merged)
    assert (merged["x_max"] <= radiograph.width).all() and (merged["x_min"] >= 0).all()
    assert not plain[["x_min", "score"]].reset_index(drop=True).equals(merged[["x_min", "score"]].reset_index(drop=True))


def test_detect_on_real_samples(run, shared_data, tmp_path):
    """Every NIH PNG and every DICOM sample: outputs written, boxes inside the original image, CT refused."""
    out, _ = run
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI")
    inputs = [shared_data / "nih" / "images", shared_data / "dicom", corrupt]
    det = tmp_path / "det"
    result = runner.invoke(app, ["detect", *map(str, inputs), "--weights", str(out / "run"), "--out", str(det),
                                 "--conf", "0.0001", "--no-progress"])
    assert result.exit_code == 3, result.output
    skipped = pd.read_csv(det / "skipped.csv").set_index("path")["reason"]
    assert set(skipped.index) == {str(shared_data / "dicom" / "nih-udacity" / "test5.dcm"), str(corrupt)}
    assert "Modality CT" in skipped[str(shared_data / "dicom" / "nih-udacity" / "test5.dcm")]
    n_png = len(list((shared_data / "nih" / "images").glob("*.png")))
    n_dicom = len(list((shared_data / "dicom").rglob("*.dcm"))) - 1  # all but the CT
    records = {p.stem: json.loads(p.read_text()) for p in (det / "json").glob("*.json")}
    assert len(records) == n_png + n_dicom
    assert len(pd.read_csv(det / "submission.csv")) == n_png + n_dicom
    detections = pd.read_csv(det / "detections.csv", dtype={"image_id": str})
    assert detections["image_id"].nunique() > n_png // 2
    size = pd.DataFrame.from_dict(records, orient="index")[["width", "height"]].loc[detections["image_id"]]
    assert (detections["x_min"] >= 0).all() and (detections["y_min"] >= 0).all()
    assert (detections["x_max"].to_numpy() <= size["width"].to_numpy()).all()
    assert (detections["y_max"].to_numpy() <= size["height"].to_numpy()).all()
    assert records["test1"]["age_years"] == 81.0 and records["00002578_000"]["width"] == 1024


def test_detect_overlay_pictures(run, phantom, tmp_path):
    out, _ = run
    source = next((phantom / "test").glob("*.dicom"))
    result = runner.invoke(app, ["detect", str(source), "--weights", str(out / "run"), "--out", str(tmp_path / "d"),
                                 "--conf", "0.0001", "--overlay", "--no-progress"])
    assert result.exit_code == 0, result.output
    from PIL import Image

    picture = Image.open(tmp_path / "d" / "overlays" / f"{source.stem}.png")
    radiograph = read_radiograph(source)
    assert picture.width > radiograph.width  # image plus legend panel
    assert picture.mode == "RGB"
