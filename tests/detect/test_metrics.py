"""VinDr-CXR mAP@0.4 (VOC2010, "No finding" as a class), FROC and Kaggle submissions: hand-worked cases,
and pycocotools' COCOeval as an independent reference for the ``coco101`` convention."""

from __future__ import annotations

import contextlib
import io
import time
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from hybridcxr.detect.metrics import (
    DetectionReport,
    average_precision,
    evaluate_detections,
    froc,
    mean_average_precision,
    parse_submission,
    to_submission,
)
from hybridcxr.errors import DataWarning, DatasetError
from hybridcxr.findings import NO_FINDING, VINDR_CXR

COORDS = ["x_min", "y_min", "x_max", "y_max"]


def boxes(rows, reader="fused") -> pd.DataFrame:
    """Truth table from (image_id, finding, x_min, y_min, x_max, y_max) tuples."""
    frame = pd.DataFrame(rows, columns=["image_id", "finding", *COORDS])
    return frame.assign(reader=reader)[["image_id", "finding", "reader", *COORDS]]


def preds(rows) -> pd.DataFrame:
    """Prediction table from (image_id, finding, score, x_min, y_min, x_max, y_max) tuples."""
    return pd.DataFrame(rows, columns=["image_id", "finding", "score", *COORDS]).astype({c: float for c in COORDS})


NOD = "Nodule/Mass"
EFF = "Pleural effusion"

# Hand-worked case: 2 images, 3 truth boxes, 5 predictions of one finding.
HAND_TRUTH = boxes([
    ("A", NOD, 0, 0, 10, 10),     # g1
    ("A", NOD, 20, 20, 30, 30),   # g2
    ("B", NOD, 0, 0, 10, 10),     # g3
])
HAND_PRED = preds([
    ("A", NOD, 0.9, 0, 0, 10, 10),    # p1: IoU(g1) = 1                       -> TP
    ("B", NOD, 0.8, 50, 50, 60, 60),  # p2: IoU 0 with everything             -> FP
    ("A", NOD, 0.7, 0, 0, 10, 8),     # p3: IoU(g1) = 80/100, g1 already found -> FP (duplicate)
    ("B", NOD, 0.6, 0, 0, 10, 5),     # p4: IoU(g3) = 50/100 = 0.5            -> TP
    ("A", NOD, 0.5, 20, 20, 30, 24),  # p5: IoU(g2) = 40/100 = 0.4, not > 0.4 -> FP
])


def test_hand_worked_ap_voc2010():
    # TP pattern 1 0 0 1 0, 3 truth boxes:
    #   recall    1/3 1/3 1/3 2/3 2/3 ; precision 1 1/2 1/3 2/4 2/5
    #   envelope (max precision at recall >= r): 1 at recall 1/3, 1/2 at 2/3, 0 beyond
    #   AP = 1/3 * 1 + 1/3 * 1/2 + 1/3 * 0 = 1/2
    assert average_precision(HAND_PRED, HAND_TRUTH, NOD) == pytest.approx(float(Fraction(1, 2)), abs=1e-12)
    # At IoU > 0.39 p5 becomes a TP: pattern 1 0 0 1 1, precision ... 2/4 3/5, recall ... 2/3 1
    #   envelope: 1 at 1/3, 3/5 at 2/3 and at 1  ->  AP = 1/3 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15
    ap = average_precision(HAND_PRED, HAND_TRUTH, NOD, iou_thr=0.39)
    assert ap == pytest.approx(float(Fraction(11, 15)), abs=1e-12)


def test_hand_worked_map_counts_classes_with_truth_only():
    m, per_class = mean_average_precision(HAND_PRED, HAND_TRUTH, VINDR_CXR)
    # Both images have boxes, so "No finding" has no truth: NaN and out of the mean, like the other 13.
    assert per_class[NOD] == pytest.approx(0.5)
    assert per_class.drop(NOD).isna().all()
    assert list(per_class.index) == [*VINDR_CXR, NO_FINDING]
    assert m == pytest.approx(0.5)


def test_voc_matching_differs_from_coco_on_a_found_box():
    # g1 and g2 overlap; q2 overlaps g1 best (IoU 80/120) but g1 is taken; g2 (IoU 70/130 = 0.54) is free.
    truth = boxes([("A", NOD, 0, 0, 10, 10), ("A", NOD, 0, 5, 10, 15)])
    pred = preds([("A", NOD, 0.9, 0, 0, 10, 10), ("A", NOD, 0.8, 0, 2, 10, 12)])
    # VOC2010 (VOCevaldet.m): q2 is a duplicate of g1 -> FP; recall 1/2 at precision 1 -> AP 1/2.
    assert average_precision(pred, truth, NOD) == pytest.approx(0.5)
    # COCOeval: q2 takes g2 -> TP; precision 1 at every recall -> AP 1.
    assert average_precision(pred, truth, NOD, interpolation="coco101") == pytest.approx(1.0)


def test_perfect_predictions_and_no_predictions():
    truth = boxes([
        ("A", "Cardiomegaly", 100, 200, 400, 300),
        ("A", "Aortic enlargement", 150, 50, 250, 150),
        ("B", NOD, 10, 10, 30, 30),
        ("B", NOD, 60, 60, 90, 90),
        ("C", NO_FINDING, 0, 0, 1, 1),
    ])
    ids = ["A", "B", "C", "D"]  # D: a normal image the truth does not even name
    perfect = truth[truth["finding"] != NO_FINDING].drop(columns="reader").assign(score=0.9)
    # The submission writes "14 1 0 0 1 1" for C and D, which have no box: exactly Kaggle's trick.
    perfect = parse_submission(to_submission(perfect, ids))
    report = evaluate_detections(perfect, truth, image_ids=ids)
    assert report.map == pytest.approx(1.0)
    assert report.per_class_ap[NO_FINDING] == pytest.approx(1.0)
    assert report.n_gt[NO_FINDING] == 2
    assert report.froc.eq(1.0).all()

    empty = preds([])
    m, per_class = mean_average_precision(empty, truth, image_ids=ids)
    assert m == 0.0
    assert per_class.dropna().eq(0.0).all() and per_class.notna().sum() == 4
    assert froc(empty, truth, image_ids=ids).eq(0.0).all()


def test_no_finding_is_a_class_of_its_own():
    # Two normal images (raw VinDr "No finding" rows have no coordinates) and two abnormal ones.
    truth = pd.concat([
        boxes([("N1", NO_FINDING, np.nan, np.nan, np.nan, np.nan), ("N2", NO_FINDING, np.nan, np.nan, np.nan, np.nan)],
              reader="R1"),
        boxes([("X1", "ILD", 0, 0, 50, 50), ("X2", "ILD", 0, 0, 50, 50)]),
    ], ignore_index=True)
    sub = pd.DataFrame({"image_id": ["N1", "N2", "X1", "X2"],
                        "PredictionString": ["14 0.9 0 0 1 1", "14 0.8 0 0 1 1",
                                             "5 0.7 0 0 50 50 14 0.3 0 0 1 1", "5 0.6 0 0 50 50 14 0.2 0 0 1 1"]})
    pred = parse_submission(sub)
    assert average_precision(pred, truth, NO_FINDING) == pytest.approx(1.0)
    # Normal images now scored below the abnormal ones: FP FP TP TP, precision 1/3 then 2/4 at recall 1/2, 1
    #   envelope 1/2 everywhere -> AP = 1/2 * 1/2 + 1/2 * 1/2 = 1/2
    flipped = pred.assign(score=np.where(pred["finding"] == NO_FINDING, 1.0 - pred["score"], pred["score"]))
    m15, per_class = mean_average_precision(flipped, truth, VINDR_CXR)
    assert per_class[NO_FINDING] == pytest.approx(0.5)
    assert per_class["ILD"] == pytest.approx(1.0)
    assert m15 == pytest.approx(0.75)
    m14, per_class14 = mean_average_precision(flipped, truth, VINDR_CXR, include_no_finding=False)
    assert m14 == pytest.approx(1.0) and NO_FINDING not in per_class14.index
    report = evaluate_detections(flipped, truth)
    assert report.map == pytest.approx(0.75) and report.map_without_no_finding == pytest.approx(1.0)
    # A "No finding" prediction must be the 0 0 1 1 box: elsewhere it overlaps nothing.
    shifted = pred.assign(x_max=np.where(pred["finding"] == NO_FINDING, 5.0, pred["x_max"]))
    assert average_precision(shifted, truth, "No Finding") == 0.0  # alias spelling accepted


def test_image_without_truth_or_predictions_counts():
    truth = boxes([("A", "ILD", 0, 0, 10, 10), ("B", NO_FINDING, 0, 0, 1, 1)])
    pred = preds([("A", "ILD", 0.9, 0, 0, 10, 10), ("B", NO_FINDING, 1.0, 0, 0, 1, 1),
                  ("Z", "ILD", 0.95, 0, 0, 10, 10)])  # Z is outside image_ids below: ignored
    report = evaluate_detections(pred, truth, image_ids=["A", "B"])
    assert report.map == pytest.approx(1.0) and report.n_images == 2
    # C has neither truth nor predictions: one more "No finding" truth box, missed -> AP 1/2, mAP 3/4.
    report = evaluate_detections(pred, truth, image_ids=["A", "B", "C"], split="test")
    assert report.n_images == 3 and report.n_gt[NO_FINDING] == 2
    assert report.per_class_ap[NO_FINDING] == pytest.approx(0.5)
    assert report.map == pytest.approx(0.75)
    # Default image set: the union of truth and prediction ids, so Z's box counts as a false positive.
    default = evaluate_detections(pred, truth)
    assert default.n_images == 3 and default.per_class_ap["ILD"] == pytest.approx(0.5)


def test_froc_hand_worked():
    truth = boxes([("A", NOD, 0, 0, 10, 10), ("A", EFF, 50, 50, 90, 90), ("B", NOD, 0, 0, 10, 10),
                   ("C", NO_FINDING, 0, 0, 1, 1)])
    pred = preds([
        ("A", NOD, 0.95, 0, 0, 10, 10),   # TP (g1)                      FP/img 0    sens 1/3
        ("B", EFF, 0.90, 0, 0, 10, 10),   # FP: right place, wrong finding      1/4  1/3
        ("A", EFF, 0.80, 50, 50, 90, 90), # TP (g2)                             1/4  2/3
        ("C", NOD, 0.70, 0, 0, 10, 10),   # FP on a normal image                2/4  2/3
        ("A", NOD, 0.60, 0, 0, 10, 10),   # FP: g1 already found                3/4  2/3
        ("B", NOD, 0.50, 0, 0, 10, 10),   # TP (g3)                             3/4  1
        ("A", NO_FINDING, 0.99, 0, 0, 1, 1),  # "No finding" is no lesion: left out of FROC
    ])
    ids = ["A", "B", "C", "D"]  # D: nothing at all, still one image of the FP rate
    result = froc(pred, truth, fp_rates=(0.1, 0.25, 0.5, 1.0), image_ids=ids)
    expected = [1 / 3, 2 / 3, 2 / 3, 1.0]
    np.testing.assert_allclose(result.to_numpy(), expected)
    assert result.index.name == "fp_per_image"
    # Without D the same false positives cost 1/3 per image: at 0.25 FP/image only g1 is found.
    without_d = froc(pred, truth, fp_rates=(0.25, 1.0))
    np.testing.assert_allclose(without_d.to_numpy(), [1 / 3, 1.0])
    # Pooled over the named findings only.
    np.testing.assert_allclose(froc(pred, truth, fp_rates=(4,), image_ids=ids, findings=[EFF]).to_numpy(), [1.0])


def test_froc_ties_enter_together():
    truth = boxes([("A", NOD, 0, 0, 10, 10)])
    pred = preds([("A", NOD, 0.5, 0, 0, 10, 10), ("B", NOD, 0.5, 0, 0, 10, 10)])
    # One operating point with 1 TP and 1 FP over 2 images: at 0.25 FP/image nothing is found.
    np.testing.assert_allclose(froc(pred, truth, fp_rates=(0.25, 0.5)).to_numpy(), [0.0, 1.0])


def test_submission_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    n = 40
    xy = rng.uniform(0, 2000, (n, 2))
    pred = pd.DataFrame({
        "image_id": rng.choice(["a1", "b2", "c3"], n),
        "finding": rng.choice([*VINDR_CXR, NO_FINDING], n),
        "score": rng.random(n),
        "x_min": xy[:, 0], "y_min": xy[:, 1],
        "x_max": xy[:, 0] + rng.uniform(1, 500, n), "y_max": xy[:, 1] + rng.uniform(1, 500, n),
    })
    ids = ["c3", "a1", "b2", "d4"]
    sub = to_submission(pred, ids)
    assert list(sub.columns) == ["image_id", "PredictionString"]
    assert sub["image_id"].tolist() == ids
    assert sub.set_index("image_id").loc["d4", "PredictionString"] == "14 1 0 0 1 1"
    path = tmp_path / "submission.csv"
    sub.to_csv(path, index=False)
    back = parse_submission(path)
    expected = pd.concat([pred[pred["image_id"] == i] for i in ids[:3]], ignore_index=True)
    pd.testing.assert_frame_equal(back.iloc[: len(expected)][["image_id", "finding"]], expected[["image_id", "finding"]])
    np.testing.assert_allclose(back.iloc[: len(expected)][["score", *COORDS]].to_numpy(),
                               expected[["score", *COORDS]].to_numpy(), rtol=1e-9)
    assert back.iloc[-1].to_dict() == {"image_id": "d4", "finding": NO_FINDING, "score": 1.0,
                                       "x_min": 0.0, "y_min": 0.0, "x_max": 1.0, "y_max": 1.0}
    # Scores of a round trip equal those of the table it came from (less the added "No finding" of d4).
    truth = boxes([("a1", "ILD", 0, 0, 9, 9), ("b2", NOD, 100, 100, 300, 300)])
    np.testing.assert_allclose(mean_average_precision(back.iloc[:-1], truth, image_ids=ids)[1],
                               mean_average_precision(pred, truth, image_ids=ids)[1])


def test_submission_errors():
    with pytest.raises(DatasetError, match="multiple of 6"):
        parse_submission(pd.DataFrame({"image_id": ["a"], "PredictionString": ["3 0.5 1 2 3"]}))
    with pytest.raises(DatasetError, match="class ids"):
        parse_submission(pd.DataFrame({"image_id": ["a"], "PredictionString": ["15 0.5 1 2 3 4"]}))
    with pytest.raises(DatasetError, match="not a number"):
        parse_submission(pd.DataFrame({"image_id": ["a"], "PredictionString": ["3 high 1 2 3 4"]}))
    with pytest.raises(DatasetError, match="PredictionString"):
        parse_submission(pd.DataFrame({"image_id": ["a"]}))
    empty = parse_submission(pd.DataFrame({"image_id": ["a", "b"], "PredictionString": ["", np.nan]}))
    assert empty.empty and list(empty.columns) == ["image_id", "finding", "score", *COORDS]
    with pytest.raises(DatasetError, match="class list"):
        to_submission(preds([("a", "Fracture", 0.5, 0, 0, 1, 1)]), ["a"])
    with pytest.warns(DataWarning, match="outside image_ids"):
        sub = to_submission(preds([("z", "ILD", 0.5, 0, 0, 1, 1)]), ["a"])
    assert sub["PredictionString"].tolist() == ["14 1 0 0 1 1"]


def test_truth_with_several_readers_is_refused():
    truth = pd.concat([boxes([("A", "ILD", 0, 0, 10, 10)], reader="R1"),
                       boxes([("A", "ILD", 1, 1, 11, 11)], reader="R2")], ignore_index=True)
    pred = preds([("A", "ILD", 0.9, 0, 0, 10, 10)])
    with pytest.raises(DatasetError, match="more than one reader"):
        mean_average_precision(pred, truth)
    # Dropping the reader column deliberately scores against every reader's box: 1 of 2 found.
    assert average_precision(pred, truth.drop(columns="reader"), "ILD") == pytest.approx(0.5)


def test_report_says_where_it_came_from():
    report = evaluate_detections(HAND_PRED, HAND_TRUTH, split="val")
    assert isinstance(report, DetectionReport)
    text = str(report)
    assert "split 'val'" in text and "mAP@0.4 = 0.5000" in text and "2 images" in text
    assert "| Nodule/Mass | 0.5000 | 3 |" in report.to_markdown()
    frame = report.to_frame()
    assert list(frame.columns) == ["ap", "n_gt"] and frame.loc[NOD, "n_gt"] == 3
    assert "unnamed split" in str(evaluate_detections(HAND_PRED, HAND_TRUTH))


def _random_set(seed: int, n_images: int = 40, classes=("ILD", NOD, EFF)):
    rng = np.random.default_rng(seed)
    truth_rows, pred_rows = [], []
    for i in range(n_images):
        image = f"img{i:03d}"
        for finding in classes:
            for _ in range(rng.integers(0, 3)):
                x, y = rng.uniform(0, 900, 2)
                w, h = rng.uniform(10, 200, 2)
                truth_rows.append((image, finding, x, y, x + w, y + h))
                for _ in range(rng.integers(0, 3)):  # jittered detections of this box
                    j = rng.uniform(-0.3, 0.3, 4) * [w, h, w, h]  # never turns a box inside out
                    pred_rows.append((image, finding, rng.random(), x + j[0], y + j[1], x + w + j[2], y + h + j[3]))
            for _ in range(rng.integers(0, 3)):  # background false positives
                x, y = rng.uniform(0, 900, 2)
                w, h = rng.uniform(10, 200, 2)
                pred_rows.append((image, finding, rng.random() * 0.8, x, y, x + w, y + h))
    # A class with predictions but no truth box anywhere: NaN here, -1 in COCOeval.
    pred_rows.append(("img000", "Pneumothorax", 0.5, 0, 0, 10, 10))
    return boxes(truth_rows), preds(pred_rows)


def test_coco101_matches_pycocotools():
    pytest.importorskip("pycocotools", reason="pycocotools is the independent reference (pip install pycocotools)")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth, pred = _random_set(seed=7)
    classes = ["ILD", NOD, EFF, "Pneumothorax"]
    assert len(truth) > 100 and len(pred) > 200
    image_ids = sorted(set(truth["image_id"]) | set(pred["image_id"]))
    img_num = {image: k + 1 for k, image in enumerate(image_ids)}
    cat_num = {finding: k + 1 for k, finding in enumerate(classes)}

    def xywh(row):
        return [row.x_min, row.y_min, row.x_max - row.x_min, row.y_max - row.y_min]

    gt = COCO()
    gt.dataset = {
        "images": [{"id": k} for k in img_num.values()],
        "categories": [{"id": k, "name": f} for f, k in cat_num.items()],
        # ids from 1: COCOeval stores matches as annotation ids and reads 0 as "unmatched".
        "annotations": [{"id": k + 1, "image_id": img_num[r.image_id], "category_id": cat_num[r.finding],
                         "bbox": xywh(r), "area": (r.x_max - r.x_min) * (r.y_max - r.y_min), "iscrowd": 0}
                        for k, r in enumerate(truth.itertuples())],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes([{"image_id": img_num[r.image_id], "category_id": cat_num[r.finding], "bbox": xywh(r),
                          "score": r.score} for r in pred.itertuples()])
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.iouThrs = np.array([0.4])
        evaluator.params.maxDets = [10_000]
        evaluator.params.areaRng = [[0.0, 1e12]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, 0]  # recall thresholds x classes
    reference = {f: (precision[:, k - 1].mean() if (precision[:, k - 1] > -1).all() else np.nan)
                 for f, k in cat_num.items()}

    m, per_class = mean_average_precision(pred, truth, classes, include_no_finding=False, interpolation="coco101")
    np.testing.assert_allclose(per_class[classes].to_numpy(), [reference[f] for f in classes], atol=1e-6)
    assert np.isnan(per_class["Pneumothorax"])
    assert m == pytest.approx(np.mean(precision[precision > -1]), abs=1e-6)
    # The competition's VOC2010 all-points AP is a different (here somewhat higher) number, not far off.
    voc, _ = mean_average_precision(pred, truth, classes, include_no_finding=False)
    assert voc == pytest.approx(m, abs=0.05) and voc != pytest.approx(m, abs=1e-6)


def test_full_test_set_size_is_fast():
    rng = np.random.default_rng(0)
    n_images, per_image = 3000, 50
    ids = np.array([f"i{k:05d}" for k in range(n_images)])
    n_gt = rng.integers(0, 4, n_images) * (rng.random(n_images) < 0.5)
    g_img = np.repeat(np.arange(n_images), n_gt)
    xy, wh = rng.uniform(0, 2000, (len(g_img), 2)), rng.uniform(20, 500, (len(g_img), 2))
    truth = pd.DataFrame({"image_id": ids[g_img], "finding": rng.choice(VINDR_CXR, len(g_img)), "reader": "fused",
                          "x_min": xy[:, 0], "y_min": xy[:, 1], "x_max": xy[:, 0] + wh[:, 0],
                          "y_max": xy[:, 1] + wh[:, 1]})
    n = n_images * per_image
    p_img = np.repeat(np.arange(n_images), per_image)
    pxy, pwh = rng.uniform(0, 2000, (n, 2)), rng.uniform(20, 500, (n, 2))
    pred = pd.DataFrame({"image_id": ids[p_img], "finding": rng.choice([*VINDR_CXR, NO_FINDING], n),
                         "score": rng.random(n), "x_min": pxy[:, 0], "y_min": pxy[:, 1],
                         "x_max": pxy[:, 0] + pwh[:, 0], "y_max": pxy[:, 1] + pwh[:, 1]})
    start = time.perf_counter()
    report = evaluate_detections(pred, truth, image_ids=ids, split="bench")
    elapsed = time.perf_counter() - start
    assert report.n_images == n_images and 0.0 <= report.map <= 1.0
    assert elapsed < 15, f"evaluate_detections took {elapsed:.1f} s for {n} predictions"


def test_equal_scores_break_ties_by_image_id_not_by_row_order():
    """The same boxes in two row orders (detections.csv vs a submission) give one AP."""
    truth = pd.DataFrame([("a", "Nodule/Mass", 10, 10, 20, 20), ("c", "Nodule/Mass", 10, 10, 20, 20)],
                         columns=["image_id", "finding", *COORDS])
    pred = pd.DataFrame([("a", "Nodule/Mass", 0.5, 10, 10, 20, 20),   # hit
                         ("b", "Nodule/Mass", 0.5, 50, 50, 60, 60),   # miss, same score
                         ("c", "Nodule/Mass", 0.5, 80, 80, 90, 90)],  # miss, same score
                        columns=["image_id", "finding", "score", *COORDS])
    orders = [[0, 1, 2], [2, 1, 0], [1, 2, 0]]
    aps = {average_precision(pred.iloc[o].reset_index(drop=True), truth, "Nodule/Mass") for o in orders}
    assert len(aps) == 1
    # image order a, b, c: precision 1/1 at recall 1/2, then no further hit: VOC AP = 0.5
    assert aps.pop() == pytest.approx(0.5)
