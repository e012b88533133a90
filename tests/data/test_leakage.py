"""check-leakage: split tables sharing a patient are refused with the patients listed; clean ones pass."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.data.leakage import patient_column, shared_patients
from hybridcxr.errors import DatasetError

runner = CliRunner()


def _tables(tmp_path, test_patients, column="Patient ID"):
    """Course-style split tables: train-small.csv, valid-small.csv, test.csv."""
    frames = {"train-small.csv": [1, 2, 3], "valid-small.csv": [4, 5], "test.csv": test_patients}
    paths = []
    for name, patients in frames.items():
        path = tmp_path / name
        pd.DataFrame({"Image": [f"{name}-{i}.png" for i in range(len(patients))], column: patients,
                      "Cardiomegaly": 0}).to_csv(path, index=False)
        paths.append(str(path))
    return paths


def test_a_patient_in_two_tables_is_listed_and_refused(tmp_path):
    result = runner.invoke(app, ["check-leakage", *_tables(tmp_path, [6, 2, 5])])
    assert result.exit_code == 1, result.output
    assert "2 patients are in more than one table" in result.output
    assert "2: " in result.output and "train-small.csv" in result.output and "valid-small.csv" in result.output


def test_tables_without_a_shared_patient_pass(tmp_path):
    result = runner.invoke(app, ["check-leakage", *_tables(tmp_path, [6, 7])])
    assert result.exit_code == 0, result.output
    assert "no patient is in more than one of the 3 tables" in result.output


@pytest.mark.parametrize("column", ["Patient ID", "PatientId", "patient_id", "PATIENT_ID"])
def test_the_patient_column_is_found_by_its_usual_names(tmp_path, column):
    paths = _tables(tmp_path, [3], column=column)
    assert runner.invoke(app, ["check-leakage", *paths]).exit_code == 1


def test_a_named_column_and_a_missing_one(tmp_path):
    paths = _tables(tmp_path, [3], column="subject")
    missing = runner.invoke(app, ["check-leakage", *paths])
    assert missing.exit_code == 1 and "no patient column" in missing.output and "train-small.csv" in missing.output
    named = runner.invoke(app, ["check-leakage", *paths, "--patient-column", "subject"])
    assert named.exit_code == 1 and "1 patients are in more than one table" in named.output
    with pytest.raises(DatasetError, match="has no column 'nope'"):
        patient_column(pd.DataFrame({"a": [1]}), "t.csv", "nope")


def test_ids_compare_as_text_and_blank_cells_are_no_patient():
    tables = {"a.csv": pd.DataFrame({"PatientId": ["007 ", "", "8"]}),
              "b.csv": pd.DataFrame({"PatientId": ["007", "", "9"]})}
    assert shared_patients(tables) == {"007": ["a.csv", "b.csv"]}


def test_an_empty_or_single_table_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    other = _tables(tmp_path, [6])[0]
    result = runner.invoke(app, ["check-leakage", str(empty), other])
    assert result.exit_code == 1 and "empty.csv" in result.output and "empty" in result.output
    single = runner.invoke(app, ["check-leakage", other])
    assert single.exit_code == 1 and "at least two split tables" in single.output
