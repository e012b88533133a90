"""Detection metrics: VinDr-CXR mAP@0.4 as the VinBigData Kaggle competition scored it, FROC, submissions.

The number radiology-AI papers quote for VinDr-CXR detection is the metric of the Kaggle competition
"VinBigData Chest X-ray Abnormalities Detection" (2021), whose evaluation page reads: *"The challenge uses
the standard PASCAL VOC 2010 mean Average Precision (mAP) at IoU > 0.4"*. The competition's scoring code
was never published, so this module implements that sentence literally, after the PASCAL VOC 2010
development kit (``VOCevaldet.m`` + ``VOCap.m``), and states every choice:

**Classes.** "No finding" (Kaggle class id 14) is a class of its own. Every evaluated image without any
truth box gets one "No finding" truth box ``0 0 1 1``; a prediction ``14 <score> 0 0 1 1`` on such an
image overlaps it with IoU 1 and is a true positive, on an abnormal image it is a false positive. So the
default mean runs over the 14 findings *and* "No finding" (15 classes). ``include_no_finding=False``
gives the 14-finding mean that some papers report instead; :attr:`DetectionReport.map_without_no_finding`
holds it too.

**Matching** (``VOCevaldet.m``). Per class, the predictions of all images are sorted by score, highest
first (ties keep their input order). Each one takes the truth box of the same image and class with which it
has the highest IoU, *whether or not that box is already matched*; it is a true positive when that IoU is
**strictly greater than** ``iou_thr`` (the competition's "IoU > 0.4"; the VOC kit itself writes ``>=``,
which only differs for an IoU of exactly 0.4) and the box was not yet matched, otherwise a false positive
(a second detection of a box already found is a false positive, as in VOC). IoU is computed on continuous
pixel coordinates, ``area = (x_max - x_min) * (y_max - y_min)``, without VOC's "+1 pixel" (the Kaggle
boxes are floats in original pixels, and pycocotools and every public re-implementation for this
competition do the same).

**Average precision** (``VOCap.m``, "VOC2010+" all-points interpolation). Recall and precision are
computed after each prediction, the precision envelope is made monotone (the maximum precision at any
recall at or beyond), and AP is the area under that envelope summed at every recall change. A class with
truth boxes but no predictions has AP 0. A class with no truth box among the evaluated images has no AP:
it is reported as NaN and left out of the mean (as both VOC and COCOeval do), so the mean of a small
subset may run over fewer classes than the full test set.

``interpolation="coco101"`` switches to pycocotools' conventions instead, for comparing with numbers
computed by the public ``VinBigDataEval`` notebook (pycocotools ``COCOeval`` with ``iouThrs=[0.4]``):
101-point interpolated precision, and COCOeval's matching (a prediction takes the still-unmatched truth box
with the highest IoU ``>= iou_thr``). It equals ``COCOeval`` with ``iouThrs=[0.4]``, one area range
covering all boxes and ``maxDets`` above the number of predictions per image and class.

**Ground truth** is one set of boxes per image: for VinDr-CXR's training images, the readers' boxes fused
first (:func:`hybridcxr.data.boxes.fuse_readers`, reader ``"fused"``). A truth table with boxes of more than
one reader for the same image raises :class:`~hybridcxr.errors.DatasetError` rather than silently counting
three copies of each lesion; drop the ``reader`` column to deliberately evaluate against every reader's
boxes as one set. Truth rows named "No finding" are not boxes: they only bring their image into the
evaluated set.

**Evaluated images.** ``image_ids`` (default: every image named in the truth, "No finding" rows included,
or in the predictions). Rows of other images are ignored. An image with neither truth boxes nor predictions
still counts: it carries a "No finding" truth box (missed, unless predicted) and adds to FROC's per-image
false-positive rate.

>>> truth = pd.DataFrame({"image_id": ["a", "b"], "finding": ["Cardiomegaly", "No finding"],
...                       "reader": "fused", "x_min": [10.0, 0], "y_min": [10.0, 0],
...                       "x_max": [50.0, 1], "y_max": [30.0, 1]})
>>> pred = parse_submission(pd.DataFrame({"image_id": ["a", "b"],
...     "PredictionString": ["3 0.9 12 10 50 30", "14 1 0 0 1 1"]}))
>>> float(mean_average_precision(pred, truth, VINDR_CXR)[0])
1.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from hybridcxr.data.boxes import pair_iou
from hybridcxr.errors import DataWarning, DatasetError
from hybridcxr.findings import NO_FINDING, VINDR_CXR, canonical

Interpolation = Literal["voc2010", "coco101"]

#: Average false positives per image at which :func:`froc` reads the sensitivity.
FP_RATES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
#: The box Kaggle's format uses for "No finding" (truth and prediction alike).
NO_FINDING_BOX: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

_COORDS = ["x_min", "y_min", "x_max", "y_max"]
_COCO_RECALLS = np.linspace(0.0, 1.0, 101)


# --------------------------------------------------------------------------------------------- report
@dataclass
class DetectionReport:
    """Detection metrics of one prediction set on one set of images.

    Attributes:
        per_class_ap: AP per class (finding -> AP), "No finding" last where included; NaN where the
            evaluated images hold no truth box of that class.
        map: Mean of ``per_class_ap`` over the classes that have truth boxes.
        iou_thr: IoU a prediction must exceed to match a truth box.
        froc: Lesion-level sensitivity indexed by average false positives per image (``fp_per_image``).
        n_images: Number of evaluated images.
        n_gt: Truth boxes per class ("No finding": number of images without any box).
        split: Which split the images came from (``"test"``, ``"val"``...), for the printed summary.
        interpolation: ``"voc2010"`` (the competition's) or ``"coco101"`` (pycocotools').
        include_no_finding: Whether "No finding" is one of the averaged classes.
    """

    per_class_ap: pd.Series
    map: float
    iou_thr: float
    froc: pd.Series
    n_images: int
    n_gt: pd.Series
    split: str | None = None
    interpolation: str = "voc2010"
    include_no_finding: bool = True

    @property
    def map_without_no_finding(self) -> float:
        """Mean AP over the findings alone, "No finding" left out (NaN where none has truth boxes)."""
        aps = self.per_class_ap.drop(NO_FINDING, errors="ignore").dropna()
        return float(aps.mean()) if len(aps) else math.nan

    def to_frame(self) -> pd.DataFrame:
        """One row per class: ``ap`` and ``n_gt`` (truth boxes), indexed by finding."""
        return pd.DataFrame({"ap": self.per_class_ap, "n_gt": self.n_gt.reindex(self.per_class_ap.index)})

    def _title(self) -> str:
        n_classes = int(self.per_class_ap.notna().sum())
        where = f"split {self.split!r}" if self.split else "an unnamed split"
        scope = "incl. No finding" if self.include_no_finding else "findings only"
        method = "VOC2010 all-points AP" if self.interpolation == "voc2010" else "COCO 101-point AP"
        images = f"{self.n_images} image" + ("" if self.n_images == 1 else "s")
        classes = f"{n_classes} class" + ("" if n_classes == 1 else "es")
        return (f"VinDr-CXR mAP@{self.iou_thr:g} = {self.map:.4f} on {where} ({images}; "
                f"mean of {classes}, {scope}; {method})")

    def to_markdown(self) -> str:
        """A Markdown summary: title line, per-class table (AP, truth boxes) and the FROC sensitivities."""

        def fmt(value: float) -> str:
            return "n/a" if pd.isna(value) else f"{value:.4f}"

        lines = [f"**{self._title()}**", "", f"| Finding | AP@{self.iou_thr:g} | Truth boxes |", "|---|---:|---:|"]
        for finding, ap in self.per_class_ap.items():
            lines.append(f"| {finding} | {fmt(ap)} | {int(self.n_gt.get(finding, 0))} |")
        lines.append(f"| **mean** | **{fmt(self.map)}** | {int(self.n_gt.reindex(self.per_class_ap.index).sum())} |")
        if self.include_no_finding and NO_FINDING in self.per_class_ap.index:
            lines.append(f"| mean of findings only | {fmt(self.map_without_no_finding)} | |")
        if len(self.froc):
            lines += ["", "| FP per image | " + " | ".join(f"{r:g}" for r in self.froc.index) + " |",
                      "|---|" + "---:|" * len(self.froc),
                      "| Sensitivity | " + " | ".join(fmt(s) for s in self.froc) + " |"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown().replace("**", "")


# ------------------------------------------------------------------------------------------ public API
def average_precision(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    finding: str,
    iou_thr: float = 0.4,
    image_ids: Iterable[str] | None = None,
    *,
    interpolation: Interpolation = "voc2010",
) -> float:
    """Average precision of one class (a finding, or ``"No finding"``) at ``iou_thr``.

    Conventions are the module's (VOC2010 matching and all-points AP by default).

    Args:
        pred: Prediction box table (``image_id, finding, score, x_min, y_min, x_max, y_max``).
        truth: Box table of the ground truth (one reader, or fused, per image).
        finding: The class to score.
        iou_thr: A prediction matches a truth box when their IoU exceeds this.
        image_ids: The evaluated images (default: every image named in ``truth`` or ``pred``).
        interpolation: ``"voc2010"`` (the competition's) or ``"coco101"`` (pycocotools').

    Returns:
        The AP in [0, 1]; NaN when the evaluated images hold no truth box of ``finding``.

    >>> truth = pd.DataFrame({"image_id": ["a", "a"], "finding": "Nodule/Mass", "reader": "fused",
    ...                       "x_min": [0.0, 20], "y_min": [0.0, 20], "x_max": [10.0, 30], "y_max": [10.0, 30]})
    >>> pred = pd.DataFrame({"image_id": ["a"], "finding": "Nodule/Mass", "score": [0.9],
    ...                      "x_min": [0.0], "y_min": [0.0], "x_max": [10.0], "y_max": [9.0]})
    >>> average_precision(pred, truth, "Nodule/Mass")  # one of two nodules found, precision 1
    0.5
    """
    data = _Prepared.build(pred, truth, image_ids)
    return _class_ap(data, canonical(finding), iou_thr, interpolation)


def mean_average_precision(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    findings: Sequence[str] = VINDR_CXR,
    iou_thr: float = 0.4,
    include_no_finding: bool = True,
    image_ids: Iterable[str] | None = None,
    *,
    interpolation: Interpolation = "voc2010",
) -> tuple[float, pd.Series]:
    """VinDr-CXR mAP: mean AP over ``findings`` (plus "No finding" unless ``include_no_finding=False``).

    Args:
        pred: Prediction box table; rows of other findings are ignored.
        truth: Box table of the ground truth (one reader, or fused, per image).
        findings: The findings to average over (VinDr-CXR's 14 by default).
        iou_thr: A prediction matches a truth box when their IoU exceeds this (0.4, the competition's).
        include_no_finding: Count "No finding" as a class, as the competition did (default).
        image_ids: The evaluated images (default: every image named in ``truth`` or ``pred``).
        interpolation: ``"voc2010"`` (the competition's) or ``"coco101"`` (pycocotools').

    Returns:
        ``(map, per_class_ap)``: the mean over classes with truth boxes (NaN where none has any), and the
        AP of every class (NaN where it has no truth box), indexed by finding.

    >>> truth = pd.DataFrame({"image_id": ["a", "b"], "finding": ["ILD", "No finding"], "reader": "fused",
    ...                       "x_min": [0.0, 0], "y_min": [0.0, 0], "x_max": [10.0, 1], "y_max": [10.0, 1]})
    >>> pred = pd.DataFrame({"image_id": ["a"], "finding": ["ILD"], "score": [0.8],
    ...                      "x_min": [0.0], "y_min": [0.0], "x_max": [10.0], "y_max": [10.0]})
    >>> m, per_class = mean_average_precision(pred, truth, ["ILD"])
    >>> m, per_class.to_dict()  # "No finding" on image b was not predicted
    (0.5, {'ILD': 1.0, 'No finding': 0.0})
    """
    data = _Prepared.build(pred, truth, image_ids)
    classes = _classes(findings, include_no_finding)
    per_class = _per_class_ap(data, classes, iou_thr, interpolation)
    valid = per_class.dropna()
    return (float(valid.mean()) if len(valid) else math.nan), per_class


def froc(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    fp_rates: Sequence[float] = FP_RATES,
    iou_thr: float = 0.4,
    image_ids: Iterable[str] | None = None,
    *,
    findings: Sequence[str] | None = None,
) -> pd.Series:
    """Lesion-level FROC: sensitivity at given average false positives per image, pooled over findings.

    Hits use the mAP matching (per finding, VOC2010 rule): a prediction hits a truth box of the *same
    finding* in the same image when their IoU exceeds ``iou_thr`` and that box was not hit by a
    higher-scored prediction; each truth box counts once, and every other prediction (a miss, or a second
    hit on a found box) is a false positive. The predictions of all findings are then pooled and swept by
    score; the operating points are the distinct scores (tied predictions enter together). The sensitivity
    at a rate ``r`` is the highest reached at an operating point with at most ``r`` false positives per
    evaluated image (``image_ids``, normal images included), so it is 0 where even the top-scored
    predictions exceed ``r``, and the final sensitivity where all predictions stay below it. "No finding"
    is not a lesion: its truth and predictions are left out.

    Args:
        pred: Prediction box table.
        truth: Box table of the ground truth.
        fp_rates: Average false positives per image at which to read the sensitivity.
        iou_thr: A prediction hits a truth box when their IoU exceeds this.
        image_ids: The evaluated images (default: every image named in ``truth`` or ``pred``).
        findings: Findings to pool (default: every finding in the truth or the predictions).

    Returns:
        Sensitivity (name ``"sensitivity"``) indexed by ``fp_per_image``; NaN where there is no truth box.

    >>> truth = pd.DataFrame({"image_id": ["a", "b"], "finding": ["ILD", "No finding"], "reader": "fused",
    ...                       "x_min": [0.0, 0], "y_min": [0.0, 0], "x_max": [10.0, 1], "y_max": [10.0, 1]})
    >>> pred = pd.DataFrame({"image_id": ["b", "a"], "finding": ["ILD", "ILD"], "score": [0.9, 0.5],
    ...                      "x_min": [0.0, 0], "y_min": [0.0, 0], "x_max": [10.0, 10], "y_max": [10.0, 10]})
    >>> froc(pred, truth, fp_rates=(0.25, 0.5)).to_dict()  # the false positive comes first: 1 FP / 2 images
    {0.25: 0.0, 0.5: 1.0}
    """
    data = _Prepared.build(pred, truth, image_ids)
    if findings is None:
        found = set(data.truth["finding"]) | set(data.pred["finding"])
        findings = sorted(found - {NO_FINDING})
    return _froc(data, [canonical(f) for f in findings if canonical(f) != NO_FINDING], fp_rates, iou_thr)


def evaluate_detections(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    findings: Sequence[str] = VINDR_CXR,
    image_ids: Iterable[str] | None = None,
    iou_thr: float = 0.4,
    split: str | None = None,
    *,
    include_no_finding: bool = True,
    fp_rates: Sequence[float] = FP_RATES,
    interpolation: Interpolation = "voc2010",
) -> DetectionReport:
    """Every detection metric at once: per-class AP, mAP, FROC and truth counts, as a :class:`DetectionReport`.

    Args:
        pred: Prediction box table (e.g. from the detector, or :func:`parse_submission`).
        truth: Box table of the ground truth (one reader, or fused, per image).
        findings: The findings to score (VinDr-CXR's 14 by default).
        image_ids: The evaluated images (default: every image named in ``truth`` or ``pred``).
        iou_thr: IoU a prediction must exceed to match (0.4, the competition's), for mAP and FROC alike.
        split: Name of the split the images came from, printed with the report.
        include_no_finding: Count "No finding" as a class in the mean, as the competition did (default).
        fp_rates: Average false positives per image at which FROC reads the sensitivity.
        interpolation: ``"voc2010"`` (the competition's) or ``"coco101"`` (pycocotools').

    >>> truth = pd.DataFrame({"image_id": ["a"], "finding": ["ILD"], "reader": "fused",
    ...                       "x_min": [0.0], "y_min": [0.0], "x_max": [10.0], "y_max": [10.0]})
    >>> report = evaluate_detections(truth.assign(score=1.0), truth, split="test")
    >>> report.map, report.n_images, float(report.froc[0.5])
    (1.0, 1, 1.0)
    >>> print(report)  # doctest: +ELLIPSIS
    VinDr-CXR mAP@0.4 = 1.0000 on split 'test' (1 image; mean of 1 class, incl. No finding; VOC2010 all-points AP)
    ...
    """
    data = _Prepared.build(pred, truth, image_ids)
    classes = _classes(findings, include_no_finding)
    per_class = _per_class_ap(data, classes, iou_thr, interpolation)
    valid = per_class.dropna()
    counts = data.truth["finding"].value_counts()
    n_gt = pd.Series({c: int(counts.get(c, 0)) for c in classes}, dtype=int, name="n_gt")
    n_gt.index.name = "finding"
    lesions = [c for c in classes if c != NO_FINDING]
    return DetectionReport(
        per_class_ap=per_class,
        map=float(valid.mean()) if len(valid) else math.nan,
        iou_thr=float(iou_thr),
        froc=_froc(data, lesions, fp_rates, iou_thr),
        n_images=len(data.ids),
        n_gt=n_gt,
        split=split,
        interpolation=interpolation,
        include_no_finding=include_no_finding,
    )


def class_matches(pred: pd.DataFrame, truth: pd.DataFrame, findings: Sequence[str], image_ids: Iterable[str],
                  iou_thr: float = 0.4) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per class (with "No finding"), how VinDr's mAP (VOC2010) matches it: the image codes of its predictions,
    best score first, their true-positive flags, and the image codes of its truth boxes. Codes index the
    evaluated ids sorted, as :func:`evaluate_detections` ranks them; what a resampling of images needs
    (:mod:`hybridcxr.detect.bootstrap`), since a match never crosses images."""
    data = _Prepared.build(pred, truth, image_ids)
    out = {}
    for finding in _classes(findings, include_no_finding=True):
        pred_img, boxes, scores, gt_img, gt_boxes = data.select(finding)
        _, tp, order = _match(pred_img, boxes, scores, gt_img, gt_boxes, iou_thr, "voc2010")
        out[finding] = (pred_img[order], tp, gt_img)
    return out


def parse_submission(path_or_frame: str | Path | pd.DataFrame, findings: Sequence[str] = VINDR_CXR) -> pd.DataFrame:
    """Read a Kaggle submission (``image_id,PredictionString``) into a prediction box table.

    ``PredictionString`` holds groups of six values, ``class score x_min y_min x_max y_max``; class ``k``
    is ``findings[k]`` and ``len(findings)`` (14 for VinDr-CXR) is "No finding". An empty string means no
    prediction for that image.

    Args:
        path_or_frame: The CSV file, or a frame with its two columns.
        findings: The class-id order (VinDr-CXR's by default).

    Returns:
        A prediction box table (``image_id, finding, score, x_min, y_min, x_max, y_max``).

    Raises:
        DatasetError: A missing column, a string whose values are not groups of six numbers, or an
            unknown class id.

    >>> frame = pd.DataFrame({"image_id": ["a", "b"], "PredictionString": ["3 0.9 1 2 30 40", "14 1 0 0 1 1"]})
    >>> parse_submission(frame)[["image_id", "finding", "score", "x_max"]].to_dict("list")
    {'image_id': ['a', 'b'], 'finding': ['Cardiomegaly', 'No finding'], 'score': [0.9, 1.0], 'x_max': [30.0, 1.0]}
    """
    if isinstance(path_or_frame, pd.DataFrame):
        source, frame = "submission", path_or_frame
    else:
        source = str(path_or_frame)
        frame = pd.read_csv(path_or_frame, dtype=str, keep_default_na=False)
    missing = [c for c in ("image_id", "PredictionString") if c not in frame.columns]
    if missing:
        raise DatasetError(source, f"submission lacks columns {missing}; expected image_id,PredictionString")
    strings = frame["PredictionString"].fillna("").astype(str)
    tokens = strings.str.split()
    counts = tokens.str.len().to_numpy(dtype=int)
    bad = np.flatnonzero(counts % 6)
    if len(bad):
        row = bad[0]
        raise DatasetError(source, f"{len(bad)} rows hold a number of values that is not a multiple of 6 "
                                   f"(class score x_min y_min x_max y_max), e.g. image "
                                   f"{frame['image_id'].iloc[row]!r} with {counts[row]}")
    try:
        values = np.array(list(chain.from_iterable(tokens)), dtype=float).reshape(-1, 6)
    except ValueError as err:
        raise DatasetError(source, f"PredictionString holds a value that is not a number ({err})") from None
    names = np.array([*findings, NO_FINDING], dtype=object)
    classes = values[:, 0]
    unknown = (classes != np.round(classes)) | (classes < 0) | (classes > len(findings))
    if unknown.any():
        raise DatasetError(source, f"unknown class ids {sorted(set(classes[unknown].tolist()))[:5]}; "
                                   f"expected 0..{len(findings)} ({len(findings)} = {NO_FINDING})")
    out = pd.DataFrame({
        "image_id": np.repeat(frame["image_id"].astype(str).to_numpy(), counts // 6),
        "finding": names[classes.astype(int)] if len(values) else np.array([], dtype=object),
        "score": values[:, 1],
        **{c: values[:, 2 + i] for i, c in enumerate(_COORDS)},
    })
    return out.astype({"image_id": str, "finding": str})


def to_submission(pred: pd.DataFrame, image_ids: Iterable[str], findings: Sequence[str] = VINDR_CXR) -> pd.DataFrame:
    """Write a prediction box table as a Kaggle submission frame (``image_id, PredictionString``).

    One row per image of ``image_ids``, in that order; its boxes in table order as
    ``class score x_min y_min x_max y_max`` (10 significant digits). An image without any prediction gets
    ``"14 1 0 0 1 1"`` (certain "No finding"), as Kaggle's sample submission does. Predictions of images
    outside ``image_ids`` are dropped with a :class:`~hybridcxr.errors.DataWarning`.

    Args:
        pred: Prediction box table.
        image_ids: The images to write (Kaggle wants exactly the test set's).
        findings: The class-id order (VinDr-CXR's by default; ``len(findings)`` is "No finding").

    Raises:
        DatasetError: A prediction of a finding outside ``findings`` and "No finding".

    >>> pred = parse_submission(pd.DataFrame({"image_id": ["a"], "PredictionString": ["3 0.9 1 2 30 40.5"]}))
    >>> to_submission(pred, ["a", "b"]).to_dict("list")
    {'image_id': ['a', 'b'], 'PredictionString': ['3 0.9 1 2 30 40.5', '14 1 0 0 1 1']}
    """
    ids = pd.Index([str(i) for i in image_ids], name="image_id")
    table = _check_columns(pred, ("image_id", "finding", "score", *_COORDS), "predictions")
    table = table.assign(image_id=table["image_id"].astype(str), finding=_canonical(table["finding"]))
    class_of = {name: k for k, name in enumerate(findings)}
    class_of[NO_FINDING] = len(findings)
    unknown = sorted(set(table["finding"]) - set(class_of))
    if unknown:
        raise DatasetError("predictions", f"findings {unknown} are not in the submission's class list")
    outside = ~table["image_id"].isin(ids)
    if outside.any():
        warnings.warn(f"predictions: {int(outside.sum())} boxes of {table.loc[outside, 'image_id'].nunique()} "
                      f"images outside image_ids left out of the submission", DataWarning, stacklevel=2)
        table = table[~outside]
    cls = table["finding"].map(class_of).to_numpy(dtype=int)
    numbers = table[["score", *_COORDS]].to_numpy(dtype=float)
    groups = [f"{c} {s:.10g} {a:.10g} {b:.10g} {x:.10g} {y:.10g}" for c, (s, a, b, x, y) in zip(cls, numbers)]
    strings = pd.Series(groups, index=table.index, dtype=object).groupby(table["image_id"].to_numpy(), sort=False).agg(" ".join)
    default = f"{len(findings)} 1 0 0 1 1"
    return pd.DataFrame({"image_id": ids.to_numpy(dtype=object),
                         "PredictionString": strings.reindex(ids).fillna(default).to_numpy(dtype=object)})


def add_no_finding(pred: pd.DataFrame, image_ids: Iterable[str],
                   scores: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Give every image a "No finding" prediction (box ``0 0 1 1``) from a detector that has no such class.

    Its score is ``scores[image]`` where given (a classifier's P(No finding), :mod:`hybridcxr.detect.gating`),
    else ``1 -`` the image's highest finding score (1 where nothing was found), the usual way a box
    detector enters the competition's 15th class. Images that already have a "No finding" prediction keep
    theirs. Without this, "No finding" would score AP 0 and pull the 15-class mean down by a fifteenth.
    Columns beyond the prediction columns are kept (empty on the added rows).

    >>> pred = pd.DataFrame({"image_id": ["a"], "finding": ["ILD"], "score": [0.75],
    ...                      "x_min": [0.0], "y_min": [0.0], "x_max": [5.0], "y_max": [5.0]})
    >>> add_no_finding(pred, ["a", "b"])[["image_id", "finding", "score"]].values.tolist()
    [['a', 'ILD', 0.75], ['a', 'No finding', 0.25], ['b', 'No finding', 1.0]]
    """
    table = _check_columns(pred, ("image_id", "finding", "score", *_COORDS), "predictions")
    table = table.assign(image_id=table["image_id"].astype(str), finding=_canonical(table["finding"]))
    ids = pd.Index([str(i) for i in image_ids]).unique()
    has_own = set(table.loc[table["finding"] == NO_FINDING, "image_id"])
    top = table[table["finding"] != NO_FINDING].groupby("image_id")["score"].max()
    todo = [i for i in ids if i not in has_own]
    score = 1.0 - top.reindex(todo).fillna(0.0)
    if scores is not None:
        score = pd.Series(scores, dtype=float).reindex(todo).fillna(score)
    rows = pd.DataFrame({"image_id": todo, "finding": NO_FINDING, "score": score.to_numpy(dtype=float),
                         **dict(zip(_COORDS, NO_FINDING_BOX))})
    extra = [c for c in table.columns if c not in rows.columns]  # kept, empty on the added rows
    merged = pd.concat([table, rows], ignore_index=True) if len(table) else rows.reindex(columns=[*rows.columns, *extra])
    order = {i: k for k, i in enumerate(ids)}
    merged = merged.assign(_o=merged["image_id"].map(order).fillna(len(order)), _n=merged["finding"] == NO_FINDING)
    return merged.sort_values(["_o", "_n"], kind="stable").drop(columns=["_o", "_n"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------- internals
def _canonical(names: pd.Series) -> pd.Series:
    mapping = {n: canonical(str(n)) for n in pd.unique(names)}
    return names.map(mapping)


def _check_columns(table: pd.DataFrame, columns: Sequence[str], source: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetError(source, f"table lacks columns {missing}")
    return table


def _classes(findings: Sequence[str], include_no_finding: bool) -> list[str]:
    classes = list(dict.fromkeys(canonical(f) for f in findings if canonical(f) != NO_FINDING))
    return [*classes, NO_FINDING] if include_no_finding else classes


@dataclass
class _Prepared:
    """Truth and predictions restricted to the evaluated images, with integer image codes."""

    ids: pd.Index
    pred: pd.DataFrame  # img (code), finding, score, coords
    truth: pd.DataFrame  # img (code), finding, coords; "No finding" boxes generated

    @classmethod
    def build(cls, pred: pd.DataFrame, truth: pd.DataFrame, image_ids: Iterable[str] | None) -> _Prepared:
        _check_columns(pred, ("image_id", "finding", "score", *_COORDS), "predictions")
        _check_columns(truth, ("image_id", "finding", *_COORDS), "ground truth")
        truth = truth.assign(image_id=truth["image_id"].astype(str), finding=_canonical(truth["finding"]))
        pred = pred.assign(image_id=pred["image_id"].astype(str), finding=_canonical(pred["finding"]))
        if image_ids is None:
            ids = pd.Index(pd.unique(pd.concat([truth["image_id"], pred["image_id"]], ignore_index=True)))
        else:
            ids = pd.Index(pd.unique(pd.Series([str(i) for i in image_ids], dtype=object)))
        ids = pd.Index(sorted(ids.astype(str)), dtype=object, name="image_id")  # codes rank ids: ties break by id

        boxes = truth[truth["finding"] != NO_FINDING]
        boxes = boxes[boxes["image_id"].isin(ids)]
        if boxes[_COORDS].isna().any().any():
            raise DatasetError("ground truth", f"{int(boxes[_COORDS].isna().any(axis=1).sum())} boxes have "
                                               "missing coordinates")
        if "reader" in boxes.columns and len(boxes):
            readers = boxes.groupby("image_id")["reader"].nunique()
            several = readers[readers > 1]
            if len(several):
                example = several.index[0]
                names = sorted(map(str, boxes.loc[boxes["image_id"] == example, "reader"].unique()))
                raise DatasetError("ground truth", f"{len(several)} images have boxes from more than one reader "
                                   f"(e.g. {example!r}: {', '.join(names)}); fuse them first "
                                   "(hybridcxr.data.boxes.fuse_readers), or drop the reader column to score "
                                   "against every reader's boxes as one set")
        codes = ids.get_indexer(boxes["image_id"])
        normal = np.setdiff1d(np.arange(len(ids)), codes)
        truth_out = pd.concat([
            pd.DataFrame({"img": codes, "finding": boxes["finding"].to_numpy(dtype=object),
                          **{c: boxes[c].to_numpy(dtype=float) for c in _COORDS}}),
            pd.DataFrame({"img": normal, "finding": NO_FINDING,
                          **{c: NO_FINDING_BOX[i] for i, c in enumerate(_COORDS)}}),
        ], ignore_index=True)

        pred = pred[pred["image_id"].isin(ids)]
        numbers = pred[["score", *_COORDS]]
        if numbers.isna().any().any():
            raise DatasetError("predictions", f"{int(numbers.isna().any(axis=1).sum())} boxes have a missing "
                                              "score or coordinate")
        pred_out = pd.DataFrame({"img": ids.get_indexer(pred["image_id"]),
                                 "finding": pred["finding"].to_numpy(dtype=object),
                                 **{c: pred[c].to_numpy(dtype=float) for c in ("score", *_COORDS)}})
        return cls(ids=ids, pred=pred_out, truth=truth_out)

    def select(self, finding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Predictions (image codes, boxes, scores) and truth (image codes, boxes) of one class."""
        p = self.pred[self.pred["finding"] == finding]
        t = self.truth[self.truth["finding"] == finding]
        return (p["img"].to_numpy(), p[_COORDS].to_numpy(dtype=float), p["score"].to_numpy(dtype=float),
                t["img"].to_numpy(), t[_COORDS].to_numpy(dtype=float))


def _per_class_ap(data: _Prepared, classes: Sequence[str], iou_thr: float, interpolation: Interpolation) -> pd.Series:
    """AP of each class (NaN where a class has no ground truth), as a Series named ``ap`` indexed by finding."""
    per_class = pd.Series({c: _class_ap(data, c, iou_thr, interpolation) for c in classes}, dtype=float, name="ap")
    per_class.index.name = "finding"
    return per_class


def _match(
    pred_img: np.ndarray, pred_boxes: np.ndarray, scores: np.ndarray,
    gt_img: np.ndarray, gt_boxes: np.ndarray, iou_thr: float, rule: Interpolation,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match one class's predictions to its truth boxes; return (scores sorted descending, true-positive flags,
    the sorting order: indices of the input predictions).

    Equal scores are taken in image id order, then in input order, so the same boxes give the same AP whether
    they come from detections.csv or from the submission (whose rows are ordered differently)."""
    order = np.lexsort((np.arange(len(scores)), pred_img, -scores))
    pred_img, pred_boxes, scores = pred_img[order], pred_boxes[order], scores[order]
    n = len(scores)
    tp = np.zeros(n, dtype=bool)
    if n == 0 or len(gt_img) == 0:
        return scores, tp, order
    g_order = np.argsort(gt_img, kind="stable")
    gt_img, gt_boxes = gt_img[g_order], gt_boxes[g_order]
    start = np.searchsorted(gt_img, pred_img, side="left")
    count = np.searchsorted(gt_img, pred_img, side="right") - start
    total = int(count.sum())
    if total == 0:
        return scores, tp, order
    pair_pred = np.repeat(np.arange(n), count)
    first_pair = np.cumsum(count) - count
    pair_gt = np.repeat(start, count) + (np.arange(total) - np.repeat(first_pair, count))
    iou = pair_iou(pred_boxes[pair_pred], gt_boxes[pair_gt])

    if rule == "voc2010":
        # Best truth box of each prediction, matched or not (lowest index on ties, as VOCevaldet.m).
        sort = np.lexsort((pair_gt, -iou, pair_pred))
        head = sort[np.r_[True, pair_pred[sort][1:] != pair_pred[sort][:-1]]]
        best_iou = np.zeros(n)
        best_gt = np.full(n, -1)
        best_iou[pair_pred[head]] = iou[head]
        best_gt[pair_pred[head]] = pair_gt[head]
        candidates = np.flatnonzero(best_iou > iou_thr)
        # The highest-scored prediction of each truth box is the true positive; later ones are duplicates.
        _, first = np.unique(best_gt[candidates], return_index=True)
        tp[candidates[first]] = True
    elif rule == "coco101":
        # COCOeval.evaluateImg: the still-unmatched truth box with the highest IoU >= thr (last on ties).
        taken = np.zeros(len(gt_img), dtype=bool)
        for i in np.flatnonzero(count):
            lo, hi = first_pair[i], first_pair[i] + count[i]
            gts, ious = pair_gt[lo:hi], iou[lo:hi]
            ok = ~taken[gts] & (ious >= min(iou_thr, 1 - 1e-10))
            if ok.any():
                ious = np.where(ok, ious, -1.0)
                pick = len(ious) - 1 - int(np.argmax(ious[::-1]))
                taken[gts[pick]] = True
                tp[i] = True
    else:
        raise ValueError(f"interpolation must be 'voc2010' or 'coco101', not {rule!r}")
    return scores, tp, order


def _ap_from_matches(tp: np.ndarray, n_gt: int, interpolation: Interpolation) -> float:
    if n_gt == 0:
        return math.nan
    ctp = np.cumsum(tp, dtype=float)
    cfp = np.cumsum(~tp, dtype=float)
    recall = ctp / n_gt
    if interpolation == "voc2010":
        with np.errstate(invalid="ignore"):
            precision = ctp / (ctp + cfp)
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        change = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))
    if interpolation == "coco101":
        precision = ctp / (ctp + cfp + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        where = np.searchsorted(recall, _COCO_RECALLS, side="left")
        q = np.where(where < len(precision), precision[np.minimum(where, len(precision) - 1)], 0.0) \
            if len(precision) else np.zeros(len(_COCO_RECALLS))
        return float(np.mean(q))
    raise ValueError(f"interpolation must be 'voc2010' or 'coco101', not {interpolation!r}")


def _class_ap(data: _Prepared, finding: str, iou_thr: float, interpolation: Interpolation) -> float:
    pred_img, pred_boxes, scores, gt_img, gt_boxes = data.select(finding)
    if len(gt_img) == 0:
        return math.nan
    _, tp, _ = _match(pred_img, pred_boxes, scores, gt_img, gt_boxes, iou_thr, interpolation)
    return _ap_from_matches(tp, len(gt_img), interpolation)


def _froc(data: _Prepared, findings: Sequence[str], fp_rates: Sequence[float], iou_thr: float) -> pd.Series:
    all_scores, all_tp, n_gt = [], [], 0
    for finding in findings:
        pred_img, pred_boxes, scores, gt_img, gt_boxes = data.select(finding)
        scores, tp, _ = _match(pred_img, pred_boxes, scores, gt_img, gt_boxes, iou_thr, "voc2010")
        all_scores.append(scores)
        all_tp.append(tp)
        n_gt += len(gt_img)
    index = pd.Index([float(r) for r in fp_rates], name="fp_per_image")
    if n_gt == 0:
        return pd.Series(math.nan, index=index, name="sensitivity", dtype=float)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    # Operating points: after the last prediction of each run of equal scores, plus "nothing predicted".
    ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if len(scores) else np.zeros(0, dtype=int)
    fppi = np.r_[0.0, np.cumsum(~tp)[ends] / max(len(data.ids), 1)]
    sens = np.r_[0.0, np.cumsum(tp)[ends] / n_gt]
    values = [float(sens[fppi <= r].max()) for r in index]
    return pd.Series(values, index=index, name="sensitivity", dtype=float)
