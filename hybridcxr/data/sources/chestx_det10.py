"""ChestX-Det10: instance-level boxes on 3,543 NIH ChestX-ray14 images by three board-certified radiologists.

Findings (:data:`hybridcxr.findings.CHESTX_DET10`): Atelectasis, Calcification, Consolidation, Effusion,
Emphysema, Fibrosis, Fracture, Mass, Nodule, Pneumothorax. An image's finding column is 1 where it has a box
of that class; images without boxes are all zeros.

Layout (github.com/Deepwise-AILab/ChestX-Det10-Dataset; images from the NIH ChestX-ray14 download)::

    train.json  test.json    [{"file_name": "00000042_006.png", "syms": [...], "boxes": [[x1, y1, x2, y2], ...]}]
    <any folders>/<file_name> the NIH PNGs, found recursively (e.g. NIH's images_001/images/)

Boxes are left, top, right, bottom in the 1024x1024 frame of the NIH PNGs; one reader row per box
(reader ``"chestx-det10"``: the JSON holds the radiologists' agreed boxes, not one set per reader). Where an
image on disk is not 1024x1024 its boxes are rescaled to the file. File names are NIH image ids, whose prefix
before ``_`` is the NIH patient id: patient_id is that prefix (zero-padded, as :mod:`.nih` writes it), so
patient-grouped splits stay leak-free when ChestX-Det10 and NIH are combined.

Source: Liu J., Lian J., Yu Y., "ChestX-Det10: Chest X-ray Dataset on Detection of Thoracic Abnormalities",
arXiv:2006.10550 (2020); images: Wang X. et al., "ChestX-ray8", CVPR 2017. See datasets/chestx-det10.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from hybridcxr.data.boxes import LabelRule
from hybridcxr.data.schema import SourceTables
from hybridcxr.data.sources._common import (
    NO_PATIENT_IDS,
    PathLike,
    Paths,
    as_paths,
    boxes_frame,
    check_root,
    find_images,
    finish,
    fit_to_files,
    read_json,
    resolve_given,
    split_of,
    warn_unknown,
)
from hybridcxr.errors import DatasetError
from hybridcxr.findings import CHESTX_DET10, canonical

NAME = "chestx-det10"
READER = "chestx-det10"
#: NIH ChestX-ray14 PNGs (and so ChestX-Det10's boxes) are 1024x1024.
NIH_FRAME = 1024
_NIH_ID = re.compile(r"^(\d{8})_\d{3}$")


def nih_patient_id(image_id: str) -> str | None:
    """The NIH patient id of an NIH image id (``00002578_000`` -> ``00002578``), else None."""
    match = _NIH_ID.match(image_id)
    return match.group(1) if match else None


def read_boxes(path: PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read one ChestX-Det10 JSON: its images (``image_id, file_name, split``; boxless ones too) and its boxes
    (Box table columns, reader ``"chestx-det10"``). Unknown classes are warned about once and dropped."""
    path = Path(path)
    data = read_json(path, what="ChestX-Det10 annotation file")
    if not isinstance(data, list):
        raise DatasetError(path, "expected a JSON list of {file_name, syms, boxes} entries")
    if not data:
        raise DatasetError(path, "ChestX-Det10 annotation file is empty (no entries)")
    images, boxes, unknown = [], [], {}
    file_split = split_of(path)
    for n, entry in enumerate(data):
        if not isinstance(entry, dict) or "file_name" not in entry:
            raise DatasetError(path, f"entry {n} has no file_name")
        syms, coords = entry.get("syms") or [], entry.get("boxes") or []
        if len(syms) != len(coords):
            raise DatasetError(path, f"entry {n} ({entry['file_name']}) has {len(syms)} syms but {len(coords)} boxes")
        image_id = Path(str(entry["file_name"])).stem
        images.append({"image_id": image_id, "file_name": str(entry["file_name"]),
                       "split": str(entry.get("split") or file_split)})
        for sym, box in zip(syms, coords):
            name = canonical(str(sym))
            if name not in CHESTX_DET10:
                unknown[name] = unknown.get(name, 0) + 1
                continue
            if len(box) != 4:
                raise DatasetError(path, f"entry {n} ({entry['file_name']}) has a box of {len(box)} numbers, not 4")
            boxes.append({"image_id": image_id, "finding": name, "reader": READER,
                          "x_min": box[0], "y_min": box[1], "x_max": box[2], "y_max": box[3]})
    warn_unknown(path, unknown, CHESTX_DET10)
    return pd.DataFrame(images), boxes_frame(boxes)


def load(
    root: PathLike,
    *,
    labels: Paths | None = None,
    boxes: Paths | None = None,
    label_rule: LabelRule = "any",
    read_sizes: bool = True,
    workers: int = 8,
    missing: str = "keep",
) -> SourceTables:
    """Read ChestX-Det10 under ``root`` into Study and Box tables.

    Args:
        root: folder holding the NIH PNGs (searched recursively) and, by default, ``train.json``/``test.json``.
        labels: alias of ``boxes`` (the JSON is both).
        boxes: ChestX-Det10 JSON file(s) overriding ``train.json``/``test.json``.
        label_rule: accepted for a uniform interface; the JSON has one (agreed) set of boxes per image.
        read_sizes: read each PNG's header size and rescale boxes where it is not 1024x1024.
        workers: threads reading sizes.
        missing: "keep" images not on disk (``path`` None) or "drop" them.
    """
    base = check_root(root, NAME)
    notes: list[str] = []
    given = as_paths(boxes) or as_paths(labels)
    if given:
        paths = [resolve_given(base, p) for p in given]
    else:
        paths = [base / f"{s}.json" for s in ("train", "test") if (base / f"{s}.json").is_file()]
        if not paths:
            raise DatasetError(base / "train.json", "ChestX-Det10 annotation file not found; pass boxes=")
    images, box_tables = [], []
    for path in paths:
        entries, found = read_boxes(path)
        images.append(entries)
        box_tables.append(found)
    studies = pd.concat(images, ignore_index=True).drop_duplicates("image_id")
    box_table = boxes_frame(pd.concat(box_tables, ignore_index=True))

    present = box_table.drop_duplicates(["image_id", "finding"]).assign(v=1)
    marks = present.pivot(index="image_id", columns="finding", values="v") if len(present) else pd.DataFrame()
    for finding in CHESTX_DET10:
        studies[finding] = studies["image_id"].map(marks[finding]).fillna(0).astype(int) \
            if finding in marks else 0

    pids = studies["image_id"].map(nih_patient_id)
    if pids.isna().all():
        notes.append(NO_PATIENT_IDS)
    elif pids.isna().any():
        notes.append(f"{int(pids.isna().sum())} file names are not NIH image ids: grouped by image")
    studies["patient_id"] = pids.fillna(studies["image_id"])

    index = find_images(base)
    studies["path"] = [
        (lambda p: str(p.resolve()) if p is not None else None)(index.find_name(f) or index.find(i))
        for f, i in zip(studies["file_name"], studies["image_id"])
    ]
    studies["width"], studies["height"] = float(NIH_FRAME), float(NIH_FRAME)
    studies, box_table = fit_to_files(studies, box_table, notes, read_sizes=read_sizes, workers=workers)
    notes.append("no demographics: ChestX-Det10 has none (join with the NIH table for age and sex)")
    return finish(NAME, CHESTX_DET10, studies.drop(columns=["file_name"]), box_table, notes,
                  missing=missing, root=base)
