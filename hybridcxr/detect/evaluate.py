"""``hybridcxr evaluate detector``: read predictions and ground truth from the files users have, then score.

Predictions: a ``detect`` output folder, its ``detections.csv``, or a Kaggle ``submission.csv``. Ground truth:
a prepared folder (its fused ``boxes.csv``; ``manifest.csv`` names the images of each split) or a box table.
The evaluated images are the split's images where a split is named, else the images that were predicted
(an image predicted to hold nothing still counts: a missed lesion there is a miss). A folder of
``detect --classifier`` is scored twice, gated and ungated (:func:`evaluate_gating`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from hybridcxr.detect.metrics import DetectionReport, Interpolation, add_no_finding, evaluate_detections, parse_submission
from hybridcxr.errors import DataWarning, DatasetError, InputError
from hybridcxr.findings import NO_FINDING, VINDR_CXR
from hybridcxr.layout import PreparedLayout


UNGATED_TABLE = "detections_ungated.csv"  # beside detections.csv in a `detect --classifier` folder


def read_predictions(path: str | Path, table: str = "detections.csv") -> tuple[pd.DataFrame, list[str] | None]:
    """Prediction box table and, where known, every image that was predicted (boxes or not); for a ``detect``
    folder, ``table`` names which of its tables (detections.csv, or the ungated one of a gated run)."""
    path = Path(path)
    ids: list[str] | None = None
    if path.is_dir():
        ids = sorted(p.stem for p in (path / "json").glob("*.json")) or None
        path = path / table
    if not path.is_file():
        raise InputError(path, "no predictions here (expected detections.csv, submission.csv or a detect folder)")
    head = pd.read_csv(path, nrows=0).columns
    if "PredictionString" in head:
        frame = pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False)
        return parse_submission(frame.assign(image_id=frame["image_id"].astype(str))), frame["image_id"].astype(str).tolist()
    table = pd.read_csv(path, dtype={"image_id": str})
    missing = {"image_id", "finding", "score", "x_min", "y_min", "x_max", "y_max"} - set(table.columns)
    if missing:
        raise DatasetError(path, f"prediction table lacks columns {sorted(missing)}")
    return table, ids


def read_truth(path: str | Path, split: str | None) -> tuple[pd.DataFrame, list[str] | None, list[str]]:
    """Truth box table, the split's image ids (None without a split) and every image the truth knows."""
    path = Path(path)
    if path.is_dir():
        boxes_path, manifest_path = PreparedLayout(path).boxes, PreparedLayout(path).manifest
        for needed in (boxes_path, manifest_path):
            if not needed.is_file():
                raise DatasetError(needed, "missing: is this a folder made by `hybridcxr prepare`?")
        truth = pd.read_csv(boxes_path, dtype={"image_id": str})
        manifest = pd.read_csv(manifest_path, dtype={"image_id": str})
        known = manifest["image_id"].tolist()
        if split is None:
            return truth, None, known
        chosen = manifest.loc[manifest["split"] == split, "image_id"].tolist()
        if not chosen:
            raise DatasetError(manifest_path, f"no images in split {split!r}; splits here: {sorted(manifest['split'].unique())}")
        return truth, chosen, known
    if not path.is_file():
        raise InputError(path, "no such truth file or prepared folder")
    if split is not None:
        raise InputError(path, "--split needs a prepared folder (its manifest.csv names the splits)")
    truth = pd.read_csv(path, dtype={"image_id": str})
    return truth, None, truth["image_id"].astype(str).unique().tolist()


def evaluate_gating(
    pred: str | Path, truth: str | Path, *, split: str | None = None, iou_thr: float = 0.4,
    interpolation: Interpolation = "voc2010",
) -> dict[str, DetectionReport]:
    """The reports of a prediction source: ``{"gated": ..., "ungated": ...}`` for a ``detect --classifier``
    folder (its detections.csv and detections_ungated.csv, same images), else ``{"detections": ...}``."""
    kwargs = {"split": split, "iou_thr": iou_thr, "interpolation": interpolation}
    if not (Path(pred).is_dir() and (Path(pred) / UNGATED_TABLE).is_file()):
        return {"detections": evaluate_detector(pred, truth, **kwargs)}
    return {"gated": evaluate_detector(pred, truth, **kwargs),
            "ungated": evaluate_detector(pred, truth, table=UNGATED_TABLE, **kwargs)}


def comparison_markdown(reports: dict[str, DetectionReport]) -> str:
    """A side-by-side table of several reports' AP per class and mean (Markdown)."""
    names = list(reports)
    classes = list(next(iter(reports.values())).per_class_ap.index)

    def cell(value: float) -> str:
        return "n/a" if pd.isna(value) else f"{value:.4f}"

    lines = ["| Finding | " + " | ".join(f"AP {n}" for n in names) + " |", "|---|" + "---:|" * len(names)]
    for c in classes:
        lines.append(f"| {c} | " + " | ".join(cell(reports[n].per_class_ap.get(c, float("nan"))) for n in names) + " |")
    lines.append("| **mAP** | " + " | ".join(f"**{cell(reports[n].map)}**" for n in names) + " |")
    return "\n".join(lines)


def evaluate_detector(
    pred: str | Path, truth: str | Path, *, split: str | None = None, iou_thr: float = 0.4,
    interpolation: Interpolation = "voc2010", table: str = "detections.csv",
) -> DetectionReport:
    """VinDr mAP@``iou_thr`` and FROC of a prediction file against ground truth (see module doc); ``table``:
    which table of a ``detect`` folder."""
    predictions, predicted_ids = read_predictions(pred, table)
    truth_boxes, split_ids, known = read_truth(truth, split)
    if split_ids is not None:
        ids = split_ids
        if predicted_ids is not None and not set(ids) <= set(predicted_ids):
            lacking = len(set(ids) - set(predicted_ids))
            warnings.warn(f"{pred}: {lacking} images of split {split!r} were not predicted; they count as "
                          f"predicted empty", DataWarning, stacklevel=2)
    else:
        ids = predicted_ids or sorted(set(predictions["image_id"].astype(str)))
        unknown = sorted(set(ids) - set(known))
        if unknown:
            warnings.warn(f"{truth}: {len(unknown)} predicted images have no ground truth and are left out, "
                          f"e.g. {unknown[0]}", DataWarning, stacklevel=2)
            ids = [i for i in ids if i in set(known)]
    if not ids:
        raise DatasetError(truth, "no predicted image has ground truth here")
    if not (predictions["finding"] == NO_FINDING).any():
        predictions = add_no_finding(predictions, ids)
    return evaluate_detections(predictions, truth_boxes, VINDR_CXR if _vindr(predictions, truth_boxes) else
                               _findings(predictions, truth_boxes), ids, iou_thr, split or "predicted images",
                               interpolation=interpolation)


def _vindr(pred: pd.DataFrame, truth: pd.DataFrame) -> bool:
    names = set(pred["finding"]) | set(truth["finding"])
    return names <= {*VINDR_CXR, NO_FINDING}


def _findings(pred: pd.DataFrame, truth: pd.DataFrame) -> list[str]:
    return sorted((set(pred["finding"]) | set(truth["finding"])) - {NO_FINDING})
