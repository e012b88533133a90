"""Image-resampled VinDr mAP: a weighted resample scores as the resampled set itself, and choose_rule keeps a
rule with how sure its validation gain is."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hybridcxr.detect.bootstrap import paired_gain, weighted_map
from hybridcxr.detect.gating import UNGATED, choose_rule, gating_summary
from hybridcxr.detect.metrics import add_no_finding, class_matches, evaluate_detections
from hybridcxr.findings import NO_FINDING

FINDINGS = ["Nodule/Mass", "ILD"]
COLUMNS = ["image_id", "finding", "x_min", "y_min", "x_max", "y_max"]


def _scene(seed: int = 1, n: int = 30) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Truth boxes on about 40% of image-findings, each found with a jittered box and a random score, plus a
    false positive per image (every image has a box: no two images tie on their "No finding" score)."""
    rng = np.random.default_rng(seed)
    ids = [f"i{k}" for k in range(n)]
    truth, pred = [], []
    for i in ids:
        for f in FINDINGS:
            if rng.random() < 0.4:
                x, y = rng.uniform(0, 500, 2)
                truth.append((i, f, x, y, x + 80, y + 80))
                pred.append((i, f, rng.random(), x + rng.normal(0, 20), y + rng.normal(0, 20), x + 80, y + 80))
            x, y = rng.uniform(0, 500, 2)
            pred.append((i, f, rng.random(), x, y, x + 60, y + 60))
    boxes = pd.DataFrame(pred, columns=["image_id", "finding", "score", *COLUMNS[2:]])
    return add_no_finding(boxes, ids), pd.DataFrame(truth, columns=COLUMNS), ids


def test_all_ones_is_the_plain_map():
    pred, truth, ids = _scene()
    expected = evaluate_detections(pred, truth, FINDINGS, ids).map
    assert weighted_map(class_matches(pred, truth, FINDINGS, ids), np.ones((1, len(ids))))[0] == pytest.approx(expected)


def test_a_weighted_resample_scores_as_the_images_drawn_that_often():
    pred, truth, ids = _scene()
    weights = np.ones(len(ids))
    weights[[3, 11]] = [3, 2]
    weights[7] = 0
    drawn, tables = [], {"truth": [], "pred": []}
    for k, image in enumerate(sorted(ids)):  # weight columns follow the sorted ids
        for copy in range(int(weights[k])):
            new = f"{image}_{copy}"
            drawn.append(new)
            tables["truth"].append(truth[truth["image_id"] == image].assign(image_id=new))
            tables["pred"].append(pred[pred["image_id"] == image].assign(image_id=new))
    physical = evaluate_detections(pd.concat(tables["pred"]), pd.concat(tables["truth"]), FINDINGS, drawn).map
    assert weighted_map(class_matches(pred, truth, FINDINGS, ids), weights[None])[0] == pytest.approx(physical)
    assert physical != pytest.approx(evaluate_detections(pred, truth, FINDINGS, ids).map)  # the weights mattered


def test_paired_gain_is_zero_against_itself_and_positive_for_a_better_set():
    pred, truth, ids = _scene()
    assert np.all(paired_gain(pred, pred, truth, FINDINGS, ids, n_boot=50) == 0)
    perfect = add_no_finding(truth.assign(score=1.0), ids)
    gains = paired_gain(perfect, pred, truth, FINDINGS, ids, n_boot=50)
    assert gains.shape == (50,) and np.all(gains > 0)
    assert np.array_equal(gains, paired_gain(perfect, pred, truth, FINDINGS, ids, n_boot=50))  # seeded


def test_choose_rule_says_when_a_gain_may_be_luck():
    """12 images, a classifier barely better than a coin: some rule wins on them by chance, by more than 0.2;
    across resamples the gain's 5th percentile is below 0, and the card says so beside the rule."""
    rng = np.random.default_rng(5)
    ids = [f"i{k}" for k in range(12)]
    abnormal = rng.random(12) < 0.5
    nodule = FINDINGS[0]
    truth = pd.DataFrame([(i, nodule, 100.0, 0.0, 110.0, 10.0) for i, a in zip(ids, abnormal) if a], columns=COLUMNS)
    scores = [float(rng.uniform(0.3, 0.9) if a else rng.uniform(0.2, 0.8)) for a in abnormal]
    boxes = pd.DataFrame({"image_id": ids, "finding": nodule, "score": scores, "x_min": 100.0, "y_min": 0.0,
                          "x_max": 110.0, "y_max": 10.0})
    p_normal = np.clip(np.where(abnormal, 0.45, 0.55) + rng.normal(0, 0.2, 12), 0.01, 0.99)
    probs = pd.DataFrame({nodule: 1 - p_normal, NO_FINDING: p_normal}, index=ids)
    choice = choose_rule(boxes, probs, truth, ids, [nodule])
    assert choice.rule != UNGATED and choice.val_map > choice.val_map_ungated + 0.2
    assert choice.gain["p5"] < 0 < choice.gain["p95"] and choice.gain["positive"] < 0.95
    card = choice.card(iou_thr=0.4, conf=0.05, n_images=12)
    assert card["val_gain_resampled"]["p5"] < 0 and card["val_gain_resampled"]["resamples"] == 200
    assert "(5th-95th percentile), above 0 in" in gating_summary(card)


def test_blocks_of_resamples_give_what_one_block_gives(monkeypatch):
    from hybridcxr.detect import bootstrap

    pred, truth, ids = _scene()
    matches = class_matches(pred, truth, FINDINGS, ids)
    weights = np.random.default_rng(3).multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=7).astype(float)
    whole = weighted_map(matches, weights)
    monkeypatch.setattr(bootstrap, "CELLS", 10)  # one resample per block
    assert np.allclose(weighted_map(matches, weights), whole, rtol=1e-12, atol=0)  # the same sums, to rounding
