"""NIH ChestX-ray14: 112,120 frontal chest radiographs (PNG, 1024x1024) of 30,805 patients with 14
NLP-mined labels, and 984 radiologist boxes on 880 of them.

Findings (:data:`hybridcxr.findings.NIH14`): Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass,
Nodule, Pneumonia, Pneumothorax, Consolidation, Edema, Emphysema, Fibrosis, Pleural_Thickening, Hernia.
"No Finding" is the all-zero row; the extra column ``no_finding`` repeats NIH's own "No Finding" label.

Layout (nihcc.app.box.com/v/ChestXray-NIHCC, or Kaggle "nih-chest-xrays/data")::

    Data_Entry_2017_v2020.csv   Image Index, Finding Labels (a|b|c), Follow-up #, Patient ID, Patient Age,
                                Patient Gender, View Position, OriginalImage[Width, Height], ...
    BBox_List_2017.csv          Image Index, Finding Label, Bbox [x, y, w, h]   ("Infiltrate" = Infiltration)
    train_val_list.txt  test_list.txt    the official patient-wise split (split "train" / "test")
    images_001/images/*.png ... images_012/images/*.png   (found recursively: any folders will do)

Only images found on disk are kept (``missing="drop"``; a note counts the others), so a folder holding a few
hundred of the 112k images works. NIH boxes are ``x, y, w, h`` in the 1024x1024 frame of the PNGs (not in
the ``OriginalImage`` size, which is the pre-release scan kept as ``original_width``/``original_height``);
``width``/``height`` are each file's own size read from its header, and where a file is not 1024x1024 (a
downscaled copy) its boxes are rescaled to it, with a note. ``extra_boxes`` adds other readers' boxes of the
same images: a ChestX-Det10 JSON (reader ``"chestx-det10"``; its Calcification and Fracture have no NIH-14
counterpart and are left out) or another BBox_List-style CSV (reader ``"nih"``).

Source: Wang X., Peng Y., Lu L., Lu Z., Bagheri M., Summers R.M., "ChestX-ray8: Hospital-scale Chest X-ray
Database and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases",
CVPR 2017. See datasets/nih.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hybridcxr.data.boxes import LabelRule
from hybridcxr.data.schema import SourceTables
from hybridcxr.data.sources._common import (
    PathLike,
    Paths,
    as_paths,
    boxes_frame,
    check_root,
    find_images,
    finish,
    fit_to_files,
    parse_ages,
    parse_sexes,
    parse_views,
    read_csv,
    resolve_given,
    warn_unknown,
)
from hybridcxr.data.sources.chestx_det10 import NIH_FRAME, nih_patient_id
from hybridcxr.data.sources.chestx_det10 import read_boxes as read_chestx_det10
from hybridcxr.errors import DatasetError
from hybridcxr.findings import NIH14, NO_FINDING, canonical

NAME = "nih"
READER = "nih"
_LABELS = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
_BOXES = "BBox_List_2017.csv"
_SPLITS = {"train": "train_val_list.txt", "test": "test_list.txt"}


def load(
    root: PathLike,
    *,
    labels: Paths | None = None,
    boxes: Paths | None = None,
    label_rule: LabelRule = "any",
    extra_boxes: Paths | None = None,
    read_sizes: bool = True,
    workers: int = 8,
    missing: str = "drop",
) -> SourceTables:
    """Read NIH ChestX-ray14 under ``root`` into Study and Box tables.

    Args:
        root: folder holding the PNGs (searched recursively) and, by default, the tables.
        labels: ``Data_Entry_2017*.csv``-style table(s) overriding the default.
        boxes: ``BBox_List_2017.csv``-style table(s) overriding the default.
        label_rule: accepted for a uniform interface; NIH has one (NLP-mined) label set per image.
        extra_boxes: more box files of the same images, as other readers: ChestX-Det10 ``.json`` or
            BBox_List-style ``.csv``.
        read_sizes: read each PNG's header size (cheap) and rescale boxes of files not 1024x1024.
        workers: threads reading sizes.
        missing: "drop" (default) or "keep" images not on disk.
    """
    base = check_root(root, NAME)
    notes: list[str] = []
    studies = pd.concat([_read_labels(p) for p in _label_paths(base, labels)], ignore_index=True)
    studies = studies.drop_duplicates("image_id")
    _assign_splits(base, studies, notes)

    index = find_images(base)
    studies["path"] = [(lambda p: str(p.resolve()) if p is not None else None)(index.find(i))
                       for i in studies["image_id"]]
    if index.duplicates:
        notes.append(f"{index.duplicates} images have more than one file under the root: first in path order used")

    box_parts = []
    box_paths = [resolve_given(base, p) for p in as_paths(boxes)]
    if not box_paths:
        if (base / _BOXES).is_file():
            box_paths = [base / _BOXES]
        else:
            notes.append(f"no {_BOXES} under the root: no NIH boxes")
    box_parts += [read_bbox_list(p) for p in box_paths]
    for path in (resolve_given(base, p) for p in as_paths(extra_boxes)):
        box_parts.append(_extra(path, notes))
    box_table = boxes_frame(pd.concat(box_parts, ignore_index=True) if box_parts else None)

    studies["width"], studies["height"] = float(NIH_FRAME), float(NIH_FRAME)
    on_disk = studies[studies["path"].notna()] if missing == "drop" else studies
    fitted, box_table = fit_to_files(on_disk, box_table, notes, read_sizes=read_sizes, workers=workers)
    studies = pd.concat([fitted, studies[~studies.index.isin(fitted.index)]]).sort_index()
    return finish(NAME, NIH14, studies, box_table, notes, missing=missing, root=base)


def _label_paths(root: Path, labels: Paths | None) -> list[Path]:
    given = as_paths(labels)
    if given:
        return [resolve_given(root, p) for p in given]
    for name in _LABELS:
        if (root / name).is_file():
            return [root / name]
    found = sorted(root.glob("Data_Entry_2017*.csv"))
    if found:
        return found[:1]
    raise DatasetError(root / _LABELS[0], "NIH label table (Data_Entry_2017*.csv) not found; pass labels=")


def _read_labels(path: Path) -> pd.DataFrame:
    """Study rows of one Data_Entry table: ids, demographics, view and the 14 finding columns."""
    table = read_csv(path, ["Image Index", "Finding Labels"], what="NIH label table")
    out = pd.DataFrame({"image_id": table["Image Index"].astype(str).str.strip().map(lambda n: Path(n).stem)})
    labels = table["Finding Labels"].fillna("").astype(str).str.split("|")
    names = labels.map(lambda items: [canonical(x) for x in items if x.strip()])
    flat = pd.Series([n for items in names for n in items], dtype=str)
    unknown = flat[~flat.isin((*NIH14, NO_FINDING))].value_counts()
    warn_unknown(path, unknown.to_dict(), (*NIH14, NO_FINDING))
    for finding in NIH14:
        out[finding] = names.map(lambda items, f=finding: int(f in items))
    out["no_finding"] = names.map(lambda items: int(NO_FINDING in items))
    if "Patient ID" in table:
        pid = pd.to_numeric(table["Patient ID"], errors="coerce")
        out["patient_id"] = [f"{int(p):08d}" if pd.notna(p) else None for p in pid]
    else:
        out["patient_id"] = None
    out["patient_id"] = out["patient_id"].fillna(out["image_id"].map(nih_patient_id))
    out["age_years"] = parse_ages(table["Patient Age"], path) if "Patient Age" in table else float("nan")
    out["sex"] = parse_sexes(table["Patient Gender"]) if "Patient Gender" in table else None
    out["view"] = parse_views(table["View Position"]) if "View Position" in table else None
    if "Follow-up #" in table:
        out["follow_up"] = pd.to_numeric(table["Follow-up #"], errors="coerce")
    for width, height in (("OriginalImage[Width", "Height]"), ("OriginalImageWidth", "OriginalImageHeight")):
        if width in table and height in table:
            out["original_width"] = pd.to_numeric(table[width], errors="coerce")
            out["original_height"] = pd.to_numeric(table[height], errors="coerce")
            break
    out["split"] = ""
    return out


def _assign_splits(root: Path, studies: pd.DataFrame, notes: list[str]) -> None:
    """``split`` from NIH's official lists where present (train_val -> "train")."""
    found = []
    for split, name in _SPLITS.items():
        path = root / name
        if path.is_file():
            ids = {Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()}
            studies.loc[studies["image_id"].isin(ids), "split"] = split
            found.append(name)
    if found:
        notes.append(f"official split from {', '.join(found)} (train_val -> 'train')")
    else:
        notes.append("no train_val_list.txt/test_list.txt under the root: no official split (prepare splits by "
                     "patient, or takes --split-tables)")


def read_bbox_list(path: PathLike, reader: str = READER) -> pd.DataFrame:
    """Read a BBox_List_2017-style CSV (``Image Index, Finding Label`` then ``x, y, w, h`` in the next four
    columns, whatever their header says) into Box table rows; unknown labels warned about and dropped."""
    path = Path(path)
    table = read_csv(path, ["Image Index", "Finding Label"], what="NIH box table")
    cols = list(table.columns)
    start = cols.index("Finding Label") + 1
    if len(cols) < start + 4:
        raise DatasetError(path, f"NIH box table needs x, y, w, h after 'Finding Label'; it has {cols}")
    xywh = table[cols[start:start + 4]].apply(pd.to_numeric, errors="coerce")
    xywh.columns = ["x", "y", "w", "h"]
    names = table["Finding Label"].astype(str).map(canonical)
    unknown = names[~names.isin(NIH14)].value_counts()
    warn_unknown(path, unknown.to_dict(), NIH14)
    keep = names.isin(NIH14) & xywh.notna().all(axis=1)
    out = pd.DataFrame({
        "image_id": table["Image Index"].astype(str).str.strip().map(lambda n: Path(n).stem),
        "finding": names, "reader": reader,
        "x_min": xywh["x"], "y_min": xywh["y"], "x_max": xywh["x"] + xywh["w"], "y_max": xywh["y"] + xywh["h"],
    })
    return boxes_frame(out[keep])


def _extra(path: Path, notes: list[str]) -> pd.DataFrame:
    """Boxes of another reader: ChestX-Det10 JSON (mapped onto NIH-14) or a BBox_List-style CSV."""
    if path.suffix.lower() == ".json":
        _, found = read_chestx_det10(path)
        mapped = found["finding"].isin(NIH14)
        if (~mapped).any():
            left = found.loc[~mapped, "finding"].value_counts().to_dict()
            notes.append(f"{path.name}: {int((~mapped).sum())} ChestX-Det10 boxes without an NIH-14 counterpart "
                         f"left out ({left})")
        notes.append(f"{path.name}: {int(mapped.sum())} ChestX-Det10 boxes added as reader 'chestx-det10'")
        return found[mapped]
    found = read_bbox_list(path)
    notes.append(f"{path.name}: {len(found)} extra boxes added as reader 'nih'")
    return found
