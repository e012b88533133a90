"""Classifier-gated detection: the rule on hand-made boxes and probabilities, and its choice on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hybridcxr.detect.gating import (
    UNGATED, GatingRule, box_factors, candidate_rules, choose_rule, gate, gating_summary,
)
from hybridcxr.detect.metrics import add_no_finding, evaluate_detections
from hybridcxr.findings import NO_FINDING

NODULE, HEART = "Nodule/Mass", "Cardiomegaly"


def _boxes(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    """(image, finding, score, x) -> boxes 10 px wide at x."""
    return pd.DataFrame({"image_id": [r[0] for r in rows], "finding": [r[1] for r in rows],
                         "score": [r[2] for r in rows], "x_min": [r[3] for r in rows], "y_min": 0.0,
                         "x_max": [r[3] + 10 for r in rows], "y_max": 10.0})


BOXES = _boxes([("a", NODULE, 0.8, 0), ("a", HEART, 0.4, 50), ("b", NODULE, 0.6, 0)])
PROBS = pd.DataFrame({NODULE: [0.9, 0.1], HEART: [0.5, 0.2], NO_FINDING: [0.05, 0.9]}, index=["a", "b"])


def test_ungated_rule_is_the_detector_with_its_own_no_finding_box():
    out = gate(BOXES, PROBS, UNGATED, ["a", "b"])
    expected = add_no_finding(BOXES, ["a", "b"])
    pd.testing.assert_frame_equal(out.drop(columns="detector_score"), expected)
    assert not UNGATED.gated and "ungated" in UNGATED.describe()


def test_no_finding_box_takes_the_classifiers_probability():
    out = gate(BOXES, PROBS, GatingRule(no_finding="classifier"), ["a", "b"])
    normal = out[out["finding"] == NO_FINDING].set_index("image_id")
    assert normal["score"].to_dict() == {"a": 0.05, "b": 0.9}
    assert normal[["x_min", "y_min", "x_max", "y_max"]].to_numpy().tolist() == [[0, 0, 1, 1]] * 2
    assert out.loc[out["finding"] != NO_FINDING, "score"].tolist() == [0.8, 0.4, 0.6]  # boxes untouched
    assert normal["detector_score"].isna().all()


def test_scores_rescaled_by_abnormality_or_by_their_own_finding_then_floored():
    by_abnormal = gate(BOXES, PROBS, GatingRule("abnormal", 1.0, 0.0, "classifier"), ["a", "b"])
    lesions = by_abnormal[by_abnormal["finding"] != NO_FINDING]
    assert lesions["score"].tolist() == pytest.approx([0.8 * 0.95, 0.4 * 0.95, 0.6 * 0.1])
    assert lesions["detector_score"].tolist() == [0.8, 0.4, 0.6]
    by_finding = gate(BOXES, PROBS, GatingRule("finding", 2.0, 0.1, "detector"), ["a", "b"])
    lesions = by_finding[by_finding["finding"] != NO_FINDING]
    # a: nodule 0.8 * 0.9^2 = 0.648, heart 0.4 * 0.5^2 = 0.1; b: nodule 0.6 * 0.1^2 = 0.006 < floor: dropped
    assert lesions["image_id"].tolist() == ["a", "a"]
    assert lesions["score"].tolist() == pytest.approx([0.648, 0.1])
    normal = by_finding[by_finding["finding"] == NO_FINDING].set_index("image_id")["score"]
    assert normal.to_dict() == pytest.approx({"a": 1 - 0.648, "b": 1.0})  # from the gated boxes


def test_findings_the_classifier_did_not_learn_fall_back_to_abnormality():
    boxes = _boxes([("a", "ILD", 0.5, 0)])
    factors = box_factors(boxes, PROBS, "finding")  # ILD is not a column: P(abnormal) of a = 0.95
    assert factors.tolist() == pytest.approx([0.95])
    no_normal = PROBS.drop(columns=NO_FINDING)  # without No finding: the highest finding probability
    assert box_factors(boxes, no_normal, "abnormal").tolist() == pytest.approx([0.9])


def test_images_without_probabilities_or_boxes_still_get_one_no_finding_row():
    out = gate(BOXES, PROBS, GatingRule("abnormal", 1.0, 0.0, "classifier"), ["a", "b", "c"])
    assert out.groupby("image_id")["finding"].apply(lambda f: int((f == NO_FINDING).sum())).to_dict() == \
        {"a": 1, "b": 1, "c": 1}
    assert float(out.loc[(out["image_id"] == "c"), "score"].iloc[0]) == 1.0  # unseen by the classifier: ungated
    assert set(gate(BOXES.iloc[:0], PROBS, UNGATED, ["a"])["finding"]) == {NO_FINDING}


def test_rules_round_trip_and_bad_rules_are_refused():
    for rule in candidate_rules():
        assert GatingRule.from_dict(rule.to_dict()) == rule
    assert candidate_rules()[0] == UNGATED and len(set(candidate_rules())) == len(candidate_rules())
    with pytest.raises(ValueError, match="scale"):
        GatingRule("sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown gating keys"):
        GatingRule.from_dict({"scale": "none", "gain": 2})
    with pytest.raises(ValueError, match="floor"):
        GatingRule(floor=1.5)


def _scene(seed: int = 0, n: int = 60) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Half the images normal; the detector fires everywhere with overlapping scores, the classifier knows
    which images are abnormal (noisily)."""
    rng = np.random.default_rng(seed)
    ids = [f"i{k}" for k in range(n)]
    abnormal = rng.random(n) < 0.5
    truth = _boxes([(i, NODULE, 1.0, 100) for i, a in zip(ids, abnormal) if a]).drop(columns="score")
    rows = [(i, NODULE, float(rng.uniform(0.3, 0.9) if a else rng.uniform(0.2, 0.8)), 100) for i, a in zip(ids, abnormal)]
    p_normal = np.clip(np.where(abnormal, 0.15, 0.85) + rng.normal(0, 0.1, n), 0.01, 0.99)
    probs = pd.DataFrame({NODULE: 1 - p_normal, NO_FINDING: p_normal}, index=ids)
    return _boxes(rows), probs, truth, ids


def card_gain(choice):
    return choice.card(iou_thr=0.4, conf=0.05, n_images=1)["val_gain_resampled"]


def test_choice_on_validation_beats_the_ungated_detector_and_says_by_how_much():
    boxes, probs, truth, ids = _scene()
    choice = choose_rule(boxes, probs, truth, ids, [NODULE])
    ungated = evaluate_detections(add_no_finding(boxes, ids), truth, [NODULE], ids).map
    assert choice.val_map_ungated == pytest.approx(ungated)
    assert choice.rule.gated and choice.val_map > ungated + 0.05
    gain = choice.gain  # 60 images: the gain survives resampling
    assert gain is not None and 0 < gain["p5"] <= gain["median"] <= gain["p95"] and gain["positive"] == 1.0
    assert card_gain(choice) == {k: round(v, 6) for k, v in gain.items()}
    assert "above 0 in 100%)" in gating_summary(choice.card(iou_thr=0.4, conf=0.05, n_images=60))
    assert len(choice.table) == len(candidate_rules()) and choice.table["val_map"].max() == pytest.approx(choice.val_map)
    card = choice.card(iou_thr=0.4, conf=0.05, n_images=len(ids))
    assert GatingRule.from_dict(card["rule"]) == choice.rule and card["chosen_on"] == "val"


def test_an_uninformative_classifier_leaves_the_detector_ungated():
    boxes, _, truth, ids = _scene()
    flat = pd.DataFrame({NODULE: 0.5, NO_FINDING: 0.5}, index=ids)
    choice = choose_rule(boxes, flat, truth, ids, [NODULE], rules=[UNGATED, GatingRule(no_finding="classifier")])
    assert choice.rule == UNGATED and choice.val_map == choice.val_map_ungated
    assert choice.gain is None and "resamples" not in gating_summary(choice.card(iou_thr=0.4, conf=0.05, n_images=60))
    assert gating_summary({"rule": None, "reason": "gating=none"}) == "gating: none (gating=none)"
