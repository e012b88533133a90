"""Phantom chest radiographs: VinDr-CXR PhysioNet layout, readable 12-bit DICOMs, sane reader boxes,
determinism, and findings that are really in the pixels."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from hybridcxr.data import phantom
from hybridcxr.data.phantom import (
    ANNOTATION_COLUMNS,
    IMAGE_LABEL_COLUMNS,
    IMAGE_LABEL_COLUMNS_TEST,
    PHANTOM_FINDINGS,
    SYNTHETIC_NOTE,
    TEST_READER,
    TRAIN_READERS,
    PhantomSummary,
    make_phantom_dataset,
)
from hybridcxr.errors import InputError
from hybridcxr.findings import NO_FINDING, VINDR_CXR

N = 24
SEED = 1  # this seed's 24 phantoms include MONOCHROME1 images in both splits and several nodules
SIZE = (320, 288)
COORDS = ["x_min", "y_min", "x_max", "y_max"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PhantomSummary]:
    root = tmp_path_factory.mktemp("phantom") / "vindr"
    return root, make_phantom_dataset(root, n=N, seed=SEED, test_fraction=0.25, size=SIZE)


def _tables(root: Path, kind: str) -> pd.DataFrame:
    return pd.concat(
        [pd.read_csv(root / "annotations" / f"{kind}_{split}.csv").assign(split=split) for split in ("train", "test")],
        ignore_index=True,
    )


def _dicoms(root: Path) -> dict[str, tuple[str, pydicom.Dataset]]:
    return {p.stem: (p.parent.name, pydicom.dcmread(p)) for p in sorted(root.glob("*/*.dicom"))}


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Pixels as a reader shows them: bright = dense, whatever the photometric interpretation."""
    pixels = ds.pixel_array.astype(np.float64)
    return 4095 - pixels if ds.PhotometricInterpretation == "MONOCHROME1" else pixels


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_findings_are_vindr_findings() -> None:
    assert set(PHANTOM_FINDINGS) <= set(VINDR_CXR)
    assert {"Nodule/Mass", "Pleural effusion", "Cardiomegaly", "Consolidation"} <= set(PHANTOM_FINDINGS)
    assert len(IMAGE_LABEL_COLUMNS) == 28 and IMAGE_LABEL_COLUMNS[-1] == NO_FINDING
    assert set(IMAGE_LABEL_COLUMNS) ^ set(IMAGE_LABEL_COLUMNS_TEST) == {"Other diseases", "Other disease"}


def test_layout_and_columns(built: tuple[Path, PhantomSummary]) -> None:
    root, summary = built
    assert summary.root == root and summary.n_train + summary.n_test == N
    assert summary.n_test == round(N * 0.25)
    assert len(list((root / "train").glob("*.dicom"))) == summary.n_train
    assert len(list((root / "test").glob("*.dicom"))) == summary.n_test
    for split, label_columns in (("train", IMAGE_LABEL_COLUMNS), ("test", IMAGE_LABEL_COLUMNS_TEST)):
        ann = pd.read_csv(root / "annotations" / f"annotations_{split}.csv")
        assert tuple(ann.columns) == ANNOTATION_COLUMNS
        labels = pd.read_csv(root / "annotations" / f"image_labels_{split}.csv")
        assert list(labels.columns) == ["image_id", "rad_id", *label_columns]
        ids = {p.stem for p in (root / split).glob("*.dicom")}
        assert set(ann["image_id"]) == ids == set(labels["image_id"])
    readme = (root / "README.txt").read_text()
    assert SYNTHETIC_NOTE in readme and f"seed: {SEED}" in readme and f"images: {N}" in readme
    assert not list(root.rglob("*.tmp"))


def test_dicoms_read_back_as_12_bit_synthetic_dx(built: tuple[Path, PhantomSummary]) -> None:
    root, _ = built
    photometrics = Counter()
    for image_id, (_split, ds) in _dicoms(root).items():
        assert re.fullmatch(r"[0-9a-f]{32}", image_id)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "DX" and ds.BodyPartExamined == "CHEST" and ds.ViewPosition == "PA"
        assert SYNTHETIC_NOTE in ds.ImageComments and ds.SeriesDescription == SYNTHETIC_NOTE
        assert str(ds.PatientName).startswith("PHANTOM^") and ds.Manufacturer == "hybridcxr phantom"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == 0
        assert float(ds.WindowWidth) > 0 and 0 <= float(ds.WindowCenter) <= 4095
        pixels = ds.pixel_array
        assert pixels.dtype == np.uint16 and pixels.shape == SIZE == (ds.Rows, ds.Columns)
        assert int(pixels.max()) <= 4095 and pixels.std() > 100
        assert re.fullmatch(r"(\d{3}[YM])?", ds.PatientAge) and ds.PatientSex in ("M", "F", "")
        assert 0.3 < float(ds.PixelSpacing[0]) < 0.6
        photometrics[ds.PhotometricInterpretation] += 1
        assert len({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}) == 3
    assert set(photometrics) == {"MONOCHROME1", "MONOCHROME2"}
    assert photometrics["MONOCHROME2"] > photometrics["MONOCHROME1"]


def test_monochrome1_is_inverted_so_all_look_alike(built: tuple[Path, PhantomSummary]) -> None:
    """After inverting MONOCHROME1, the mediastinum is brighter than the lungs in every image."""
    root, _ = built
    for _, ds in _dicoms(root).values():
        img = _display(ds)
        h, w = img.shape
        mediastinum = img[int(0.25 * h):int(0.45 * h), int(0.47 * w):int(0.53 * w)].mean()
        lungs = np.r_[img[int(0.3 * h):int(0.5 * h), int(0.22 * w):int(0.3 * w)].ravel(),
                      img[int(0.3 * h):int(0.5 * h), int(0.7 * w):int(0.78 * w)].ravel()].mean()
        assert mediastinum > lungs + 300


def test_default_sizes_vary_and_are_portrait(tmp_path: Path) -> None:
    make_phantom_dataset(tmp_path / "v", n=3, seed=5, test_fraction=0)
    shapes = [pydicom.dcmread(p).pixel_array.shape for p in (tmp_path / "v" / "train").glob("*.dicom")]
    assert len(set(shapes)) == 3
    assert all(640 <= h <= 896 and 560 <= w <= 800 and w <= h for h, w in shapes)


def test_boxes_lie_inside_images(built: tuple[Path, PhantomSummary]) -> None:
    root, summary = built
    ann = _tables(root, "annotations")
    boxes = ann[ann["class_name"] != NO_FINDING]
    assert len(boxes) == summary.boxes > 0
    assert set(boxes["class_name"]) <= set(PHANTOM_FINDINGS)
    h, w = SIZE
    assert (boxes["x_min"] >= 0).all() and (boxes["y_min"] >= 0).all()
    assert (boxes["x_max"] <= w).all() and (boxes["y_max"] <= h).all()
    assert (boxes["x_max"] > boxes["x_min"]).all() and (boxes["y_max"] > boxes["y_min"]).all()


def test_no_finding_rows_have_empty_coordinates(built: tuple[Path, PhantomSummary]) -> None:
    root, _ = built
    ann = _tables(root, "annotations")
    empty = ann["class_name"] == NO_FINDING
    assert empty.any()
    assert ann.loc[empty, COORDS].isna().all().all()
    assert ann.loc[~empty, COORDS].notna().all().all()
    raw = (root / "annotations" / "annotations_train.csv").read_text()
    assert f",{NO_FINDING},,,,\n" in raw


def test_readers_per_split(built: tuple[Path, PhantomSummary]) -> None:
    root, _ = built
    for kind in ("annotations", "image_labels"):
        table = _tables(root, kind)
        readers = table.groupby("image_id").agg(split=("split", "first"), readers=("rad_id", lambda r: set(r)))
        for split, expected in (("train", set(TRAIN_READERS)), ("test", {TEST_READER})):
            assert (readers.loc[readers["split"] == split, "readers"] == expected).all()
    labels = _tables(root, "image_labels")
    assert not labels.duplicated(["image_id", "rad_id"]).any()


def test_train_readers_jitter_but_overlap(built: tuple[Path, PhantomSummary]) -> None:
    root, _ = built
    ann = pd.read_csv(root / "annotations" / "annotations_train.csv")
    ann = ann[ann["class_name"] != NO_FINDING]
    compared = identical = 0
    for _, group in ann.groupby(["image_id", "class_name"]):
        by_reader = {r: g[COORDS].to_numpy() for r, g in group.groupby("rad_id")}
        readers = sorted(by_reader)
        for i, a in enumerate(readers):
            for b in readers[i + 1:]:
                for box in by_reader[a]:
                    best = max(_iou(box, other) for other in by_reader[b])
                    if len(by_reader[a]) == len(by_reader[b]) == 1:
                        assert best > 0.4
                    compared += 1
                    identical += any(np.allclose(box, other) for other in by_reader[b])
    assert compared > 10 and identical == 0


def test_image_labels_follow_each_readers_boxes(built: tuple[Path, PhantomSummary]) -> None:
    root, _ = built
    ann = _tables(root, "annotations")
    labels = _tables(root, "image_labels").set_index(["image_id", "rad_id"])
    for (image_id, reader), group in ann.groupby(["image_id", "rad_id"]):
        row = labels.loc[(image_id, reader)]
        drawn = set(group["class_name"]) - {NO_FINDING}
        positive = {c for c in IMAGE_LABEL_COLUMNS_TEST + IMAGE_LABEL_COLUMNS if c in row and row[c] == 1}
        assert positive & set(VINDR_CXR) == drawn
        assert (row[NO_FINDING] == 1) == (not drawn)
        assert (row.get("Pneumonia") == 1) == ("Consolidation" in drawn)


def test_patients_with_two_images_stay_in_one_split(built: tuple[Path, PhantomSummary]) -> None:
    root, summary = built
    by_patient: dict[str, list[str]] = {}
    for split, ds in _dicoms(root).values():
        by_patient.setdefault(ds.PatientID, []).append(split)
    assert len(by_patient) == summary.n_patients < N
    pairs = [splits for splits in by_patient.values() if len(splits) == 2]
    assert pairs and all(len(set(s)) == 1 for s in pairs)
    assert max(len(s) for s in by_patient.values()) == 2


def test_same_seed_same_files_other_seed_other_ids(tmp_path: Path) -> None:
    """Byte-identical output for one seed, whether drawn in one process or two."""
    kwargs = dict(n=5, test_fraction=0.4, size=(256, 224))
    make_phantom_dataset(tmp_path / "a", seed=7, **kwargs)
    make_phantom_dataset(tmp_path / "b", seed=7, workers=2, **kwargs)
    make_phantom_dataset(tmp_path / "c", seed=8, **kwargs)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert not {p.stem for p in (tmp_path / "a").glob("*/*.dicom")} & {p.stem for p in (tmp_path / "c").glob("*/*.dicom")}


def test_nodules_are_brighter_than_surrounding_lung(built: tuple[Path, PhantomSummary]) -> None:
    root, summary = built
    assert summary.positives["Nodule/Mass"] >= 3
    ann = _tables(root, "annotations")
    nodules = ann[(ann["class_name"] == "Nodule/Mass") & ann["rad_id"].isin(["R1", TEST_READER])]
    dicoms = _dicoms(root)
    diffs = []
    for row in nodules.itertuples():
        img = _display(dicoms[row.image_id][1])
        x0, y0, x1, y1 = row.x_min, row.y_min, row.x_max, row.y_max
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
        d = np.hypot((xx - cx) / rx, (yy - cy) / ry)
        diffs.append(img[d < 0.5].mean() - img[(d > 1.3) & (d < 2.0)].mean())
    diffs = np.array(diffs)
    assert len(diffs) >= 3
    assert np.median(diffs) > 100 and (diffs > 0).mean() >= 0.75


def test_plan_prevalence_demographics_and_pairs() -> None:
    plans = phantom._plan(3000, 0, 0.2)
    findings = pd.DataFrame([{f: f in p.findings for f in PHANTOM_FINDINGS} for p in plans])
    assert 0.25 < (~findings.any(axis=1)).mean() < 0.35
    assert findings.mean().between(0.15, 0.35).all()
    age = np.array([p.age for p in plans])
    assert 18 <= age.min() and age.max() <= 90
    old, young = age >= 65, age < 45
    for f in ("Cardiomegaly", "Pleural effusion"):
        assert findings.loc[old, f].mean() > findings.loc[young, f].mean() + 0.1
    male = np.array([p.patient.sex == "M" for p in plans])
    female = np.array([p.patient.sex == "F" for p in plans])
    assert findings.loc[male, "Nodule/Mass"].mean() > findings.loc[female, "Nodule/Mass"].mean()
    per_patient = Counter(Counter(p.patient.patient_id for p in plans).values())
    assert 0.12 < per_patient[2] / (per_patient[1] + per_patient[2]) < 0.18


def test_rerun_replaces_and_refuses_foreign_folders(tmp_path: Path) -> None:
    root = tmp_path / "p"
    make_phantom_dataset(root, n=4, seed=2, size=(192, 160), test_fraction=0)
    summary = make_phantom_dataset(root, n=2, seed=3, size=(192, 160), test_fraction=0, progress=True)
    assert summary.n_train == 2 and len(list(root.glob("*/*.dicom"))) == 2
    assert pd.read_csv(root / "annotations" / "annotations_test.csv").empty
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        make_phantom_dataset(foreign, n=1)
    for bad in (dict(n=0), dict(n=2, test_fraction=1.0), dict(n=2, size=(64, 64))):
        with pytest.raises(ValueError):
            make_phantom_dataset(tmp_path / "bad", **bad)


def test_same_seed_same_phantoms_in_every_process():
    """Nothing may depend on Python's per-process string hashing (set order): three processes, three hash
    seeds, one plan of patients and findings (the old follow-up draw iterated a frozenset and differed)."""
    import os
    import subprocess
    import sys

    script = ("from hybridcxr.data.phantom import _plan\n"
              "print(repr([(p.image_id, sorted(p.findings)) for p in _plan(40, 3, 0.2)]))\n")
    plans = {subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": seed},
                            check=True, capture_output=True, text=True).stdout for seed in ("1", "2", "3")}
    assert len(plans) == 1
