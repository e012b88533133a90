"""prepare on phantom DICOMs: a YOLO dataset ultralytics accepts, resumable, tolerant of bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hybridcxr.data.phantom import make_phantom_dataset
from hybridcxr.data.prepare import PrepareOptions, prepare
from hybridcxr.data.sources import load_source
from hybridcxr.data.splits import check_leakage

N = 24


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(root, n=N, seed=3)
    # one corrupt file with an annotation row, as a broken download would leave it
    bad = root / "train" / "corrupt0000.dicom"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"this is not a dataset")
    table = root / "annotations" / "annotations_train.csv"
    rows = pd.read_csv(table)
    extra = pd.DataFrame([{"image_id": "corrupt0000", "rad_id": r, "class_name": "No finding"} for r in ("R1", "R2", "R3")])
    pd.concat([rows, extra]).to_csv(table, index=False)
    labels = root / "annotations" / "image_labels_train.csv"
    lab = pd.read_csv(labels)
    extra = pd.DataFrame([{**{c: 0 for c in lab.columns}, "image_id": "corrupt0000", "rad_id": r, "No finding": 1}
                          for r in ("R1", "R2", "R3")])
    pd.concat([lab, extra]).to_csv(labels, index=False)
    return root


@pytest.fixture(scope="module")
def prepared(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    tables = load_source("vindr-cxr", phantom)
    result = prepare(tables, out, PrepareOptions(size=256, workers=2, progress=False))
    return out, result


def test_prepare_writes_manifest_and_yolo_dataset(prepared):
    out, result = prepared
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == N  # the corrupt file is not in it
    for col in ("image_id", "path", "patient_id", "age_years", "sex", "view", "split", "width", "height",
                "Nodule/Mass", "Cardiomegaly"):
        assert col in manifest.columns
    assert set(manifest["split"]) <= {"train", "val", "test"} and "test" in set(manifest["split"])
    check_leakage(manifest)
    assert manifest["age_years"].notna().mean() > 0.8 and set(manifest["sex"].dropna()) <= {"M", "F"}
    for row in manifest.itertuples():
        assert (out / row.image).is_file()
        assert (out / "labels" / row.split / f"{row.image_id}.txt").is_file()
        assert max(row.prepared_width, row.prepared_height) <= 256
    yolo_boxes = sum(len((out / "labels").glob(f"*/{i}.txt").__next__().read_text().splitlines())
                     for i in manifest["image_id"])
    assert yolo_boxes == len(result.boxes) == result.box_stats.fused < result.box_stats.raw


def test_class_weights_list_the_findings_absent_from_train_on_one_line(prepared):
    out, result = prepared
    train = pd.read_csv(out / "manifest.csv").query("split == 'train'")
    absent = [f for f in result.findings if not (train[f] > 0).any()]
    lines = result.class_weights()
    assert absent and lines[0].startswith("class frequency in train")
    assert len(lines) == 1 + (len(result.findings) - len(absent)) + 1
    assert lines[-1].endswith(f"({len(absent)}): " + ", ".join(absent))
    assert not any(line.startswith(f"  {f}:") for f in absent for line in lines)


def test_boxes_lie_inside_images_and_labels_agree(prepared):
    out, result = prepared
    manifest = pd.read_csv(out / "manifest.csv").set_index("image_id")
    boxes = pd.read_csv(out / "boxes.csv")
    size = manifest.loc[boxes["image_id"]]
    assert (boxes["x_min"] >= 0).all() and (boxes["x_max"].to_numpy() <= size["width"].to_numpy()).all()
    assert (boxes["y_min"] >= 0).all() and (boxes["y_max"].to_numpy() <= size["height"].to_numpy()).all()
    for image_id, group in boxes.groupby("image_id"):
        for finding in group["finding"].unique():
            assert manifest.at[image_id, finding] == 1  # a boxed finding is a positive label


def test_corrupt_file_is_listed_not_fatal(prepared):
    out, result = prepared
    assert [s.image_id for s in result.skipped] == ["corrupt0000"]
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["image_id"].tolist() == ["corrupt0000"] and "corrupt0000.dicom" in skipped["path"].iloc[0]
    assert "corrupt0000" in str(result)


def test_ultralytics_checker_accepts_the_dataset(prepared):
    from hybridcxr.detect.ultralytics_env import import_ultralytics

    import_ultralytics()
    from ultralytics.data.utils import check_det_dataset

    out, result = prepared
    data = check_det_dataset(str(out / "data.yaml"))
    assert data["nc"] == 14 and data["names"][8] == "Nodule/Mass"
    assert Path(data["train"]).is_dir() and Path(data["val"]).is_dir()


def test_rerun_reuses_every_image(prepared, phantom):
    out, first = prepared
    stamps = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    again = prepare(load_source("vindr-cxr", phantom), out, PrepareOptions(size=256, workers=2, progress=False))
    assert again.decoded == 0 and again.reused == N
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == stamps
    pd.testing.assert_frame_equal(again.manifest.reset_index(drop=True), first.manifest.reset_index(drop=True))


def test_killed_prepare_resumes_without_redoing_finished_images(phantom, tmp_path):
    out = tmp_path / "prepared"
    cmd = [sys.executable, "-m", "hybridcxr.cli", "prepare", "vindr-cxr", "--root", str(phantom),
           "--out", str(out), "--size", "256", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    records = out / "records"
    def written() -> list[Path]:  # finished records; a kill can leave a temporary ".ID.xxxx.json" beside them
        return [p for p in records.glob("*.json") if not p.name.startswith(".")]

    while time.time() < deadline and len(written()) < 5:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.stem: p.stat().st_mtime_ns for p in written()}
    assert 5 <= len(finished) < N, "the run should have been killed midway"
    assert not (out / "manifest.csv").exists()

    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 3, result.stderr  # done, with the corrupt file skipped
    assert "corrupt0000" in result.stdout
    assert {p: records.joinpath(f"{p}.json").stat().st_mtime_ns for p in finished} == finished
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == N
    assert not [p for p in out.rglob(".*") if p.is_file()], "temporary files left behind"
    assert f"{len(finished)} reused" in result.stdout


def test_prepare_goes_past_hostile_images_and_lists_them(tmp_path):
    """A palette image without its table and a PNG bomb behind a .dicom name: skipped with reasons, not fatal."""
    from _hostile import write_hostile
    from typer.testing import CliRunner

    from hybridcxr.cli import app

    root = tmp_path / "phantom"
    make_phantom_dataset(root, n=8, seed=2, size=(192, 160), workers=1, progress=False)
    hostile = tmp_path / "hostile"
    expected = write_hostile(hostile)
    victims = sorted((root / "train").glob("*.dicom"))[:2]
    (victims[0]).write_bytes((hostile / "palette-no-lut.dcm").read_bytes())
    (victims[1]).write_bytes((hostile / "bomb.png").read_bytes())
    out = tmp_path / "prepared"
    result = CliRunner().invoke(app, ["prepare", "vindr-cxr", "--root", str(root), "--out", str(out), "--size", "128",
                                      "--workers", "0", "--no-progress"])
    assert result.exit_code == 3, result.output
    skipped = pd.read_csv(out / "skipped.csv", dtype=str).set_index("image_id")
    assert skipped.loc[victims[0].stem, "reason"].count(expected["palette-no-lut.dcm"]) == 1
    assert expected["bomb.png"] in skipped.loc[victims[1].stem, "reason"]
    manifest = pd.read_csv(out / "manifest.csv", dtype={"image_id": str})
    assert len(manifest) == 8 - 2 and not set(manifest["image_id"]) & {v.stem for v in victims}


def test_a_few_boxed_images_are_spread_over_the_splits(shared_data, tmp_path):
    """NIH: every image has text-mined labels, 11 of the sample's 477 have boxes. Stratified by the findings
    alone, validation had none (the classifier's gating rule could not be chosen); "has a box" is a stratum."""
    from hybridcxr.data.prepare import BOXED, _strata

    nih = shared_data / "nih"
    tables = load_source("nih", nih, labels=nih / "nih_labels.csv", boxes=nih / "nih_bbox_list.csv",
                         extra_boxes=[nih / "chestx_det10_boxes.json"])
    result = prepare(tables, tmp_path / "nih", PrepareOptions(size=64, workers=0, progress=False))
    boxed = set(result.boxes["image_id"].astype(str))
    per_split = result.manifest[result.manifest["image_id"].isin(boxed)]["split"].value_counts()
    assert per_split.get("val", 0) >= 1 and per_split.get("test", 0) >= 1, per_split
    assert BOXED not in result.manifest.columns
    check_leakage(result.manifest)
    # where the boxes are the positive findings (VinDr-CXR), the split is the findings' alone
    studies = pd.DataFrame({"image_id": ["a", "b", "c"], "Effusion": [1, 0, 1]})
    boxes = pd.DataFrame({"image_id": ["a", "c"]})
    assert _strata(studies, ("Effusion",), boxes) == ("Effusion",) and BOXED not in studies
    assert _strata(studies, ("Effusion",), boxes.iloc[:1]) == ("Effusion", BOXED)
