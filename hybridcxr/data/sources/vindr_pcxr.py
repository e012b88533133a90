"""VinDr-PCXR: 9,125 paediatric chest radiographs (DICOM, children under 10) from a Vietnamese paediatric
hospital, with image-level diagnoses and boxes of local lesions.

Three views, because the dataset has two vocabularies that do not overlap, and adult models to test:

* ``findings="diagnoses"`` (default, :data:`hybridcxr.findings.VINDR_PCXR`): the image-level diagnoses of
  ``image_labels_*.csv`` -- Bronchitis, Brocho-pneumonia, Bronchiolitis, Situs inversus, Pneumonia,
  Pleuro-pneumonia, Diagphramatic hernia, Tuberculosis, Congenital emphysema, CPAM, Hyaline membrane disease,
  Mediastinal tumor, Lung tumor, Other disease (spelt as the dataset spells them). Diagnoses have no boxes,
  so the Box table is empty (a note counts the lesion boxes left out).
* ``findings="lesions"`` (:data:`hybridcxr.findings.VINDR_PCXR_LESIONS`): the 36 local lesions of
  ``annotations_*.csv`` under their own names ("Boot-shaped heart", "Bronchial thickening", "Other
  nodule/mass", ...), every box kept: the paediatric detector's vocabulary. The image labels are "the lesion
  was boxed" and ``no_finding`` is "no lesion was boxed".
* ``findings="lesions-adult"`` (:data:`hybridcxr.findings.VINDR_CXR`): the same lesions mapped onto
  VinDr-CXR's 14 boxed findings where there is a counterpart (see :data:`LESION_TO_VINDR`; e.g. "Other
  nodule/mass" -> "Nodule/Mass", "Interstitial lung disease - ILD" -> "ILD"), so a detector trained on adult
  VinDr-CXR can be tested against children. Labels as for "lesions"; the 21 lesions without a counterpart
  are noted and left out (an image boxed only with those counts as "No finding").

Layout (``physionet.org/content/vindr-pcxr/1.0.0``; the tables may also sit in ``annotations/``)::

    image_labels_train.csv   image_id, rad_ID, 15 diagnosis columns (the 14 above + "No finding")
    image_labels_test.csv
    annotations_train.csv    image_id, rad_id, class_name, x_min, y_min, x_max, y_max (36 lesion labels)
    annotations_test.csv
    train/<image_id>.dicom   test/<image_id>.dicom

Each image was read by one radiologist. Age, sex and view come from the DICOM headers; the headers carry no
PatientID, so images are grouped by image (a note says so).

Source: Pham H.H., Nguyen N.H., Tran T.T., Nguyen T.N.M., Nguyen H.Q., "PediCXR: An open, large-scale chest
radiograph dataset for interpretation of common thoracic diseases in children", Scientific Data 10, 240
(2023); PhysioNet https://doi.org/10.13026/k8qc-na36. See datasets/vindr-pcxr.md.
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
from hybridcxr.findings import NO_FINDING, VINDR_CXR, VINDR_PCXR, VINDR_PCXR_LESIONS, VINDR_PCXR_VIEWS, canonical

NAME = "vindr-pcxr"

#: The 36 local lesion labels of VinDr-PCXR's annotation tables, as spelt there (``findings="lesions"``).
LESIONS: tuple[str, ...] = VINDR_PCXR_LESIONS
#: Lesions with a VinDr-CXR counterpart (``findings="lesions-adult"``); the rest have none and are left out.
LESION_TO_VINDR: dict[str, str] = {
    **{name: name for name in VINDR_CXR if name in LESIONS},
    "Interstitial lung disease - ILD": "ILD",
    "Other nodule/mass": "Nodule/Mass",
    "Other opacity": "Lung Opacity",
    "Diffuse aveolar opacity": "Lung Opacity",
}
_KNOWN_LABEL_COLUMNS = frozenset((*VINDR_PCXR, NO_FINDING))
_KNOWN_BOX_LABELS = frozenset((*LESIONS, *VINDR_PCXR, NO_FINDING))
_BOX_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")


def load(
    root: PathLike,
    *,
    labels: Paths | None = None,
    boxes: Paths | None = None,
    label_rule: LabelRule = "any",
    findings: str = "diagnoses",
    sizes: PathLike | None = None,
    read_headers: bool = True,
    workers: int = 8,
    progress: Progress | None = None,
    missing: str = "keep",
) -> SourceTables:
    """Read VinDr-PCXR under ``root`` into Study and Box tables.

    Args:
        root: dataset folder (PhysioNet layout).
        labels: ``image_labels_*.csv`` table(s) overriding the layout's.
        boxes: ``annotations_*.csv`` table(s) overriding the layout's.
        label_rule: "any" or "majority" of an image's readers (VinDr-PCXR has one reader per image).
        findings: "diagnoses" (image-level, no boxes), "lesions" (the 36 boxed lesions) or "lesions-adult"
            (the boxed lesions as VinDr-CXR findings); see the module doc.
        sizes: optional ``image_id, width, height`` table giving sizes without reading images.
        read_headers: read age, sex, view and size from each DICOM header (no pixels).
        workers: threads reading headers.
        progress: ``progress(done, total)`` callback while headers are read.
        missing: "keep" images not on disk (``path`` None) or "drop" them.
    """
    if findings not in VINDR_PCXR_VIEWS:
        raise ValueError(f"findings must be one of {', '.join(VINDR_PCXR_VIEWS)}, not {findings!r}")
    vocabulary = VINDR_PCXR_VIEWS[findings]
    base = check_root(root, NAME)
    notes: list[str] = []
    label_paths, box_paths = _tables(base, as_paths(labels), as_paths(boxes))

    studies, reader_labels = [], []
    for path in label_paths:
        table = read_csv(path, ["image_id"], what="VinDr-PCXR image label table")
        split = split_of(path)
        ids = table["image_id"].astype(str).str.strip().drop_duplicates()
        studies.append(pd.DataFrame({"image_id": ids.values, "split": split}))
        reader_labels.append(wide_reader_labels(table, path, used=(*VINDR_PCXR, NO_FINDING),
                                                known=_KNOWN_LABEL_COLUMNS, default_reader="reader"))
    study_table = pd.concat(studies, ignore_index=True)
    dup = study_table["image_id"].duplicated()
    if dup.any():
        notes.append(f"{int(dup.sum())} images listed in more than one table: first split kept")
        study_table = study_table[~dup].reset_index(drop=True)
    mapping = LESION_TO_VINDR if findings == "lesions-adult" else {name: name for name in LESIONS}
    lesion_boxes, lesion_labels = _lesions(box_paths, notes, mapping)

    if findings == "diagnoses":
        per_reader = pd.concat(reader_labels, ignore_index=True)
        box_table = boxes_frame(None)
        if len(lesion_boxes):
            notes.append(f"{len(lesion_boxes)} lesion boxes not returned: lesions are not diagnoses "
                         "(findings='lesions' returns them)")
    else:
        per_reader = pd.concat([*reader_labels, lesion_labels], ignore_index=True)
        per_reader = per_reader[per_reader["finding"].isin(("", NO_FINDING, *vocabulary))]
        box_table = lesion_boxes

    ids = study_table["image_id"].tolist()
    readers = per_reader.groupby("image_id")["reader"].nunique()
    marked = labels_from_readers(per_reader, ids, (*vocabulary, NO_FINDING), rule=label_rule,
                                 readers_per_image=readers)
    if findings != "diagnoses":  # "No finding" of a lesion view: no lesion of the vocabulary was boxed
        marked[NO_FINDING] = (marked[list(vocabulary)].sum(axis=1) == 0).astype(int)
    study_table = study_table.join(marked.rename(columns={NO_FINDING: "no_finding"}), on="image_id")
    study_table = attach_images(study_table, base, notes, read_headers=read_headers, workers=workers,
                                progress=progress, sizes=sizes)
    return finish(NAME, vocabulary, study_table, box_table, notes, missing=missing, root=base)


def _tables(root: Path, labels: list[Path], boxes: list[Path]) -> tuple[list[Path], list[Path]]:
    """The label and box tables to read: the given ones, else those of the layout (at the root or in
    ``annotations/``)."""
    folders = [root, root / "annotations"]

    def default(stem: str, split: str) -> Path | None:
        for folder in folders:
            if (folder / f"{stem}_{split}.csv").is_file():
                return folder / f"{stem}_{split}.csv"
        return None

    if labels:
        label_paths = [resolve_given(root, p) for p in labels]
    else:
        label_paths = [p for p in (default("image_labels", s) for s in ("train", "test")) if p is not None]
        if not label_paths:
            raise DatasetError(root / "image_labels_train.csv",
                               "VinDr-PCXR image label table not found (nor in annotations/); pass labels=")
    if boxes:
        box_paths = [resolve_given(root, p) for p in boxes]
    else:
        box_paths = []
        for path in label_paths:
            split = split_of(path) or "train"
            found = default("annotations", split)
            if found is None and not labels:
                raise DatasetError(path.parent / f"annotations_{split}.csv", "VinDr-PCXR annotation table not found")
            if found is not None:
                box_paths.append(found)
    return label_paths, list(dict.fromkeys(box_paths))


def _lesions(paths: list[Path], notes: list[str], mapping: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lesion boxes renamed by ``mapping`` (lesion -> finding; a lesion not in it is left out with a note),
    and the per-reader lesion labels they imply."""
    boxes, labels = [], []
    for path in paths:
        table = read_csv(path, list(_BOX_COLUMNS), what="VinDr-PCXR annotation table")
        names = table["class_name"].astype(str).map(canonical)
        warn_unknown(path, count_unknown(names, _KNOWN_BOX_LABELS), _KNOWN_BOX_LABELS)
        mapped = names.map(mapping)
        unmapped = names.isin(LESIONS) & mapped.isna()
        if unmapped.any():
            notes.append(f"{path.name}: {int(unmapped.sum())} boxes of lesions without a VinDr-CXR counterpart "
                         f"not used ({sorted(names[unmapped].unique())[:6]}...)")
        reader = reader_column(table)
        readers = table[reader].astype(str).str.strip() if reader else pd.Series("reader", index=table.index)
        coords = table[["x_min", "y_min", "x_max", "y_max"]].apply(pd.to_numeric, errors="coerce")
        keep = mapped.notna() & coords.notna().all(axis=1)
        ids = table["image_id"].astype(str).str.strip()
        boxes.append(pd.concat([pd.DataFrame({"image_id": ids, "finding": mapped, "reader": readers}), coords],
                               axis=1)[keep])
        labels.append(pd.DataFrame({"image_id": ids, "reader": readers, "finding": mapped.fillna("")}))
    if not boxes:
        return boxes_frame(None), pd.DataFrame(columns=["image_id", "reader", "finding"])
    return boxes_frame(pd.concat(boxes, ignore_index=True)), pd.concat(labels, ignore_index=True)
