from __future__ import annotations

import importlib.resources

import numpy as np
import pandas as pd
import pytest

from hybridcxr.data.boxes import BoxStats, clip_boxes, fuse_readers, iou, labels_from_readers


def _box(image_id, finding, reader, x0, y0, x1, y1):
    return dict(image_id=image_id, finding=finding, reader=reader, x_min=x0, y_min=y0, x_max=x1, y_max=y1)


SIZES = pd.DataFrame({"width": [200.0, 100.0], "height": [400.0, 100.0]}, index=["a", "b"])


def test_iou_hand_worked():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_clip_boxes_clips_drops_and_counts():
    boxes = pd.DataFrame([
        _box("a", "Nodule/Mass", "R1", 150, 10, 260, 50),    # right edge outside: clipped to 200
        _box("a", "Nodule/Mass", "R1", 210, 10, 260, 50),    # wholly outside: degenerate after clipping
        _box("a", "Nodule/Mass", "R2", 50, 60, 40, 80),      # reversed: dropped
        _box("b", "Cardiomegaly", "R1", -5, -5, 50, 50),     # negative: clipped to 0
        _box("c", "Cardiomegaly", "R1", 0, 0, 5000, 5000),   # size unknown: kept, unchecked
    ])
    stats = BoxStats()
    out = clip_boxes(boxes, SIZES, stats=stats)
    assert len(out) == 3
    assert out.iloc[0][["x_min", "x_max"]].tolist() == [150, 200]
    assert out.iloc[1][["x_min", "y_min"]].tolist() == [0, 0]
    assert (stats.clipped, stats.dropped, stats.unchecked) == (2, 2, 1)


def test_wbf_fuses_agreeing_readers_and_keeps_findings_apart():
    boxes = pd.DataFrame([
        _box("a", "Nodule/Mass", "R1", 10, 10, 50, 50),
        _box("a", "Nodule/Mass", "R2", 14, 10, 54, 50),
        _box("a", "Nodule/Mass", "R3", 12, 12, 52, 52),
        _box("a", "Cardiomegaly", "R1", 12, 12, 52, 52),  # same place, other finding: not fused
        _box("a", "Nodule/Mass", "R1", 150, 300, 180, 330),  # one reader only
    ])
    fused = fuse_readers(boxes, SIZES, method="wbf", iou_thr=0.4)
    nodules = fused[fused["finding"] == "Nodule/Mass"].sort_values("x_min")
    assert len(fused) == 3 and len(nodules) == 2
    np.testing.assert_allclose(nodules.iloc[0][["x_min", "y_min", "x_max", "y_max"]].astype(float),
                               [12, 32 / 3, 52, 152 / 3], atol=0.02)
    assert nodules["score"].tolist() == pytest.approx([1.0, 1 / 3])
    assert set(fused["reader"]) == {"fused"}


def test_nms_and_none():
    boxes = pd.DataFrame([_box("a", "Nodule/Mass", r, 10 + i, 10, 50 + i, 50) for i, r in enumerate("XYZ")])
    nms = fuse_readers(boxes, SIZES, method="nms")
    assert len(nms) == 1 and nms["score"].iloc[0] == pytest.approx(1.0)
    assert len(fuse_readers(boxes, method="none")) == 3
    with pytest.raises(ValueError, match="fusion method"):
        fuse_readers(boxes, method="mean")


def test_labels_from_readers_any_and_majority():
    reader_labels = pd.DataFrame(
        [("a", "R1", "Nodule/Mass"), ("a", "R2", "Nodule/Mass"), ("a", "R3", "No finding"),
         ("b", "R1", "Cardiomegaly"), ("b", "R2", "No finding"), ("b", "R3", "No finding")],
        columns=["image_id", "reader", "finding"])
    findings = ["Cardiomegaly", "Nodule/Mass"]
    anyone = labels_from_readers(reader_labels, ["a", "b", "c"], findings, rule="any")
    majority = labels_from_readers(reader_labels, ["a", "b", "c"], findings, rule="majority")
    assert anyone.loc["a"].tolist() == [0, 1] and anyone.loc["b"].tolist() == [1, 0]
    assert majority.loc["a"].tolist() == [0, 1] and majority.loc["b"].tolist() == [0, 0]
    assert anyone.loc["c"].tolist() == [0, 0]


@pytest.fixture(scope="module")
def vindr_train() -> pd.DataFrame:
    xrv = pytest.importorskip("torchxrayvision", reason="torchxrayvision (test extra) ships VinDr-CXR's train.csv")
    path = importlib.resources.files(xrv) / "data" / "vinbigdata-train.csv.gz"
    return pd.read_csv(path)


def test_vindr_train_csv_fuses_to_fewer_boxes_inside_each_image(vindr_train):
    table = vindr_train
    boxes = table[table["class_name"] != "No finding"].rename(columns={"class_name": "finding", "rad_id": "reader"})
    assert boxes[["x_min", "y_min", "x_max", "y_max"]].notna().all().all()
    # No pixel data offline: each image's size is bounded by its boxes' extent
    bound = boxes.groupby("image_id").agg(width=("x_max", "max"), height=("y_max", "max"))
    stats = BoxStats()
    fused = fuse_readers(clip_boxes(boxes, bound, stats=stats), bound, stats=stats)
    assert stats.raw == len(boxes) and 0 < len(fused) < len(boxes)
    size = bound.reindex(fused["image_id"])
    assert (fused["x_min"] >= 0).all() and (fused["y_min"] >= 0).all()
    assert (fused["x_max"].to_numpy() <= size["width"].to_numpy() + 1e-6).all()
    assert (fused["y_max"].to_numpy() <= size["height"].to_numpy() + 1e-6).all()
    assert (fused["x_max"] > fused["x_min"]).all() and (fused["y_max"] > fused["y_min"]).all()
