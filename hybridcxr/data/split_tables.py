"""Splits a user already has: ``prepare --split-tables train.csv,valid.csv,test.csv``.

Course-style ChestX-ray8 workflows ship their own split tables (``train-small.csv``, ``valid-small.csv``,
``test.csv``: an ``Image`` column, one column per finding, ``PatientId``). ``prepare`` honours them: the
images of the first table are the training split, of the second validation and of the third test (with two
tables, train and test: validation is then carved from the training table's patients, patient-grouped).
Images of the source that no table names are left out, and said so. Before anything is decoded the tables are
checked for patients in two of them (:mod:`hybridcxr.data.leakage`): such tables are refused with the
patients listed, since the test AUROC would then measure memory of those patients.

The image column is found by its usual names (:data:`IMAGE_COLUMNS`); an entry matches a source image by
its file stem (``00000001_000.png`` names image ``00000001_000``).

``prepare --split-from PREPARED`` gives a second prepared view of one dataset the split of the first
(:func:`manifest_splits`): VinDr-PCXR's lesion view (the detector's) and diagnosis view (the classifier's)
then hold each image in the same split, so no validation or test image of the classifier was a training image
of the detector whose features it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import pandas as pd

from hybridcxr.data.leakage import find_column, read_split_tables, shared_patients
from hybridcxr.data.splits import LeakageError
from hybridcxr.errors import DatasetError

#: The image column's usual names, in the order they are tried (case, spaces and underscores ignored).
IMAGE_COLUMNS = ("image_id", "Image Index", "Image", "filename", "file", "path")


def image_column(table: pd.DataFrame, where: str) -> str:
    """The column of ``table`` naming its images (see :data:`IMAGE_COLUMNS`); DatasetError naming ``where``."""
    found = find_column(table, IMAGE_COLUMNS)
    if found is None:
        raise DatasetError(where, f"no image column (looked for {', '.join(IMAGE_COLUMNS)}); it has "
                                  f"{list(table.columns)[:12]}")
    return found


def table_splits(paths: Sequence[str | Path], patient_column: str | None = None) -> dict[str, str]:
    """``{image id: split}`` from two (train, test) or three (train, val, test) split tables, refused with
    LeakageError when a patient sits in two of them and DatasetError when an image does."""
    if len(paths) not in (2, 3):
        raise DatasetError(paths[0] if paths else ".", f"--split-tables takes 2 (train,test) or 3 (train,val,test) "
                                                       f"tables, not {len(paths)}")
    tables = read_split_tables(paths)
    shared = shared_patients(tables, patient_column)
    if shared:
        raise LeakageError({p: tuple(Path(n).name for n in names) for p, names in shared.items()},
                           column="split table (a leak: test scores would measure memory of them)")
    names = ("train", "val", "test") if len(paths) == 3 else ("train", "test")
    splits: dict[str, str] = {}
    for (where, table), split in zip(tables.items(), names):
        column = image_column(table, where)
        for entry in table[column].astype(str).str.strip():
            image_id = PurePosixPath(entry.replace("\\", "/")).stem
            if splits.get(image_id, split) != split:
                raise DatasetError(where, f"image {image_id} is also in the {splits[image_id]} table")
            splits[image_id] = split
    if not splits:
        raise DatasetError(paths[0], "the split tables name no image")
    return splits


def manifest_splits(prepared: str | Path) -> dict[str, str]:
    """``{image id: split}`` of a prepared folder's ``manifest.csv``; DatasetError naming it when it is missing
    or holds no split."""
    from hybridcxr.layout import PreparedLayout

    manifest = PreparedLayout(Path(prepared)).manifest
    if not manifest.is_file():
        raise DatasetError(manifest, "no manifest.csv: --split-from takes a folder made by hybridcxr prepare")
    table = pd.read_csv(manifest, dtype={"image_id": str, "split": str}, usecols=["image_id", "split"])
    table = table.dropna()
    if table.empty:
        raise DatasetError(manifest, "names no image with a split")
    return dict(zip(table["image_id"].str.strip(), table["split"].str.strip()))


def apply_table_splits(studies: pd.DataFrame, splits: dict[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """The source's images that the tables name, with their split (validation left empty for two tables, to be
    carved from the training patients), and notes on what was left out."""
    named = studies["image_id"].astype(str).isin(splits)
    notes = []
    if not named.any():
        raise DatasetError("split tables", f"none of their {len(splits)} images is in the source (first: "
                                           f"{next(iter(splits))}); do the tables name this dataset's files?")
    if (~named).any():
        notes.append(f"{int((~named).sum())} source images are in no split table and were left out")
    missing = len(set(splits) - set(studies["image_id"].astype(str)))
    if missing:
        notes.append(f"{missing} images of the split tables are not in the source")
    chosen = studies[named].copy()
    split = chosen["image_id"].astype(str).map(splits)
    three = "val" in splits.values()
    chosen["split"] = split if three else split.where(split == "test", "")
    return chosen.reset_index(drop=True), notes
