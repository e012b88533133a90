"""The batch pipeline's own pieces: which files a batch takes, the per-image JSON record, the demographics table.

Detecting and classifying whole batches is tested through the CLI (tests/detect/test_predict.py,
tests/classify/test_train.py); these need no model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybridcxr.detect.predict import PREDICTION_COLUMNS, Detection
from hybridcxr.errors import InputError, RadiographWarning
from hybridcxr.io import Radiograph, RadiographMeta
from hybridcxr.pipeline import collect_inputs, detection_record, read_demographics, unique_ids


# -- collect_inputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "taken"), [
    ("a.dcm", True),
    ("b.DCM", True),  # suffixes in any case
    ("c.dicom", True),
    ("d.dic", True),
    ("e.png", True),
    ("f.jpg", True),
    ("g.JPEG", True),
    ("IM0001", True),  # DICOMs often have no extension
    ("1.2.840.113619.2.55.3.604688", True),  # nor do PACS exports named by SOP Instance UID
    ("notes.txt", False),
    ("labels.csv", False),
    ("scan.tar.gz", False),  # only the last suffix counts
    ("._e.png", False),  # hidden (macOS resource forks)
    (".DS_Store", False),  # hidden, though it has no suffix
])
def test_a_folder_gives_radiograph_files_by_their_suffix(tmp_path, name, taken):
    (tmp_path / name).write_bytes(b"x")
    assert collect_inputs([tmp_path]) == ([tmp_path / name] if taken else [])


def test_folders_are_searched_recursively_sorted_and_duplicates_dropped(tmp_path):
    for name in ("b/2.png", "b/1.dcm", "a/deep/3.jpg", "z.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    report = tmp_path / "report.txt"
    report.write_text("not a radiograph")
    found = collect_inputs([tmp_path / "z.png", tmp_path, report, tmp_path / "b" / "1.dcm"])
    assert found == [tmp_path / "z.png", tmp_path / "a" / "deep" / "3.jpg", tmp_path / "b" / "1.dcm",
                     tmp_path / "b" / "2.png", report]  # a file named on its own is taken whatever its suffix


def test_a_missing_input_is_an_error_not_zero_images(tmp_path):
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(InputError, match="no such file or folder") as err:
        collect_inputs([tmp_path / "x.png", tmp_path / "typo"])
    assert err.value.path == str(tmp_path / "typo")
    assert collect_inputs([]) == []


# -- detection_record -------------------------------------------------------------------------------------------
CARD = {"kind": "hybridcxr detector", "findings": [f"finding {i}" for i in range(14)], "imgsz": 128,
        "versions": {"hybridcxr": "1.0", "torch": "2.0"}, "model_yaml": {"nc": 14}, "weights_sha256": "ab" * 32,
        "data_summary": {"data": "/home/someone/prepared"}}


def _detection(rows: list[list]) -> Detection:
    meta = RadiographMeta(path="/in/scan 1.dcm", image_id="scan 1", age_years=81.0, sex="F", view="PA",
                          modality="DX", study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5",
                          extra={"InstitutionName": "General Hospital"})
    boxes = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    return Detection(Radiograph(np.zeros((30, 50), np.float32), meta), boxes)


def test_detection_record_holds_what_was_read_and_found():
    detection = _detection([["scan 1", "Cardiomegaly", np.float32(0.123456789), 1.234, 2.345, 40.0, 29.999],
                            ["scan 1", "Nodule/Mass", 0.5, 0.0, 0.0, 10.0, 10.0]])
    record = detection_record(detection, CARD)
    assert record == {
        "image_id": "scan 1", "source": "/in/scan 1.dcm", "width": 50, "height": 30, "age_years": 81.0, "sex": "F",
        "view": "PA", "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5",
        "detections": [{"finding": "Cardiomegaly", "score": 0.12346, "box": [1.23, 2.35, 40.0, 30.0]},
                       {"finding": "Nodule/Mass", "score": 0.5, "box": [0.0, 0.0, 10.0, 10.0]}],
        "model": {"kind": "hybridcxr detector", "findings": 14, "imgsz": 128,
                  "versions": {"hybridcxr": "1.0", "torch": "2.0"}},
    }
    text = json.dumps(record)  # plain Python numbers, so it serialises as it is
    assert "General Hospital" not in text and "/home/someone" not in text and "model_yaml" not in text


def test_detection_record_without_boxes_or_optional_card_facts():
    record = detection_record(_detection([]), {"findings": ["A", "B"], "imgsz": 64})
    assert record["detections"] == []
    assert record["model"] == {"kind": None, "findings": 2, "imgsz": 64, "versions": {}}


# -- read_demographics ------------------------------------------------------------------------------------------
def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "demographics.csv"
    path.write_text(text)
    return path


def test_demographics_table_is_read_by_image_id(tmp_path):
    path = _csv(tmp_path, "image_id,age,sex,site\n00002578_000,081Y,F,x\n0123,62,male,y\nanon,,,z\nkid,003M,f,w\n")
    assert read_demographics(path) == {"00002578_000": (81.0, "F"), "0123": (62.0, "M"), "anon": (None, None),
                                       "kid": (0.25, "F")}


@pytest.mark.parametrize(("header", "row", "expected"), [
    ("image_id,age_years,age,sex", "a,40,50,M", (40.0, "M")),  # age_years is preferred over age
    ("image_id,PatientAge,PatientSex", "a,045Y,F", (45.0, "F")),  # DICOM keywords as column names
    ("image_id,sex", "a,F", (None, "F")),
    ("image_id,age", "a,70", (70.0, None)),
    ("image_id,age,sex", "a,50+,O", (50.0, None)),  # sex other than M/F is unknown
])
def test_demographics_columns(tmp_path, header, row, expected):
    assert read_demographics(_csv(tmp_path, f"{header}\n{row}\n")) == {"a": expected}


def test_a_bad_age_in_the_table_warns_naming_the_table_and_is_unknown(tmp_path):
    path = _csv(tmp_path, "image_id,age,sex\na,old,M\nb,999Y,F\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = read_demographics(path)
    assert table == {"a": (None, "M"), "b": (None, "F")}
    messages = [str(w.message) for w in caught if issubclass(w.category, RadiographWarning)]
    assert len(messages) == 2 and all(str(path) in m for m in messages)
    assert "'old'" in messages[0] and "'999Y'" in messages[1]


@pytest.mark.parametrize(("content", "problem"), [
    (None, "unreadable demographics table"),  # no such file
    (b"", "unreadable demographics table"),  # empty: no columns at all
    (b"image_id,age\n\xff\xfe\x81,1\n", "unreadable demographics table"),  # not UTF-8
    (b'image_id,age\n"unterminated,1\n', "unreadable demographics table"),  # broken CSV quoting
    (b"id,age,sex\na,62,M\n", "needs image_id and age and/or sex columns"),
    (b"image_id,weight\na,70\n", "needs image_id and age and/or sex columns"),
])
def test_bad_demographics_tables_raise_input_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "demographics.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as err:
        read_demographics(path)
    assert err.value.path == str(path) and str(err.value).startswith(f"{path}: ")


def test_a_folder_given_as_demographics_table_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="unreadable demographics table") as err:
        read_demographics(tmp_path)
    assert err.value.path == str(tmp_path)


# -- unique_ids -------------------------------------------------------------------------------------------------
def test_ids_are_file_names_unless_they_repeat(tmp_path):
    paths = [tmp_path / "study1" / "IM0001.dcm", tmp_path / "study2" / "IM0001.dcm", tmp_path / "study2" / "IM0002.dcm",
             tmp_path / "x" / "scan.dcm", tmp_path / "x" / "scan.png"]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    ids = unique_ids(paths)
    assert ids == {paths[0]: "study1/IM0001", paths[1]: "study2/IM0001", paths[2]: "IM0002",
                   paths[3]: "x/scan.dcm", paths[4]: "x/scan.png"}
    assert len(set(ids.values())) == len(paths)



# -- batches with hostile and same-named files ------------------------------------------------------------------
def _hostile_batch(phantom: Path, folder: Path) -> tuple[dict[str, str], list[Path]]:
    """Hostile files plus good phantom DICOMs, two of them under one name in two study folders."""
    import shutil

    from _hostile import write_hostile

    expected = write_hostile(folder / "bad")
    good = sorted((phantom / "test").glob("*.dicom"))[:2]
    copies = []
    for study, source in zip(("study1", "study2"), good):
        (folder / study).mkdir()
        copies.append(Path(shutil.copy(source, folder / study / "IM0001.dcm")))
    return expected, copies


@pytest.mark.parametrize("command", ["detect", "classify"])
def test_a_batch_goes_past_hostile_files_and_keeps_same_named_files_apart(
        command, tiny_detector, tiny_classifier, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from hybridcxr.cli import app

    phantom, folder, _ = tiny_detector
    expected, copies = _hostile_batch(phantom, tmp_path / "in")
    model = ["--weights", str(folder / "run")] if command == "detect" else ["--model", str(tiny_classifier[1])]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [command, str(tmp_path / "in"), *model, "--out", str(out), "--no-progress"])
    assert result.exit_code == 3, result.output
    skipped = pd.read_csv(out / "skipped.csv")
    reasons = {Path(p).name: r for p, r in zip(skipped["path"], skipped["reason"])}
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words in reasons[name] and name in result.output
    table = pd.read_csv(out / ("submission.csv" if command == "detect" else "predictions.csv"), dtype=str)
    assert {"study1/IM0001", "study2/IM0001"} <= set(table["image_id"])
    assert "path" in pd.read_csv(out / ("detections.csv" if command == "detect" else "predictions.csv")).columns
    assert sorted(p.relative_to(out / "json").as_posix() for p in (out / "json").rglob("*.json")) == [
        "study1/IM0001.json", "study2/IM0001.json"]
    if command == "classify":
        assert sorted(table["path"]) == sorted(str(p) for p in copies)
    assert not [p for p in out.rglob(".*")], "a temporary file was left behind"
