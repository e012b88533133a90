"""The two tables every dataset adapter returns (DESIGN.md), and their checks.

Study table: one row per image, ``image_id, path, patient_id, age_years, sex, view, split, width, height``
then one 0/1 column per finding. ``width``/``height`` are the original pixel size where the dataset says
(else NaN; ``prepare`` fills them from the decoded image). ``split`` is the dataset's own split where it has
one, else empty. Box table: one row per box and reader, in original pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hybridcxr.errors import DatasetError

STUDY_COLUMNS: tuple[str, ...] = (
    "image_id", "path", "patient_id", "age_years", "sex", "view", "split", "width", "height",
)
BOX_COLUMNS: tuple[str, ...] = ("image_id", "finding", "reader", "x_min", "y_min", "x_max", "y_max")
PREDICTION_BOX_COLUMNS: tuple[str, ...] = ("image_id", "finding", "score", "x_min", "y_min", "x_max", "y_max")
#: Positive image-level labels per reader, before a labelling rule turns them into the study's 0/1 columns.
READER_LABEL_COLUMNS: tuple[str, ...] = ("image_id", "reader", "finding")


@dataclass
class SourceTables:
    """What a dataset adapter returns: the study and box tables plus what a summary should say about them."""

    name: str
    findings: tuple[str, ...]
    studies: pd.DataFrame
    boxes: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_studies(self.studies, self.findings, source=self.name)
        check_boxes(self.boxes, source=self.name)


def empty_boxes() -> pd.DataFrame:
    """A Box table with no rows and the right dtypes."""
    return pd.DataFrame({
        "image_id": pd.Series(dtype=str), "finding": pd.Series(dtype=str), "reader": pd.Series(dtype=str),
        **{c: pd.Series(dtype=float) for c in ("x_min", "y_min", "x_max", "y_max")},
    })


def make_studies(rows: pd.DataFrame, findings: Sequence[str]) -> pd.DataFrame:
    """Return ``rows`` as a Study table: missing contract columns added empty, finding columns as int 0/1,
    columns in contract order (extra columns kept at the end)."""
    out = rows.copy()
    for col in STUDY_COLUMNS:
        if col not in out:
            out[col] = np.nan if col in ("age_years", "width", "height") else None
    for finding in findings:
        out[finding] = out[finding].fillna(0).astype(int) if finding in out else 0
    out["image_id"] = out["image_id"].astype(str)
    out["patient_id"] = out["patient_id"].where(out["patient_id"].notna(), None)
    out["age_years"] = pd.to_numeric(out["age_years"], errors="coerce").astype(float)
    for col in ("width", "height"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    out["split"] = out["split"].fillna("").astype(str)
    extra = [c for c in out.columns if c not in STUDY_COLUMNS and c not in findings]
    return out[[*STUDY_COLUMNS, *findings, *extra]].reset_index(drop=True)


def check_studies(table: pd.DataFrame, findings: Sequence[str], source: str = "study table") -> None:
    """Raise DatasetError unless ``table`` is a usable Study table."""
    missing = [c for c in (*STUDY_COLUMNS, *findings) if c not in table.columns]
    if missing:
        raise DatasetError(source, f"study table lacks columns {missing}")
    if table.empty:
        raise DatasetError(source, "study table is empty: no images found")
    dup = table["image_id"][table["image_id"].duplicated()]
    if len(dup):
        raise DatasetError(source, f"{dup.nunique()} image ids appear twice, e.g. {dup.iloc[0]!r}")
    bad = [f for f in findings if not table[f].isin([0, 1]).all()]
    if bad:
        raise DatasetError(source, f"finding columns {bad} hold values other than 0/1")
    sexes = set(table["sex"].dropna()) - {"M", "F"}
    if sexes:
        raise DatasetError(source, f"sex column holds {sorted(sexes)}; expected 'M', 'F' or empty")


def check_boxes(table: pd.DataFrame, source: str = "box table") -> None:
    """Raise DatasetError unless ``table`` is a usable Box table (possibly empty)."""
    missing = [c for c in BOX_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(source, f"box table lacks columns {missing}")
    coords = table[["x_min", "y_min", "x_max", "y_max"]]
    if coords.isna().any().any():
        raise DatasetError(source, f"{int(coords.isna().any(axis=1).sum())} boxes have missing coordinates")
