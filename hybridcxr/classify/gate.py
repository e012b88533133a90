"""Choose a classifier run's gating rule (:mod:`hybridcxr.detect.gating`) on its validation split.

``train classifier`` ends here: the run's detector is applied to the validation split's prepared images (at
the detector's own ``conf``, as ``detect`` runs by default), its boxes are mapped back to original pixels, and
every candidate rule is scored against the validation truth boxes with the classifier's calibrated
validation probabilities. The winner goes into the card (``gating``) and every candidate's score into
``RUN/gating.csv``. A dataset without any validation box (a classification-only source) has nothing to
choose on: the card says so and the run's detections stay ungated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hybridcxr.files import write_csv
from hybridcxr.layout import PreparedLayout


def val_detections(prepared: Path, detector: Any, image_ids: Sequence[str], progress: bool = False) -> pd.DataFrame:
    """The detector's boxes on the prepared images of ``image_ids``, in the original images' pixels."""
    from hybridcxr.detect.predict import PREDICTION_COLUMNS
    from hybridcxr.progress import progress_bar

    manifest = pd.read_csv(PreparedLayout(prepared).manifest, dtype={"image_id": str}).set_index("image_id")
    rows = manifest.loc[list(image_ids)]
    paths = [Path(prepared) / p for p in rows["image"]]
    ids = dict(zip(paths, rows.index))
    frames = []
    with progress_bar(len(paths), "gating: detecting on validation", progress) as advance:
        for detection in detector.predict_paths(paths, image_ids=ids, on_done=advance):
            frames.append(detection.boxes)
    table = pd.concat([f for f in frames if len(f)] or [pd.DataFrame(columns=PREDICTION_COLUMNS)], ignore_index=True)
    sx = (rows["width"] / rows["prepared_width"]).reindex(table["image_id"]).to_numpy(dtype=float)
    sy = (rows["height"] / rows["prepared_height"]).reindex(table["image_id"]).to_numpy(dtype=float)
    return table.assign(x_min=table["x_min"] * sx, x_max=table["x_max"] * sx,
                        y_min=table["y_min"] * sy, y_max=table["y_max"] * sy)


def probability_table(image_ids: Sequence[str], scores: np.ndarray, findings: Sequence[str],
                      unlearned: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Probabilities indexed by image id, one column per finding the model learned (unlearned ones left out,
    so that gating falls back to the image's abnormality for them)."""
    table = pd.DataFrame(np.asarray(scores, dtype=float), index=[str(i) for i in image_ids], columns=list(findings))
    return table.drop(columns=[f for f in (unlearned or {}) if f in table.columns])


def choose_gating(prepared: Path, detector: Any, image_ids: Sequence[str], scores: np.ndarray,
                  findings: Sequence[str], unlearned: Mapping[str, str], out: Path,
                  progress: bool = False) -> dict[str, Any]:
    """The card's ``gating`` entry for a run whose validation images are ``image_ids`` with calibrated
    ``scores``; writes every candidate's validation mAP to ``out`` (gating.csv)."""
    from hybridcxr.detect.gating import choose_rule
    from hybridcxr.findings import NO_FINDING

    truth = pd.read_csv(PreparedLayout(prepared).boxes, dtype={"image_id": str})
    truth = truth[truth["image_id"].isin(set(map(str, image_ids)))]
    if truth.empty:
        return {"rule": None, "reason": "no validation image has a truth box: nothing to choose a rule on"}
    boxes = val_detections(prepared, detector, image_ids, progress)
    probabilities = probability_table(image_ids, scores, findings, unlearned)
    names = [f for f in detector.findings if f != NO_FINDING]
    choice = choose_rule(boxes, probabilities, truth, image_ids, names)
    write_csv(out, choice.table)
    conf = float(detector.config["conf"])
    return choice.card(iou_thr=0.4, conf=conf, n_images=len(image_ids))
