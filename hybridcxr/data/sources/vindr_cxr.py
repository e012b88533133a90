"""VinDr-CXR: 18,000 adult chest radiographs (DICOM) from two Hanoi hospitals, boxed by radiologists.

Findings (the 14 local findings with boxes, :data:`hybridcxr.findings.VINDR_CXR`): Aortic enlargement,
Atelectasis, Calcification, Cardiomegaly, Consolidation, ILD, Infiltration, Lung Opacity, Nodule/Mass, Other
lesion, Pleural effusion, Pleural thickening, Pneumothorax, Pulmonary fibrosis. "No finding" is the all-zero
row (and the extra ``no_finding`` column). The training images were read by 3 of 17 radiologists each,
independently; the test images by a consensus of 5.

Layouts, detected automatically (``layout="physionet"`` or ``"kaggle"`` forces one):

* PhysioNet (``physionet.org/content/vindr-cxr/1.0.0``)::

      annotations/annotations_train.csv    image_id, rad_id, class_name, x_min, y_min, x_max, y_max
      annotations/annotations_test.csv     (22 local labels; "No finding" rows have no box)
      annotations/image_labels_train.csv   image_id, rad_id, 28 label columns (22 local + 6 global)
      annotations/image_labels_test.csv
      train/<image_id>.dicom   test/<image_id>.dicom

* Kaggle (VinBigData competition)::

      train.csv   image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max   (67,914 rows)
      train/<image_id>.dicom   test/<image_id>.dicom (unlabelled: not included)

Image labels are per reader (PhysioNet ``image_labels``; Kaggle: the reader's rows) combined by
``label_rule`` ("any" reader / "majority" of the image's readers). Boxes are the raw per-reader boxes in
original pixels; readers are fused later (:mod:`hybridcxr.data.boxes`). The 8 other local labels (Clavicle
fracture, Edema, Emphysema, Enlarged PA, Lung cavity, Lung cyst, Mediastinal shift, Rib fracture) and the 6
global labels (COPD, Lung tumor, Pneumonia, Tuberculosis, Other diseases, No finding) are known but not used.
Age, sex, view, PatientID and Rows/Columns come from the DICOM headers (VinDr has no demographics table).

Source: Nguyen H.Q. et al., "VinDr-CXR: An open dataset of chest X-rays with radiologist's annotations",
Scientific Data 9, 429 (2022); PhysioNet https://doi.org/10.13026/3akn-b287. See datasets/vindr-cxr.md.

>>> tables = load("/data/vindr-cxr", label_rule="majority")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hybridcxr.data.boxes import LabelRule, labels_from_readers
from hybridcxr.data.schema import SourceTables
from hybridcxr.data.sources._common import (
    PathLike,
    Paths,
    Progress,
    as_paths,
    attach_images,
    boxes_frame,
    check_root,
    count_unknown,
    finish,
    read_csv,
    reader_column,
    resolve_given,
    split_of,
    warn_unknown,
    wide_reader_labels,
)
from hybridcxr.errors import DatasetError
from hybridcxr.findings import NO_FINDING, VINDR_CXR, canonical

NAME = "vindr-cxr"

#: VinDr-CXR's local labels outside the 14 used here (boxed on PhysioNet, absent from the Kaggle table).
OTHER_LOCAL_LABELS: tuple[str, ...] = (
    "Clavicle fracture", "Edema", "Emphysema", "Enlarged PA", "Lung cavity", "Lung cyst", "Mediastinal shift",
    "Rib fracture",
)
#: VinDr-CXR's global (image-level) labels: diagnoses without boxes, not used as findings.
GLOBAL_LABELS: tuple[str, ...] = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", NO_FINDING)
KNOWN_LABELS: frozenset[str] = frozenset((*VINDR_CXR, *OTHER_LOCAL_LABELS, *GLOBAL_LABELS))
#: The test table of PhysioNet v1.0.0 spells one global label differently from the train table.
_RENAMES = {"Other disease": "Other diseases"}
_BOX_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")


def load(
    root: PathLike,
    *,
    labels: Paths | None = None,
    boxes: Paths | None = None,
    label_rule: LabelRule = "any",
    layout: str = "auto",
    sizes: PathLike | None = None,
    read_headers: bool = True,
    workers: int = 8,
    progress: Progress | None = None,
    missing: str = "keep",
) -> SourceTables:
    """Read VinDr-CXR under ``root`` into Study and Box tables.

    Args:
        root: dataset folder (PhysioNet or Kaggle layout).
        labels: image-label table(s) overriding the layout's: PhysioNet ``image_labels_*.csv`` or a Kaggle
            ``train.csv`` (which is labels and boxes in one).
        boxes: box table(s) overriding ``annotations/annotations_*.csv`` (PhysioNet layout).
        label_rule: "any" reader or "majority" of an image's readers makes a finding positive.
        layout: "auto", "physionet" or "kaggle".
        sizes: optional ``image_id, width, height`` table (e.g. the public ``train_info.csv``) giving image
            sizes without reading the images.
        read_headers: read age, sex, view, PatientID and size from each DICOM header (no pixels).
        workers: threads reading headers.
        progress: ``progress(done, total)`` callback while headers are read.
        missing: "keep" images not on disk (``path`` None) or "drop" them.
    """
    base = check_root(root, NAME)
    notes: list[str] = []
    kind = _layout(base, labels, layout)
    if kind == "kaggle":
        studies, reader_labels, box_table = _kaggle(base, as_paths(labels) or as_paths(boxes), notes)
    else:
        studies, reader_labels, box_table = _physionet(base, as_paths(labels), as_paths(boxes), notes)
    notes.insert(0, f"{kind} layout")
    dup = studies["image_id"].duplicated()
    if dup.any():
        notes.append(f"{int(dup.sum())} images listed in more than one table: first split kept")
        studies = studies[~dup].reset_index(drop=True)

    ids = studies["image_id"].tolist()
    readers = reader_labels.groupby("image_id")["reader"].nunique()
    marked = labels_from_readers(reader_labels, ids, (*VINDR_CXR, NO_FINDING), rule=label_rule,
                                 readers_per_image=readers)
    studies = studies.join(marked.rename(columns={NO_FINDING: "no_finding"}), on="image_id")
    studies["n_readers"] = studies["image_id"].map(readers).fillna(0).astype(int)
    studies = attach_images(studies, base, notes, read_headers=read_headers, workers=workers,
                            progress=progress, sizes=sizes)
    return finish(NAME, VINDR_CXR, studies, box_table, notes, missing=missing, root=base)


def _layout(root: Path, labels: Paths | None, layout: str) -> str:
    """Which layout ``root`` (or the given label table) follows."""
    if layout in ("physionet", "kaggle"):
        return layout
    if layout != "auto":
        raise ValueError(f"layout must be 'auto', 'physionet' or 'kaggle', not {layout!r}")
    given = as_paths(labels)
    if given:
        head = read_csv(resolve_given(root, given[0]), ["image_id"], what="label table", nrows=5)
        return "kaggle" if "class_name" in head.columns else "physionet"
    if (root / "annotations").is_dir():
        return "physionet"
    if (root / "train.csv").is_file():
        return "kaggle"
    raise DatasetError(root, "neither the PhysioNet layout (annotations/image_labels_train.csv) nor the "
                             "Kaggle layout (train.csv) is here; pass labels= to point at the tables")


def _split_rows(table: pd.DataFrame, default_split: str) -> pd.DataFrame:
    ids = table["image_id"].astype(str).str.strip().drop_duplicates()
    return pd.DataFrame({"image_id": ids.values, "split": default_split})


def _box_rows(table: pd.DataFrame, path: Path, notes: list[str], default_reader: str) -> tuple[pd.DataFrame, int]:
    """Box rows of a long annotation table: unknown labels warned and dropped, known labels outside the 14
    noted, "No finding" rows (no coordinates) skipped. Also returns the count of "No finding" rows."""
    table = table.copy()
    table["class_name"] = table["class_name"].astype(str).map(canonical)
    unknown = count_unknown(table["class_name"], KNOWN_LABELS)
    warn_unknown(path, unknown, KNOWN_LABELS)
    table = table[table["class_name"].isin(KNOWN_LABELS)]
    no_finding = table["class_name"] == NO_FINDING
    other = ~table["class_name"].isin(VINDR_CXR) & ~no_finding
    if other.any():
        names = sorted(table.loc[other, "class_name"].unique())
        notes.append(f"{path.name}: {int(other.sum())} boxes of labels outside the 14 findings not used ({names})")
    kept = table[table["class_name"].isin(VINDR_CXR)]
    coords = kept[["x_min", "y_min", "x_max", "y_max"]].apply(pd.to_numeric, errors="coerce")
    no_box = coords.isna().any(axis=1)
    if no_box.any():
        notes.append(f"{path.name}: {int(no_box.sum())} finding rows without box coordinates skipped")
    reader = reader_column(kept)
    out = pd.DataFrame({
        "image_id": kept["image_id"].astype(str).str.strip(),
        "finding": kept["class_name"],
        "reader": kept[reader].astype(str).str.strip() if reader else default_reader,
    })
    out = pd.concat([out, coords], axis=1)[~no_box]
    return out, int(no_finding.sum())


def _kaggle(root: Path, given: list[Path], notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Study rows, per-reader labels and boxes from Kaggle ``train.csv``-style long tables."""
    paths = [resolve_given(root, p) for p in given] or [root / "train.csv"]
    studies, reader_labels, boxes = [], [], []
    for path in paths:
        table = read_csv(path, [*_BOX_COLUMNS, "rad_id"], what="VinDr-CXR annotation table")
        split = split_of(path) or "train"
        studies.append(_split_rows(table, split))
        found, n_no_finding = _box_rows(table, path, notes, default_reader="reader")
        boxes.append(found)
        labelled = table.assign(finding=table["class_name"].astype(str).map(canonical))
        reader_labels.append(pd.DataFrame({
            "image_id": labelled["image_id"].astype(str).str.strip(),
            "reader": labelled["rad_id"].astype(str).str.strip(),
            "finding": labelled["finding"].where(labelled["finding"].isin((*VINDR_CXR, NO_FINDING)), ""),
        }))
        notes.append(f"{path.name}: {len(table)} rows, {len(found)} boxes, {n_no_finding} 'No finding' rows")
    if (root / "test").is_dir():
        notes.append("Kaggle test/ images have no labels: not included")
    return pd.concat(studies, ignore_index=True), pd.concat(reader_labels, ignore_index=True), boxes_frame(
        pd.concat(boxes, ignore_index=True))


def _physionet(
    root: Path, labels: list[Path], boxes: list[Path], notes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Study rows, per-reader labels and boxes from PhysioNet ``image_labels_*``/``annotations_*`` tables."""
    if labels:
        label_paths = [resolve_given(root, p) for p in labels]
    else:
        label_paths = [root / "annotations" / f"image_labels_{s}.csv" for s in ("train", "test")]
        label_paths = [p for p in label_paths if p.is_file()] or [root / "annotations" / "image_labels_train.csv"]
    if boxes:
        box_paths = [resolve_given(root, p) for p in boxes]
    elif labels:
        box_paths = [p for p in (root / "annotations" / f"annotations_{split_of(q) or 'train'}.csv"
                                 for q in label_paths) if p.is_file()]
        if not box_paths:
            notes.append("no annotation tables given or found: no boxes")
    else:
        box_paths = [root / "annotations" / f"annotations_{split_of(p) or 'train'}.csv" for p in label_paths]
    studies, reader_labels, found = [], [], []
    for path in label_paths:
        table = read_csv(path, ["image_id"], what="VinDr-CXR image label table")
        split = split_of(path)
        studies.append(_split_rows(table, split))
        reader_labels.append(wide_reader_labels(
            table, path, used=(*VINDR_CXR, NO_FINDING), known=KNOWN_LABELS, renames=_RENAMES,
            default_reader="consensus" if split == "test" else "reader"))
    for path in dict.fromkeys(box_paths):
        table = read_csv(path, list(_BOX_COLUMNS), what="VinDr-CXR annotation table")
        rows, _ = _box_rows(table, path, notes, default_reader="consensus" if split_of(path) == "test" else "reader")
        found.append(rows)
    notes.append("global labels (COPD, Lung tumor, Pneumonia, Tuberculosis, Other diseases) not used")
    box_table = boxes_frame(pd.concat(found, ignore_index=True) if found else None)
    return pd.concat(studies, ignore_index=True), pd.concat(reader_labels, ignore_index=True), box_table
