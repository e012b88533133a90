"""Batch jobs over radiograph files, shared by the CLI and the service: collect inputs, run, write outputs.

``detect_files`` writes, under its output folder::

    detections.csv        image_id, finding, score, x_min, y_min, x_max, y_max (original pixels)
    json/<image_id>.json  one file per image: size, demographics read, boxes, the model card's facts
    submission.csv        VinDr/Kaggle format: image_id, PredictionString ("class score x1 y1 x2 y2 ...")
    skipped.csv           files that could not be read, with the reason

Every file is written under a temporary name and renamed. A bad file never stops the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hybridcxr.detect.metrics import add_no_finding, to_submission
from hybridcxr.detect.predict import PREDICTION_COLUMNS, Detection, Detector
from hybridcxr.errors import InputError
from hybridcxr.files import write_csv, write_json
from hybridcxr.progress import progress_bar

#: File name endings taken from a folder (DICOMs without an extension are taken too).
RADIOGRAPH_SUFFIXES = (".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg")


@dataclass
class BatchResult:
    """What a batch job did: its output folder, how many images it handled, the files it skipped."""

    out: Path
    done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    outputs: dict[str, Path] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{self.done} images done, {len(self.skipped)} skipped; outputs in {self.out}"]
        lines += [f"  {name}: {path}" for name, path in self.outputs.items()]
        if self.skipped:
            lines.append(f"{len(self.skipped)} files skipped:")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def collect_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for radiographs; sorted, duplicates removed.

    Raises InputError for an input that does not exist (a typo should not pass as "0 images").
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                            and (p.suffix.lower() in RADIOGRAPH_SUFFIXES or not p.suffix))
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(path, "no such file or folder")
    return list(dict.fromkeys(found))


def detection_record(detection: Detection, card: dict) -> dict:
    """The per-image JSON: what was read (no names or birth dates exist to leak) and what was found."""
    meta = detection.radiograph.meta
    return {
        "image_id": detection.radiograph.image_id,
        "source": meta.path,
        "width": detection.radiograph.width,
        "height": detection.radiograph.height,
        "age_years": meta.age_years,
        "sex": meta.sex,
        "view": meta.view,
        "study_instance_uid": meta.study_uid,
        "series_instance_uid": meta.series_uid,
        "sop_instance_uid": meta.sop_uid,
        "detections": [
            {"finding": r.finding, "score": round(float(r.score), 5),
             "box": [round(float(v), 2) for v in (r.x_min, r.y_min, r.x_max, r.y_max)]}
            for r in detection.boxes.itertuples(index=False)
        ],
        "model": {"kind": card.get("kind"), "findings": len(card["findings"]), "imgsz": card["imgsz"],
                  "versions": card.get("versions", {})},
    }


def detect_files(
    inputs: Sequence[str | Path], detector: Detector, out: str | Path, *, conf: float | None = None,
    tta: bool = False, overlay: bool = False, allow_modality: bool = False, progress: bool = True,
) -> BatchResult:
    """Detect findings on every readable file of ``inputs``; write the outputs listed in the module doc."""
    out = Path(out)
    paths = collect_inputs(inputs)
    result = BatchResult(out)
    tables: list[pd.DataFrame] = []
    ids: list[str] = []

    def skip(path: Path, err: Exception) -> None:
        result.skipped.append((str(path), getattr(err, "problem", str(err))))

    with progress_bar(len(paths), "detecting", progress) as advance:
        for detection in detector.predict_paths(paths, conf=conf, tta=tta, allow_modality=allow_modality,
                                                on_error=skip, on_done=advance):
            image_id = detection.radiograph.image_id
            ids.append(image_id)
            tables.append(detection.boxes)
            write_json(out / "json" / f"{image_id}.json", detection_record(detection, detector.card))
            if overlay:
                from hybridcxr.viz.overlay import save_overlay

                save_overlay(out / "overlays" / f"{image_id}.png", detection.radiograph, predictions=detection.boxes,
                             findings=detector.findings, title=image_id)
    result.done = len(ids)
    frames = [t for t in tables if len(t)]
    detections = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PREDICTION_COLUMNS)
    result.outputs["detections"] = write_csv(out / "detections.csv", detections)
    submission = to_submission(add_no_finding(detections, ids), ids, detector.findings)
    result.outputs["submission"] = write_csv(out / "submission.csv", submission)
    result.outputs["per-image JSON"] = out / "json"
    if overlay:
        result.outputs["overlays"] = out / "overlays"
    write_csv(out / "skipped.csv", pd.DataFrame(result.skipped, columns=["path", "reason"]))
    return result
