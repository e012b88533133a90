"""Batch jobs over radiograph files, shared by the CLI and the service: collect inputs, run, write outputs.

``detect_files`` writes, under its output folder::

    detections.csv        image_id, finding, score, x_min, y_min, x_max, y_max (original pixels), path
    json/<image_id>.json  one file per image: size, demographics read, boxes, the model card's facts
    submission.csv        VinDr/Kaggle format: image_id, PredictionString ("class score x1 y1 x2 y2 ...")
    skipped.csv           files that could not be read, with the reason
    sr/<image_id>.dcm     with ``sr``: a DICOM Structured Report (TID 1500) of each DICOM source's findings
    detections_ungated.csv, gating.json   with a classifier run (``detect --classifier``): the detector's own
                          boxes and the gating rule; detections.csv then holds the gated boxes

Image ids are unique within a batch (:func:`unique_ids`: the file name, or for names that repeat the path
relative to the inputs' shared folder), and every output carries the file's path beside its id. Every file
is written under a temporary name and renamed. A bad file never stops the batch.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hybridcxr.detect.metrics import add_no_finding, to_submission
from hybridcxr.detect.predict import PREDICTION_COLUMNS, Detection, Detector
from hybridcxr.errors import InputError
from hybridcxr.files import write_csv, write_json
from hybridcxr.io.radiograph import Radiograph
from hybridcxr.progress import progress_bar
from hybridcxr.analyzer import Analysis as Analysis  # re-exported: batch jobs return it
from hybridcxr.analyzer import Analyzer as Analyzer  # re-exported: `classify` takes one

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
    """Files as given, folders searched recursively for radiographs (known extensions, none, or DICOM UID
    names); sorted, duplicates removed.

    Raises InputError for an input that does not exist (a typo should not pass as "0 images").
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                            and _looks_like_radiograph(p))
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(path, "no such file or folder")
    return list(dict.fromkeys(found))


def _looks_like_radiograph(path: Path) -> bool:
    """A known image extension, none, or a UID-style name (``1.2.840.113619.2.55``: its "suffix" is digits)."""
    suffix = path.suffix.lower()
    return suffix in RADIOGRAPH_SUFFIXES or not suffix or suffix[1:].isdigit()


def unique_ids(paths: Sequence[Path]) -> dict[Path, str]:
    """One image id per input path, unique within the batch.

    A file's id is its name without the extension (as VinDr and NIH ids are) where no other input has that
    name; files whose names repeat (``study1/IM0001.dcm``, ``study2/IM0001.dcm``, as PACS exports name them)
    get their path relative to the folder all inputs share, without the extension (``study1/IM0001``).
    Every output keeps the file's path beside its id as well.
    """
    stems = Counter(p.stem for p in paths)
    repeated = [p for p in paths if stems[p.stem] > 1]
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in repeated])) if repeated else None
    ids = {p: p.stem for p in paths}
    for p in repeated:
        ids[p] = p.resolve().relative_to(root).with_suffix("").as_posix()
    clashes = Counter(ids.values())
    for p in repeated:  # study/IM1.dcm beside study/IM1.png: the extension tells them apart
        if clashes[ids[p]] > 1:
            ids[p] = p.resolve().relative_to(root).as_posix()
    return ids


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


def write_overlay(folder: Path, radiograph: Radiograph, *, dicom: bool = False, model: str = "",
                  **drawing: Any) -> Path:
    """Draw one overlay (:func:`~hybridcxr.viz.overlay.draw_overlay` keywords) as ``ID.png``; with ``dicom``
    also as the Secondary Capture ``ID.dcm`` in the source's study (``model``: the version it cites).
    Returns the PNG's path.
    """
    from hybridcxr.viz.overlay import draw_overlay, write_png

    rgb = draw_overlay(radiograph, **drawing)
    png = write_png(folder / f"{radiograph.image_id}.png", rgb)
    if dicom:
        from hybridcxr.dicom_out.outputs import write_capture

        write_capture(folder / f"{radiograph.image_id}.dcm", rgb, radiograph, model=model)
    return png


def detect_files(
    inputs: Sequence[str | Path], detector: Detector, out: str | Path, *, conf: float | None = None,
    tta: bool = False, overlay: bool = False, allow_modality: bool = False, progress: bool = True,
    dicom: bool = False, truth: pd.DataFrame | None = None, sr: bool = False, analyzer: Analyzer | None = None,
) -> BatchResult:
    """Detect findings on every readable file of ``inputs``; write the outputs listed in the module doc.

    ``truth`` (a box table of any images) adds each image's ground-truth boxes to its overlay, dashed.

    ``dicom`` (with ``overlay``) also writes each overlay as a DICOM Secondary Capture (``overlays/ID.dcm``)
    filed in the source's study, to send back to PACS; ``sr`` writes each DICOM's boxes as a Structured
    Report (``sr/ID.dcm``, :mod:`hybridcxr.dicom_out.sr`). Both cite the detector card's version.

    ``analyzer`` (a classifier run's, whose detector is ``detector``) gates the boxes by its classifier
    (:mod:`hybridcxr.detect.gating`, the rule stored in the run): detections.csv then holds the gated boxes
    and one "No finding" row per image (box ``0 0 1 1``, the classifier's P(No finding) where the rule says
    so), with ``detector_score`` the score before gating; ``detections_ungated.csv`` the detector's own boxes,
    and ``gating.json`` the rule, so that ``evaluate detector`` scores both.
    """
    from hybridcxr.dicom_out.outputs import card_version, write_sr

    model = card_version(detector.card)
    out = Path(out)
    paths = collect_inputs(inputs)
    result = BatchResult(out)
    tables: list[pd.DataFrame] = []
    raw_tables: list[pd.DataFrame] = []
    ids: list[str] = []

    def skip(path: Path, err: Exception) -> None:
        result.skipped.append((str(path), getattr(err, "problem", str(err))))

    with progress_bar(len(paths), "detecting", progress) as advance:
        found = _detections(paths, detector, analyzer, conf=conf, tta=tta, allow_modality=allow_modality,
                            on_error=skip, on_done=advance)
        for detection, table, raw in found:
            image_id = detection.radiograph.image_id
            ids.append(image_id)
            where = detection.radiograph.meta.path
            tables.append(table.assign(path=where))
            raw_tables.append(raw.assign(path=where))
            record = detection_record(detection, detector.card)
            if analyzer is not None:
                record["gating"] = analyzer.gating.describe() if analyzer.gating else "ungated (the run has no rule)"
            write_json(out / "json" / f"{image_id}.json", record)
            if overlay:
                write_overlay(out / "overlays", detection.radiograph, dicom=dicom, model=model,
                              predictions=detection.boxes, truth=truth, findings=detector.findings, title=image_id)
            if sr:
                write_sr(out / "sr", detection, model=model)
    result.done = len(ids)
    _write_detection_tables(result, tables, raw_tables, ids, detector.findings, analyzer)
    result.outputs["per-image JSON"] = out / "json"
    if overlay:
        result.outputs["overlays"] = out / "overlays"
    if sr:
        result.outputs["structured reports"] = out / "sr"
    write_csv(out / "skipped.csv", pd.DataFrame(result.skipped, columns=["path", "reason"]))
    return result


def _detections(paths: Sequence[Path], detector: Detector, analyzer: Analyzer | None, *, conf: float | None,
                tta: bool, allow_modality: bool, on_error, on_done) -> Iterator[tuple[Detection, pd.DataFrame, pd.DataFrame]]:
    """``(detection, table, raw)`` per readable file: the detection (boxes gated when ``analyzer`` gates), its
    rows for detections.csv and the detector's own boxes."""
    ids = unique_ids(paths)
    if analyzer is None:
        for detection in detector.predict_paths(paths, conf=conf, tta=tta, allow_modality=allow_modality,
                                                on_error=on_error, on_done=on_done, image_ids=ids):
            yield detection, detection.boxes, detection.boxes
        return
    for analysis in analyzer.analyze_paths(paths, on_error=on_error, on_done=on_done, allow_modality=allow_modality,
                                           image_ids=ids, conf=conf):
        raw = analysis.detection.boxes if analysis.detector_boxes is None else analysis.detector_boxes
        yield analysis.detection, analyzer.submission_rows(analysis), raw


def _write_detection_tables(result: BatchResult, tables: list[pd.DataFrame], raw_tables: list[pd.DataFrame],
                            ids: list[str], findings: Sequence[str], analyzer: Analyzer | None) -> None:
    """detections.csv and submission.csv (gated with an ``analyzer``; then also detections_ungated.csv and
    gating.json)."""
    out = result.out

    def joined(frames: list[pd.DataFrame], extra: tuple[str, ...] = ()) -> pd.DataFrame:
        frames = [t for t in frames if len(t)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=[*PREDICTION_COLUMNS, *extra, "path"])

    detections = joined(tables, ("detector_score",) if analyzer is not None else ())
    result.outputs["detections"] = write_csv(out / "detections.csv", detections)
    submission = to_submission(add_no_finding(detections[PREDICTION_COLUMNS], ids), ids, findings)
    result.outputs["submission"] = write_csv(out / "submission.csv", submission)
    if analyzer is not None:
        result.outputs["ungated detections"] = write_csv(out / "detections_ungated.csv", joined(raw_tables))
        rule = analyzer.gating
        write_json(out / "gating.json", {"rule": rule.to_dict() if rule else None,
                                         "description": rule.describe() if rule else "ungated (the run has no rule)",
                                         "classifier": str(analyzer.run), "model": analyzer.model_version})


def read_demographics(path: str | Path) -> dict[str, tuple[float | None, str | None]]:
    """A CSV with ``image_id`` and ``age`` (or ``age_years``; ``081Y``, ``62``...) and ``sex`` columns."""
    from hybridcxr.io.demographics import parse_age, parse_sex

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable demographics table ({err})") from None
    age_col = next((c for c in ("age_years", "age", "PatientAge") if c in table.columns), None)
    sex_col = next((c for c in ("sex", "PatientSex") if c in table.columns), None)
    if "image_id" not in table.columns or (age_col is None and sex_col is None):
        raise InputError(path, "a demographics table needs image_id and age and/or sex columns")
    return {row["image_id"]: (parse_age(row[age_col], source=str(path)) if age_col else None,
                              parse_sex(row[sex_col]) if sex_col else None)
            for row in table.to_dict("records")}


def classify_files(
    inputs: Sequence[str | Path], analyzer: Analyzer, out: str | Path, *,
    demographics: Mapping[str, tuple[float | None, str | None]] | None = None, overlay: bool = False,
    allow_modality: bool = False, progress: bool = True, heatmap: bool = False, dicom: bool = False,
    truth: pd.DataFrame | None = None, sr: bool = False,
) -> BatchResult:
    """Detect and classify every readable file: predictions.csv, one JSON per image, skipped.csv (+ overlays).

    ``heatmap`` (with ``overlay``) adds to each overlay the Grad-CAM panel of its most probable finding
    (:func:`hybridcxr.viz.heatmap.grad_cam`), named in the title; ValueError without ``overlay`` or for a
    classifier that does not use the CNN. ``dicom`` (with ``overlay``) also writes each overlay as a DICOM
    Secondary Capture, ``truth`` adds ground-truth boxes and ``sr`` writes Structured Reports (boxes,
    probabilities and calls), as in :func:`detect_files`; the DICOMs cite the Analyzer's model version.
    """
    from hybridcxr.dicom_out.outputs import write_sr

    if heatmap and not overlay:
        raise ValueError("heatmap=True draws on the overlays: pass overlay=True too")
    if heatmap and "cnn" not in analyzer.config.groups:
        from hybridcxr.viz.heatmap import NO_CNN

        raise ValueError(NO_CNN)
    out = Path(out)
    paths = collect_inputs(inputs)
    result = BatchResult(out)
    rows: list[dict] = []

    def skip(path: Path, err: Exception) -> None:
        result.skipped.append((str(path), getattr(err, "problem", str(err))))

    findings = analyzer.findings
    with progress_bar(len(paths), "classifying", progress) as advance:
        for a in analyzer.analyze_paths(paths, demographics=demographics, on_error=skip, on_done=advance,
                                        allow_modality=allow_modality, image_ids=unique_ids(paths)):
            rows.append({"image_id": a.image_id, "age_years": a.age_years, "sex": a.sex, **a.probabilities,
                         **{f"{f} positive": _decision(a.decisions[f]) for f in findings}, **_lung_columns(a),
                         "path": a.detection.radiograph.meta.path})
            record = detection_record(a.detection, analyzer.detector.card)
            record |= {"age_years": a.age_years, "sex": a.sex,
                       "findings": [{"finding": f, "probability": round(a.probabilities[f], 5),
                                     "positive": a.decisions[f], "threshold": analyzer.thresholds[f],
                                     "no_decision": analyzer.unlearned.get(f)} for f in findings],
                       "lungs": a.lung_record()}
            write_json(out / "json" / f"{a.image_id}.json", record)
            if overlay:
                heat, title = None, a.image_id
                if heatmap:
                    from hybridcxr.viz.heatmap import grad_cam

                    top, heat = grad_cam(analyzer, a)
                    title = f"{a.image_id} \u2014 Grad-CAM: {top}"
                write_overlay(out / "overlays", a.detection.radiograph, dicom=dicom, model=analyzer.model_version,
                              predictions=a.detection.boxes, truth=truth, probabilities=a.probabilities,
                              decisions=a.decisions, findings=findings, heatmap=heat, title=title)
            if sr:
                write_sr(out / "sr", a, model=analyzer.model_version)
    result.done = len(rows)
    lungs = ["lung_quality", "ctr_estimate", "ctr_profile"] if analyzer.lungs is not None else []
    columns = ["image_id", "age_years", "sex", *findings, *(f"{f} positive" for f in findings), *lungs, "path"]
    result.outputs["predictions"] = write_csv(out / "predictions.csv", pd.DataFrame(rows, columns=columns))
    result.outputs["per-image JSON"] = out / "json"
    if overlay:
        result.outputs["overlays"] = out / "overlays"
    if sr:
        result.outputs["structured reports"] = out / "sr"
    write_csv(out / "skipped.csv", pd.DataFrame(result.skipped, columns=["path", "reason"]))
    return result


def _decision(value: bool | None) -> int | str:
    """A decision as predictions.csv writes it: 1, 0, or empty for a finding the model never learned."""
    return "" if value is None else int(value)


def _lung_columns(analysis: Analysis) -> dict[str, object]:
    """predictions.csv's lung columns (only for a run with a lung model): the quality flag and both CTR
    estimates (empty when the flag is raised)."""
    if analysis.lungs is None:
        return {}
    values = analysis.lungs.record()
    return {"lung_quality": analysis.lungs.quality, "ctr_estimate": values["ctr_estimate"],
            "ctr_profile": values["ctr_profile"]}
