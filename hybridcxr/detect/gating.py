"""Classifier-gated detection: the fusion classifier's probabilities reshape the detector's boxes.

The best VinDr-CXR detection entries combined a box detector with an image-level normal/abnormal classifier;
this module is that combination, as one documented rule (:class:`GatingRule`):

- **"No finding"** (``no_finding``): the competition's 15th class is the box ``0 0 1 1`` with a score. From
  the detector alone (``detector``) that score is ``1 -`` the image's highest box score
  (:func:`~hybridcxr.detect.metrics.add_no_finding`); gated (``classifier``) it is the classifier's
  P(No finding), an image-level call the classifier makes far better than a box detector.
- **Box scores** (``scale``): each box's score ``s`` becomes ``s * p ** power``, where ``p`` is the image's
  probability of abnormality (``abnormal``: ``1 - P(No finding)``) or of the box's own finding (``finding``:
  that finding's probability where the classifier learned it, else the abnormality); ``none`` keeps ``s``.
  Boxes whose new score is below ``floor`` are dropped.

The rule is chosen on the validation split of the classifier's training data (:func:`choose_rule`: every
candidate of :func:`candidate_rules` is scored by VinDr mAP@0.4 on the validation images and the best one is
kept where it beats the ungated detector there, its gain's spread over image resamples recorded beside it),
stored in the classifier run's card, and applied by ``detect --classifier RUN``, ``classify``, the Analyzer and
the service.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

from hybridcxr.detect.metrics import add_no_finding, evaluate_detections
from hybridcxr.findings import NO_FINDING

Scale = Literal["none", "abnormal", "finding"]
Normal = Literal["detector", "classifier"]


@dataclass(frozen=True)
class GatingRule:
    """How the classifier's probabilities change the detector's output (see the module doc)."""

    scale: Scale = "none"
    power: float = 1.0
    floor: float = 0.0
    no_finding: Normal = "detector"

    def __post_init__(self) -> None:
        if self.scale not in ("none", "abnormal", "finding"):
            raise ValueError(f"gating scale must be none, abnormal or finding, not {self.scale!r}")
        if self.no_finding not in ("detector", "classifier"):
            raise ValueError(f"gating no_finding must be detector or classifier, not {self.no_finding!r}")
        if not (0.0 < self.power <= 4.0) or not (0.0 <= self.floor < 1.0):
            raise ValueError(f"gating power must be in (0, 4] and floor in [0, 1): {self.power}, {self.floor}")

    @property
    def gated(self) -> bool:
        """Whether the rule changes anything (the ungated rule is the detector's own output)."""
        return self != UNGATED

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> GatingRule:
        """A rule from a card's ``gating.rule`` entry; ValueError on unknown keys or values."""
        unknown = set(data) - {"scale", "power", "floor", "no_finding"}
        if unknown:
            raise ValueError(f"unknown gating keys {sorted(unknown)}")
        return cls(**{k: (float(v) if k in ("power", "floor") else v) for k, v in data.items()})  # type: ignore[arg-type]

    def describe(self) -> str:
        """One line for reports: what the rule does."""
        if not self.gated:
            return "ungated: the detector's boxes, No finding = 1 - the highest box score"
        nf = "the classifier's P(No finding)" if self.no_finding == "classifier" else "1 - the highest box score"
        boxes = ("box scores kept" if self.scale == "none" else
                 f"box score x P({'abnormal' if self.scale == 'abnormal' else 'its finding'})^{self.power:g}")
        floor = f", boxes below {self.floor:g} dropped" if self.floor > 0 else ""
        return f"gated: {boxes}{floor}; No finding = {nf}"


UNGATED = GatingRule()


def candidate_rules() -> list[GatingRule]:
    """The rules :func:`choose_rule` tries, the ungated detector first (it wins ties)."""
    rules = [UNGATED, GatingRule(no_finding="classifier")]
    for scale in ("abnormal", "finding"):
        for power in (0.5, 1.0, 2.0):
            for floor in (0.0, 0.01, 0.03, 0.1):
                for normal in ("detector", "classifier"):
                    rules.append(GatingRule(scale, power, floor, normal))  # type: ignore[arg-type]
    return rules


def box_factors(boxes: pd.DataFrame, probabilities: pd.DataFrame, scale: Scale) -> np.ndarray:
    """The probability each box's score is multiplied by (before ``power``): 1 for ``none``; else the image's
    P(abnormal) or P(the box's finding). ``probabilities``: one row per image id, one column per finding the
    classifier learned; without a "No finding" column, P(abnormal) is the highest finding probability."""
    if scale == "none" or boxes.empty:
        return np.ones(len(boxes))
    abnormal = _abnormal(probabilities)
    ids = boxes["image_id"].astype(str)
    factors = abnormal.reindex(ids).to_numpy(dtype=float)
    if scale == "finding":
        learned = [f for f in probabilities.columns if f != NO_FINDING]
        stacked = probabilities[learned].stack()
        own = pd.Series(list(zip(ids, boxes["finding"]))).map(stacked.to_dict()).to_numpy(dtype=float)
        factors = np.where(np.isnan(own), factors, own)
    return np.nan_to_num(factors, nan=1.0)


def _abnormal(probabilities: pd.DataFrame) -> pd.Series:
    if NO_FINDING in probabilities.columns:
        return 1.0 - probabilities[NO_FINDING].astype(float)
    return probabilities.astype(float).max(axis=1)


def gate(boxes: pd.DataFrame, probabilities: pd.DataFrame, rule: GatingRule,
         image_ids: Iterable[str]) -> pd.DataFrame:
    """The detector's boxes of ``image_ids`` after ``rule``, with one "No finding" row (box ``0 0 1 1``) per
    image, as a submission holds them. Columns: the prediction columns plus ``detector_score`` (the score
    before gating; NaN on the "No finding" rows). ``probabilities`` is indexed by image id."""
    ids = [str(i) for i in image_ids]
    table = boxes[boxes["finding"] != NO_FINDING].assign(image_id=lambda t: t["image_id"].astype(str))
    table = table.assign(detector_score=table["score"].astype(float))
    gated = table["score"].to_numpy(dtype=float) * box_factors(table, probabilities, rule.scale) ** rule.power
    table = table.assign(score=gated)
    table = table[table["score"] >= rule.floor] if rule.floor > 0 else table
    table = table[table["image_id"].isin(set(ids))]
    normal = None  # the detector's own: 1 - the highest (gated) box score
    if rule.no_finding == "classifier" and NO_FINDING in probabilities.columns:
        normal = probabilities[NO_FINDING].astype(float).dropna().to_dict()  # images it did not see: as ungated
    return add_no_finding(table, ids, normal)


@dataclass(frozen=True)
class GatingChoice:
    """The rule chosen on validation, with what it and the ungated detector scored there.

    ``gain``: where a rule beat the ungated detector, how sure the validation split is of it: the paired mAP
    gain over :data:`~hybridcxr.detect.bootstrap.N_BOOT` image resamples (:mod:`hybridcxr.detect.bootstrap`),
    as its 5th percentile, median, 95th percentile and the share of resamples where it is above 0; else None.
    """

    rule: GatingRule
    val_map: float
    val_map_ungated: float
    table: pd.DataFrame  # every candidate: scale, power, floor, no_finding, val_map
    gain: dict[str, float] | None = None

    def card(self, *, iou_thr: float, conf: float, n_images: int) -> dict[str, object]:
        """What the classifier card stores under ``gating``."""
        entry: dict[str, object] = {
            "rule": self.rule.to_dict(), "description": self.rule.describe(), "chosen_on": "val",
            "val_map": round(self.val_map, 6), "val_map_ungated": round(self.val_map_ungated, 6),
            "iou_thr": iou_thr, "conf": conf, "val_images": n_images, "candidates": len(self.table)}
        if self.gain is not None:
            entry["val_gain_resampled"] = {k: round(v, 6) for k, v in self.gain.items()}
        return entry


def gating_summary(entry: Mapping[str, object]) -> str:
    """One line on a card's ``gating`` entry: the rule, its validation mAP against the ungated detector's and,
    for a chosen rule, how sure the split is of the gain (its spread over image resamples)."""
    if entry.get("rule") is None:
        return f"gating: none ({entry.get('reason', 'no rule')})"
    line = (f"gating: {entry['description']} (val mAP@0.4 {float(entry['val_map']):.4f}, ungated "
            f"{float(entry['val_map_ungated']):.4f}")
    gain = entry.get("val_gain_resampled")
    if isinstance(gain, Mapping):
        line += (f"; gain over {int(gain['resamples'])} image resamples {gain['p5']:+.4f} to {gain['p95']:+.4f} "
                 f"(5th-95th percentile), above 0 in {gain['positive']:.0%}")
    return line + ")"


def choose_rule(boxes: pd.DataFrame, probabilities: pd.DataFrame, truth: pd.DataFrame, image_ids: Sequence[str],
                findings: Sequence[str], *, iou_thr: float = 0.4,
                rules: Sequence[GatingRule] | None = None) -> GatingChoice:
    """Score every candidate rule by mAP@``iou_thr`` on ``image_ids`` (the validation images) and keep the best;
    a rule must beat the ungated detector (the first candidate) by more than 1e-9 to replace it. A chosen
    rule's gain comes with its spread over image resamples (:attr:`GatingChoice.gain`): on a few dozen images
    a gain can be one image's luck, and the card says how likely."""
    from hybridcxr.detect.bootstrap import N_BOOT, paired_gain

    rules = list(rules or candidate_rules())
    ids = [str(i) for i in image_ids]
    scores: list[float] = []
    top, tables = 0, {}  # the ungated table and the first best one: two kept, not every candidate's
    for k, rule in enumerate(rules):
        gated = gate(boxes, probabilities, rule, ids).drop(columns="detector_score")
        scores.append(evaluate_detections(gated, truth, findings, ids, iou_thr, "val", fp_rates=()).map)
        if k == 0 or np.nan_to_num(scores[k], nan=-1.0) > np.nan_to_num(scores[top], nan=-1.0):
            top, tables = k, {0: tables.get(0, gated), k: gated}
    values = np.nan_to_num(np.asarray(scores, dtype=float), nan=-1.0)
    best = top if values[top] > values[0] + 1e-9 else 0
    table = pd.DataFrame([{**r.to_dict(), "val_map": s} for r, s in zip(rules, scores)])
    gain = None
    if best:
        gains = paired_gain(tables[best], tables[0], truth, findings, ids, iou_thr)
        p5, median, p95 = (float(q) for q in np.quantile(gains, [0.05, 0.5, 0.95]))
        gain = {"p5": p5, "median": median, "p95": p95, "positive": float(np.mean(gains > 0)),
                "resamples": float(N_BOOT)}
    return GatingChoice(rules[best], float(scores[best]), float(scores[0]), table, gain)
