"""Patients in more than one split: the check for split tables a user already has (``hybridcxr check-leakage``).

Why: a course-style ChestX-ray8 workflow ships its own ``train-small.csv``/``valid-small.csv``/``test.csv``;
when one patient's images sit in two of them, the test AUROC measures memory of that patient, not the model.
The patient column is found by its usual names (:data:`PATIENT_COLUMNS`, matched without regard to case,
spaces or underscores) or given; patient ids are compared as text, stripped.

>>> tables = {"train.csv": pd.DataFrame({"PatientId": [1, 2]}), "test.csv": pd.DataFrame({"Patient ID": ["2"]})}
>>> shared_patients(tables)
{'2': ['train.csv', 'test.csv']}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from hybridcxr.errors import DatasetError

#: The patient column's usual names, in the order they are tried.
PATIENT_COLUMNS = ("Patient ID", "PatientId", "PatientID", "patient_id", "patient")


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def patient_column(table: pd.DataFrame, where: str | Path, given: str | None = None) -> str:
    """The patient column of ``table``: ``given`` when set, else the first of :data:`PATIENT_COLUMNS` it has
    (case, spaces and underscores ignored); DatasetError naming ``where`` when there is none."""
    if given is not None:
        if given not in table.columns:
            raise DatasetError(where, f"has no column {given!r}; it has {list(table.columns)[:12]}")
        return given
    found = find_column(table, PATIENT_COLUMNS)
    if found is None:
        raise DatasetError(where, f"no patient column (looked for {', '.join(PATIENT_COLUMNS)}); name it with "
                                  f"--patient-column; it has {list(table.columns)[:12]}")
    return found


def find_column(table: pd.DataFrame, names: Sequence[str]) -> str | None:
    """The first column of ``table`` matching one of ``names`` (case, spaces and underscores ignored), or None."""
    by_key = {_key(c): c for c in table.columns}
    return next((by_key[_key(n)] for n in names if _key(n) in by_key), None)


def shared_patients(tables: Mapping[str, pd.DataFrame], given: str | None = None) -> dict[str, list[str]]:
    """``{patient id: [table names]}`` for every patient found in more than one table (tables in input order)."""
    seen: dict[str, list[str]] = {}
    for name, table in tables.items():
        column = patient_column(table, name, given)
        ids = table[column].dropna().astype(str).str.strip()
        for patient in pd.unique(ids[ids != ""]):  # a blank cell is no patient
            seen.setdefault(patient, []).append(name)
    return {p: names for p, names in seen.items() if len(names) > 1}


def read_split_tables(paths: Sequence[str | Path]) -> dict[str, pd.DataFrame]:
    """Each split table by its path (CSV; DatasetError naming the file when missing, empty or unreadable)."""
    from hybridcxr.data.sources._common import read_csv

    if len(paths) < 2:
        raise DatasetError(paths[0] if paths else ".", "give at least two split tables to compare")
    return {str(p): read_csv(p, what="split table", dtype=str, keep_default_na=False) for p in paths}
