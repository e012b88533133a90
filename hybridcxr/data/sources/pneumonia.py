"""Guangzhou paediatric pneumonia set (Kermany et al. 2018): 5,856 chest radiographs (JPEG) of children aged
one to five from Guangzhou Women and Children's Medical Center, labelled normal or pneumonia.

Findings (:data:`hybridcxr.findings.PNEUMONIA`): Pneumonia. The extra column ``pneumonia_type`` holds the
subtype the file name gives (``"bacterial"``, ``"viral"``; ``""`` for normal images) and ``no_finding`` is 1
for the NORMAL folder. There are no boxes.

Layout (Kaggle "paultimothymooney/chest-xray-pneumonia", or Mendeley Data doi:10.17632/rscbjbr9sj)::

    {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg    (found at any depth: chest_xray/train/... works too)

The Kaggle copy names files ``person1234_bacteria_2345.jpeg`` / ``person1234_virus_2345.jpeg`` (patient
``person1234``) and ``IM-0115-0001.jpeg`` / ``NORMAL2-IM-1427-0001.jpeg`` (patient ``IM-0115`` /
``NORMAL2-IM-1427``: the ``-NNNN`` suffixes number a patient's images, a heuristic the dataset does not
document). The Mendeley v3 copy names them ``NORMAL-1049278-0001.jpeg`` / ``BACTERIA-...`` / ``VIRUS-...``
(disease, randomised patient id, image number): patient ``1049278``. Other names are grouped by image.
Kaggle's official ``val`` split holds only 16 images; use it for nothing but a smoke test. The zip's
duplicated ``chest_xray/chest_xray/`` copy and ``__MACOSX/`` folder are skipped.

Source: Kermany D.S., Goldbaum M. et al., "Identifying Medical Diagnoses and Treatable Diseases by
Image-Based Deep Learning", Cell 172(5), 1122-1131 (2018); data: Kermany D., Zhang K., Goldbaum M.,
Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 (CC BY 4.0). See datasets/pneumonia.md.
"""

from __future__ import annotations

import re

import pandas as pd

from hybridcxr.data.boxes import LabelRule
from hybridcxr.data.schema import SourceTables
from hybridcxr.data.sources._common import (
    PathLike,
    Paths,
    boxes_frame,
    check_root,
    find_images,
    finish,
    fit_to_files,
)
from hybridcxr.errors import DatasetError
from hybridcxr.findings import PNEUMONIA

NAME = "pneumonia"
_CLASSES = {"NORMAL": 0, "PNEUMONIA": 1}
_SPLITS = {"train": "train", "val": "val", "test": "test"}
_KAGGLE_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_KAGGLE_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)
_MENDELEY = re.compile(r"^(NORMAL|BACTERIA|VIRUS)-(\d+)-\d+", re.IGNORECASE)
_TYPES = {"bacteria": "bacterial", "virus": "viral"}


def patient_of(stem: str) -> tuple[str | None, str]:
    """The patient id and pneumonia subtype (``"bacterial"``, ``"viral"`` or ``""``) a file name gives;
    patient None where the name follows no known pattern.

    >>> patient_of("person1234_bacteria_2345")
    ('person1234', 'bacterial')
    >>> patient_of("NORMAL2-IM-1427-0001")
    ('NORMAL2-IM-1427', '')
    """
    if match := _KAGGLE_PERSON.match(stem):
        return match.group(1).lower(), _TYPES[match.group(2).lower()]
    if match := _MENDELEY.match(stem):
        return match.group(2), _TYPES.get(match.group(1).lower(), "")
    if match := _KAGGLE_NORMAL.match(stem):
        return match.group(1).upper(), ""
    return None, ""


def load(
    root: PathLike,
    *,
    labels: Paths | None = None,
    boxes: Paths | None = None,
    label_rule: LabelRule = "any",
    read_sizes: bool = False,
    workers: int = 8,
) -> SourceTables:
    """Read the Guangzhou pneumonia folders under ``root`` into a Study table (and an empty Box table).

    Args:
        root: folder holding ``{train,val,test}/{NORMAL,PNEUMONIA}/`` at any depth.
        labels: not used (the folders are the labels); given for a uniform interface.
        boxes: not used (the dataset has no boxes).
        label_rule: not used (one label per image).
        read_sizes: read each JPEG's header size into width/height (else left to ``prepare``).
        workers: threads reading sizes.
    """
    base = check_root(root, NAME)
    notes: list[str] = []
    if labels is not None or boxes is not None:
        notes.append("labels=/boxes= ignored: the pneumonia set's folders are its labels and it has no boxes")
    index = find_images(base, extensions=(".jpeg", ".jpg", ".png"))
    rows, seen, copies, foreign = [], {}, 0, 0
    for stem, paths in sorted(index.by_stem.items()):
        for path in paths:
            parts = [p for p in path.relative_to(base).parts[:-1]]
            label = next((p.upper() for p in reversed(parts) if p.upper() in _CLASSES), None)
            split = next((_SPLITS[p.lower()] for p in reversed(parts) if p.lower() in _SPLITS), "")
            if label is None:
                foreign += 1
                continue
            key = (split, label, path.name)
            if key in seen:
                copies += 1  # e.g. the Kaggle zip's chest_xray/chest_xray/ duplicate
                continue
            seen[key] = path
            patient, kind = patient_of(stem)
            rows.append({"image_id": stem, "path": str(path.resolve()), "split": split, "patient_id": patient,
                         "Pneumonia": _CLASSES[label],
                         "pneumonia_type": (kind or "unknown") if _CLASSES[label] else "",
                         "no_finding": 1 - _CLASSES[label]})
    if not rows:
        raise DatasetError(base, "no images in NORMAL/ or PNEUMONIA/ folders under the root")
    studies = pd.DataFrame(rows)
    clash = studies["image_id"].duplicated(keep=False)
    if clash.any():
        studies.loc[clash, "image_id"] = studies.loc[clash, "split"] + "_" + studies.loc[clash, "image_id"]
        notes.append(f"{int(clash.sum())} file names occur in more than one split: their ids are prefixed "
                     "with the split")
    if copies:
        notes.append(f"{copies} duplicate copies of the same split/class/file ignored")
    if foreign:
        notes.append(f"{foreign} images outside NORMAL/ and PNEUMONIA/ folders ignored")
    unparsed = studies["patient_id"].isna()
    if unparsed.all():
        notes.append("no patient ids: grouped by image")
    elif unparsed.any():
        notes.append(f"{int(unparsed.sum())} file names without a patient id pattern: grouped by image")
    studies["patient_id"] = studies["patient_id"].fillna(studies["image_id"])
    val = int((studies["split"] == "val").sum())
    if val:
        notes.append(f"the official val split has only {val} images (16 in the Kaggle release)")
    cross = studies.groupby("patient_id")["split"].nunique()
    if (cross > 1).any():
        notes.append(f"{int((cross > 1).sum())} patient ids appear in more than one official split")
    box_table = boxes_frame(None)
    studies["width"], studies["height"] = float("nan"), float("nan")
    studies, box_table = fit_to_files(studies, box_table, notes, read_sizes=read_sizes, workers=workers)
    return finish(NAME, PNEUMONIA, studies, box_table, notes, root=base)
