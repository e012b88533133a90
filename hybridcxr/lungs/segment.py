"""``hybridcxr segment``: lung masks and lung-field measurements for a batch of radiographs.

Writes, under its output folder::

    masks/<image_id>.png      the lung mask at the radiograph's own size, 0 (background) / 255 (lung)
    lungs.csv                 image_id, path, quality, per-lung areas (px; cm² where Pixel Spacing is known),
                              the lung-field box and the measurements of :mod:`hybridcxr.lungs.measures`
    json/<image_id>.json      one file per image: what was read, the quality flag, the measurements, the outputs
    overlays/<image_id>.png   with ``overlay``: the radiograph with the lung contours and the CTR estimate's gap
    dicom/<image_id>.dcm      with ``dicom``, DICOM inputs only: a DICOM Segmentation in the source's study
    skipped.csv               files that could not be read, with the reason

A mask whose quality flag is raised is still written, but its row and JSON say why and give no measurements.
Image ids are unique within a batch (:func:`hybridcxr.pipeline.unique_ids`). A bad file never stops the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hybridcxr.errors import HybridCXRError
from hybridcxr.files import write_atomic, write_csv, write_json
from hybridcxr.io.radiograph import Radiograph
from hybridcxr.lungs.measures import COLUMNS, LungMeasures, measure_lungs, split_lungs
from hybridcxr.lungs.model import cpu_threads
from hybridcxr.lungs.predict import Segmenter
from hybridcxr.pipeline import BatchResult, collect_inputs, unique_ids
from hybridcxr.progress import progress_bar

CTR_NOTE = ("estimate from lung masks, not a heart segmentation: the widest gap between the lungs in their "
            "lower half, on rows with both lungs, over the lungs' widest outer extent")
NOT_DICOM = ("not written: the source is not a DICOM file (PNG and JPEG inputs have no study or instance for a "
             "DICOM Segmentation to reference)")
#: Contour colours (RGB) of the patient's right and left lung, and of the CTR estimate's gap.
COLOURS = {"right": (255, 140, 0), "left": (0, 190, 255), "gap": (255, 230, 0)}


def segment_files(inputs: Sequence[str | Path], segmenter: Segmenter, out: str | Path, *, overlay: bool = False,
                  dicom: bool = False, allow_modality: bool = False, progress: bool = True) -> BatchResult:
    """Segment the lungs of every readable file of ``inputs``; write the outputs listed in the module doc."""
    out = Path(out)
    paths = collect_inputs(inputs)
    result = BatchResult(out)
    rows: list[dict[str, Any]] = []

    def skip(path: Path, err: Exception) -> None:
        result.skipped.append((str(path), getattr(err, "problem", str(err))))

    with cpu_threads(segmenter.config.threads), progress_bar(len(paths), "segmenting", progress) as advance:
        for radiograph, mask in segmenter.predict_paths(paths, image_ids=unique_ids(paths), on_error=skip,
                                                        on_done=advance, allow_modality=allow_modality):
            rows.append(write_outputs(out, radiograph, mask, segmenter, overlay=overlay, dicom=dicom))
    result.done = len(rows)
    columns = ["image_id", "path", "quality", *COLUMNS]
    result.outputs["lungs"] = write_csv(out / "lungs.csv", pd.DataFrame(rows, columns=columns))
    result.outputs["masks"] = out / "masks"
    result.outputs["per-image JSON"] = out / "json"
    if overlay:
        result.outputs["overlays"] = out / "overlays"
    if dicom:
        result.outputs["DICOM Segmentations"] = out / "dicom"
    write_csv(out / "skipped.csv", pd.DataFrame(result.skipped, columns=["path", "reason"]))
    return result


def write_outputs(out: Path, radiograph: Radiograph, mask: np.ndarray, segmenter: Segmenter, *,
                  overlay: bool = False, dicom: bool = False) -> dict[str, Any]:
    """Write one image's mask, JSON (and overlay, SEG); return its ``lungs.csv`` row."""
    from PIL import Image

    image_id, meta = radiograph.image_id, radiograph.meta
    png = write_atomic(out / "masks" / f"{image_id}.png",
                       lambda tmp: Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG"))
    config = segmenter.config
    measures = measure_lungs(mask, radiograph.pixels, spacing=meta.pixel_spacing, view=meta.view,
                             min_area=config.min_area, min_lung_share=config.min_lung_share)
    record = {
        "image_id": image_id, "source": meta.path, "width": radiograph.width, "height": radiograph.height,
        "view": meta.view, "pixel_spacing_mm": list(meta.pixel_spacing) if meta.pixel_spacing else None,
        "study_instance_uid": meta.study_uid, "series_instance_uid": meta.series_uid,
        "sop_instance_uid": meta.sop_uid, "quality": measures.quality,
        "measurements": {k: v for k, v in measures.record().items() if v is not None} if measures.ok else None,
        "ctr_estimate_note": CTR_NOTE, "mask": str(png),
        "model": {"kind": segmenter.card["kind"], "architecture": segmenter.card["architecture"]["name"],
                  "imgsz": segmenter.imgsz, "versions": segmenter.card.get("versions", {})},
    }
    if overlay:
        record["overlay"] = str(write_overlay(out / "overlays" / f"{image_id}.png", radiograph, mask, measures))
    if dicom:
        record["dicom_segmentation"] = _export(out / "dicom" / f"{image_id}.dcm", radiograph, mask,
                                              model=str(segmenter.card["weights_sha256"])[:16])
    write_json(out / "json" / f"{image_id}.json", record)
    return {"image_id": image_id, "path": meta.path, "quality": measures.quality, **measures.record()}


def _export(path: Path, radiograph: Radiograph, mask: np.ndarray, *, model: str) -> str:
    """The SEG's path, or "not written: why" (a PNG source, no lungs found, a header highdicom refuses);
    ``model``, the lung model's version (its weights' hash), goes into Software Versions."""
    from hybridcxr.dicom_out.seg import export_segmentation

    if not (radiograph.meta.study_uid or radiograph.meta.sop_uid):
        return NOT_DICOM
    right, left = split_lungs(mask)
    try:
        return str(export_segmentation(right, left, radiograph.meta.path, path, model=model))
    except HybridCXRError as err:
        return f"not written: {getattr(err, 'problem', str(err))}"
    except (ValueError, TypeError, AttributeError) as err:  # highdicom's checks of the source header
        return f"not written: highdicom refused the source header ({type(err).__name__}: {str(err)[:200]})"


def write_overlay(path: Path, radiograph: Radiograph, mask: np.ndarray, measures: LungMeasures) -> Path:
    """The radiograph with each lung's contour, the CTR estimate's gap and a one-line caption, as a PNG."""
    import cv2

    from hybridcxr.viz.overlay import write_png

    grey = (np.clip(np.nan_to_num(radiograph.pixels), 0, 1) * 255 + 0.5).astype(np.uint8)
    rgb = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    size = max(radiograph.width, radiograph.height)
    thick, scale = max(1, round(size / 400)), max(0.4, size / 1400)
    for side, lung in zip(("right", "left"), split_lungs(mask)):
        contours, _ = cv2.findContours(lung.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, COLOURS[side], thick)
        if lung.any():
            ys, xs = np.nonzero(lung)
            cv2.putText(rgb, side[0].upper(), (int(xs.mean()), int(ys.min()) + int(30 * scale)),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, COLOURS[side], thick, cv2.LINE_AA)
    values = measures.values
    if measures.ok and values.get("ctr_row") is not None:
        row, right = values["ctr_row"], split_lungs(mask)[0]
        x0 = int(np.flatnonzero(right[row])[-1]) + 1
        cv2.line(rgb, (x0, row), (x0 + values["heart_width_px"], row), COLOURS["gap"], thick)
    caption = (f"{radiograph.image_id}: CTR estimate {values['ctr_estimate']:.2f}"
               if measures.ok and "ctr_estimate" in values else f"{radiograph.image_id}: {measures.quality}")
    cv2.putText(rgb, caption[:90], (int(10 * scale), int(40 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), thick, cv2.LINE_AA)
    return write_png(path, rgb)
