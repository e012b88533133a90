"""Phantoms in other datasets' own layouts: the VinDr-CXR phantoms (:mod:`hybridcxr.data.phantom`) converted
into the folder layout each source adapter (:mod:`hybridcxr.data.sources`) reads, so every recipe runs on
synthetic data without a download.

Each layout is made the same way: :func:`~hybridcxr.data.phantom.make_phantom_dataset` draws the images once
(PhysioNet VinDr-CXR layout, in a staging folder beside ``out``), and its truth (the true findings and boxes,
before readers jitter or miss them) and reader tables are rewritten into the target layout:

* ``vindr-cxr``: the phantom set itself (exactly :func:`~hybridcxr.data.phantom.make_phantom_dataset`'s files).
* ``vindr-cxr-kaggle``: the VinBigData competition's ``train.csv`` (``image_id, class_name, class_id, rad_id,
  x_min, y_min, x_max, y_max``; "No finding" is class 14 without a box) and ``train/<image_id>.dicom``; every
  image is a training image read by three readers (Kaggle's ``test/`` has no labels, so none is written).
* ``vindr-pcxr``: ``image_labels_{train,test}.csv`` (``image_id, rad_ID``, the 14 diagnoses and "No finding";
  one reader per image), ``annotations_{train,test}.csv`` (the phantom's five findings' boxes as VinDr-PCXR
  lesions: ``Other nodule/mass``, the other four spelt alike) and the
  DICOMs, whose ``PatientAge`` is rewritten to a child's age in months (``NNNM``: 6 to 119 months, in the
  order of the adult ages, so the phantoms' age-finding correlation survives). Diagnoses: ``Pneumonia`` for a
  consolidation, ``Lung tumor`` for a large mass, ``Other disease`` for the other findings, else "No finding".
* ``nih``: ``images_001/images/<patient>_<follow-up>.png`` (8-bit, 1024 x 1024 as NIH's), ``Data_Entry_2017.csv``
  (true findings: Nodule or Mass by size, Effusion, Cardiomegaly, Consolidation, Pneumothorax; the drawn size
  in ``OriginalImage[Width,Height]``), ``BBox_List_2017.csv`` (the true boxes of the test images, in the
  1024 frame; NIH boxes no consolidation) and the official ``train_val_list.txt`` / ``test_list.txt``.
* ``pneumonia``: ``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` (8-bit greyscale JPEG), named as in the Kaggle
  copy (``person<N>_bacteria_<k>.jpeg`` / ``person<N>_virus_<k>.jpeg``, ``IM-<NNNN>-<kkkk>.jpeg``) so a
  patient's images group; PNEUMONIA is a true consolidation (the phantoms' pneumonia-like finding), NORMAL
  everything else. ``val`` holds about a tenth of the training patients (Kaggle's is tiny too). As in the
  Kaggle copy, one child's normal and pneumonia films carry two different patient names.

>>> make_layout_dataset("/tmp/pneumonia", "pneumonia", n=12, size=(192, 160)).prepare_command  # doctest: +SKIP
'hybridcxr prepare pneumonia --root /tmp/pneumonia --out <PREPARED>'
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hybridcxr.data.phantom import (
    PHANTOM_FINDINGS,
    SYNTHETIC_NOTE,
    TEST_READER,
    PhantomImage,
    PhantomSummary,
    make_phantom_dataset,
)
from hybridcxr.errors import InputError
from hybridcxr.files import atomic_path, write_csv, write_text
from hybridcxr.findings import NO_FINDING, VINDR_CXR, VINDR_PCXR

#: Layout name -> the ``hybridcxr prepare`` source that reads it.
LAYOUTS: dict[str, str] = {
    "vindr-cxr": "vindr-cxr",
    "vindr-cxr-kaggle": "vindr-cxr",
    "vindr-pcxr": "vindr-pcxr",
    "nih": "nih",
    "pneumonia": "pneumonia",
}
#: The phantom findings that make a Guangzhou-style image PNEUMONIA.
PNEUMONIA_LIKE: frozenset[str] = frozenset({"Consolidation", "Infiltration", "Lung Opacity"})
NIH_FRAME = 1024
#: Phantom findings in NIH ChestX-ray14's names (Nodule/Mass is split by size, see :func:`_nih_findings`).
_TO_NIH = {"Pleural effusion": "Effusion", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
           "Pneumothorax": "Pneumothorax"}
_NIH_BOXED = {"Effusion", "Cardiomegaly", "Pneumothorax", "Mass", "Nodule"}  # BBox_List_2017's labels we draw
_TO_PCXR_LESION = {"Nodule/Mass": "Other nodule/mass"}
_KAGGLE_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")
_MASS_WIDTH = 0.1  # a nodule box at least this share of the image width is a mass (the phantom's "Lung tumor")
#: Everything a phantom layout writes at its top level (cleared when a phantom folder is rewritten).
_ENTRIES = ("README.txt", "train", "val", "test", "annotations", "lungs", "images_001", "train.csv",
            "image_labels_train.csv", "image_labels_test.csv", "annotations_train.csv", "annotations_test.csv",
            "Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt")


@dataclass(frozen=True)
class LayoutSummary:
    """What :func:`make_layout_dataset` wrote: the layout, the source that reads it, images per split."""

    root: Path
    layout: str
    source: str
    splits: dict[str, int]
    n_patients: int
    positives: dict[str, int] = field(default_factory=dict)  # images per finding, in the layout's own names

    @property
    def n_images(self) -> int:
        return sum(self.splits.values())

    @property
    def prepare_command(self) -> str:
        """The command that prepares this folder."""
        return f"hybridcxr prepare {self.source} --root {self.root} --out <PREPARED>"


def make_layout_dataset(
    out: str | Path, layout: str = "vindr-cxr", n: int = 200, *, seed: int = 0, size: tuple[int, int] | None = None,
    progress: bool = False, workers: int = 1,
) -> LayoutSummary:
    """Write ``n`` phantoms under ``out`` in ``layout`` (one of :data:`LAYOUTS`); returns what was written.

    ``vindr-cxr`` is exactly ``make_phantom_dataset(out, n, seed=seed, size=size, ...)``. The others are drawn
    in a staging folder beside ``out`` (removed afterwards) and converted; ``out`` must be empty, absent or an
    earlier phantom folder (whose phantom files are replaced).
    """
    if layout not in LAYOUTS:
        raise InputError(layout, f"unknown phantom layout; choose one of {', '.join(LAYOUTS)}")
    root = Path(out)
    if layout == "vindr-cxr":
        summary = make_phantom_dataset(root, n, seed=seed, size=size, progress=progress, workers=workers)
        splits = {"train": summary.n_train, "test": summary.n_test}
        return LayoutSummary(root, layout, LAYOUTS[layout], splits, summary.n_patients, dict(summary.positives))
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")  # before an earlier phantom set is cleared
    _clear(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".phantom-staging-", dir=root.parent) as staging:
        summary = make_phantom_dataset(Path(staging), n, seed=seed, size=size, progress=progress, workers=workers,
                                       test_fraction=0.0 if layout == "vindr-cxr-kaggle" else 0.2)
        root.mkdir(parents=True, exist_ok=True)
        splits, positives = _WRITERS[layout](summary, root)
    write_text(root / "README.txt", _readme(layout, n, seed, splits, size))
    return LayoutSummary(root, layout, LAYOUTS[layout], splits, summary.n_patients, positives)


def _clear(root: Path) -> None:
    """Refuse a non-empty folder that is not a phantom set; remove an earlier phantom layout's files."""
    if root.exists() and not root.is_dir():
        raise InputError(root, "exists and is not a folder")
    if not root.is_dir() or not any(root.iterdir()):
        return
    readme = root / "README.txt"
    if not (readme.is_file() and SYNTHETIC_NOTE in readme.read_text(errors="replace")):
        raise InputError(root, "folder is not empty and holds no phantom README.txt; pick an empty folder")
    for name in _ENTRIES:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _readme(layout: str, n: int, seed: int, splits: dict[str, int], size: tuple[int, int] | None) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in splits.items())
    drawn = f"{size[0]} x {size[1]} (rows x columns)" if size else "varying, 640-896 rows x 560-800 columns"
    return (f"{SYNTHETIC_NOTE}\n\nSynthetic chest radiographs drawn by hybridcxr.data.phantom and laid out as the "
            f"{layout} dataset by hybridcxr.data.phantom_layouts. No patient data.\n\nseed: {seed}\nimages: {n} "
            f"({counts})\ndrawn size: {drawn}\n"
            "Re-create with: python -c \"from hybridcxr.data.phantom_layouts import make_layout_dataset as m; "
            f"m('OUT', '{layout}', n={n}, seed={seed}, size={size})\"\n"
            f"Prepare with: hybridcxr prepare {LAYOUTS[layout]} --root OUT --out PREPARED\n")


def _reader_tables(staging: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The phantom set's annotation and image-label rows of both splits."""
    ann = [pd.read_csv(p) for p in sorted((staging / "annotations").glob("annotations_*.csv"))]
    lab = [pd.read_csv(p) for p in sorted((staging / "annotations").glob("image_labels_*.csv"))]
    return pd.concat(ann, ignore_index=True), pd.concat(lab, ignore_index=True)


def _move(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, dest)


def _pick(seed: int, *parts: object) -> int:
    """A number fixed by the seed and parts (the same choice on every run and platform)."""
    text = ":".join(str(p) for p in ("hybridcxr-phantom-layout", seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def _counts(images: Sequence[PhantomImage], splits: Sequence[str]) -> dict[str, int]:
    return {s: sum(1 for i in images if i.split == s) for s in splits}


# ------------------------------------------------------------------------------------------ VinDr (Kaggle)


def _kaggle(summary: PhantomSummary, root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """VinBigData ``train.csv`` (every reader's rows) and ``train/*.dicom``."""
    annotations, _ = _reader_tables(summary.root)
    class_id = {name: i for i, name in enumerate(VINDR_CXR)} | {NO_FINDING: len(VINDR_CXR)}
    table = annotations.assign(class_id=annotations["class_name"].map(class_id).astype(int))
    write_csv(root / "train.csv", table[list(_KAGGLE_COLUMNS)])
    for image in summary.images:
        _move(image.path, root / "train" / image.path.name)
    return _counts(summary.images, ("train",)), dict(summary.positives)


# ------------------------------------------------------------------------------------------ VinDr-PCXR


def _months(images: Sequence[PhantomImage]) -> dict[str, int]:
    """A child's age in months per image: the patient's adult age at the first image mapped onto 6-100
    months (order kept), plus the months since that first image, at most 119 (VinDr-PCXR: under 10)."""
    first: dict[str, PhantomImage] = {}
    for image in sorted(images, key=lambda i: i.study_date):
        first.setdefault(image.patient_id, image)
    out = {}
    for image in images:
        start = first[image.patient_id]
        base = 6 + (min(max(start.age, 18), 88) - 18) * 94 / 70
        out[image.image_id] = int(min(119, round(base + (image.study_date - start.study_date).days / 30.44)))
    return out


def _pcxr_diagnoses(labels: pd.DataFrame) -> pd.DataFrame:
    """VinDr-PCXR's diagnosis columns from one reader's VinDr-CXR label rows (0/1)."""
    out = pd.DataFrame({"image_id": labels["image_id"], "rad_ID": labels["rad_id"]})
    for name in VINDR_PCXR:
        out[name] = 0
    out["Pneumonia"] = labels["Pneumonia"].astype(int)
    out["Lung tumor"] = labels["Lung tumor"].astype(int)
    other = labels[[f for f in PHANTOM_FINDINGS if f != "Consolidation"]].max(axis=1).astype(bool)
    other &= (out["Pneumonia"] == 0) & (out["Lung tumor"] == 0)
    out["Other disease"] = other.astype(int)
    out[NO_FINDING] = (out[list(VINDR_PCXR)].sum(axis=1) == 0).astype(int)
    return out


def _pcxr(summary: PhantomSummary, root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """VinDr-PCXR tables (one reader per image) and the DICOMs with children's ages in months."""
    import pydicom

    annotations, labels = _reader_tables(summary.root)
    reader = {i.image_id: TEST_READER if i.split == "test" else f"R{1 + _pick(summary.seed, 'reader', i.image_id) % 3}"
              for i in summary.images}
    labels = labels[labels["rad_id"] == labels["image_id"].map(reader)]
    annotations = annotations[annotations["rad_id"] == annotations["image_id"].map(reader)]
    annotations = annotations.assign(class_name=annotations["class_name"].replace(_TO_PCXR_LESION))
    diagnoses = _pcxr_diagnoses(labels)
    split = {i.image_id: i.split for i in summary.images}
    for name in ("train", "test"):
        write_csv(root / f"image_labels_{name}.csv", diagnoses[diagnoses["image_id"].map(split) == name])
        write_csv(root / f"annotations_{name}.csv", annotations[annotations["image_id"].map(split) == name])
    months = _months(summary.images)
    for image in summary.images:
        ds = pydicom.dcmread(image.path)
        ds.PatientAge = f"{months[image.image_id]:03d}M"
        with atomic_path(root / image.split / image.path.name) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    positives = {d: int(diagnoses[d].sum()) for d in (*VINDR_PCXR, NO_FINDING) if diagnoses[d].any()}
    return _counts(summary.images, ("train", "test")), positives


# ------------------------------------------------------------------------------------------ 8-bit images


def _grey8(image: PhantomImage, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The phantom as displayed (window applied, MONOCHROME1 inverted) in 8 bits, resized to ``shape``."""
    from PIL import Image

    from hybridcxr.io import read_radiograph

    pixels = np.clip(np.rint(read_radiograph(image.path).pixels * 255), 0, 255).astype(np.uint8)
    if shape is None:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _save_grey(pixels: np.ndarray, path: Path, fmt: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, mode="L").save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))


# ------------------------------------------------------------------------------------------ NIH


def _nih_findings(image: PhantomImage) -> list[tuple[str, tuple[float, float, float, float] | None]]:
    """The image's true findings (with their boxes) in NIH-14 names; Nodule/Mass by the box's width."""
    out: list[tuple[str, tuple[float, float, float, float] | None]] = []
    for finding, box in image.boxes:
        if finding == "Nodule/Mass":
            name = "Mass" if (box[2] - box[0]) >= _MASS_WIDTH * image.shape[1] else "Nodule"
        else:
            name = _TO_NIH[finding]
        out.append((name, box))
    return out


def _nih_names(images: Sequence[PhantomImage]) -> dict[str, tuple[int, int]]:
    """NIH's ``(patient number, follow-up #)`` per image: patients numbered by first image, visits by date."""
    numbers: dict[str, int] = {}
    for image in images:
        numbers.setdefault(image.patient_id, len(numbers) + 1)
    out, visits = {}, {}
    for image in sorted(images, key=lambda i: (i.study_date, i.image_id)):
        visits[image.patient_id] = visits.get(image.patient_id, -1) + 1
        out[image.image_id] = (numbers[image.patient_id], visits[image.patient_id])
    return out


def _nih_row(image: PhantomImage, name: str, number: int, follow_up: int,
             labels: list[str]) -> dict[str, object]:
    """One Data_Entry_2017 row (the ``OriginalImage`` columns hold the phantom's drawn size)."""
    return {"Image Index": name, "Finding Labels": "|".join(labels) or "No Finding", "Follow-up #": follow_up,
            "Patient ID": number, "Patient Age": image.age, "Patient Gender": image.sex or "",
            "View Position": "PA", "OriginalImage[Width": image.shape[1], "Height]": image.shape[0]}


def _nih(summary: PhantomSummary, root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """NIH ChestX-ray14: 1024 x 1024 PNGs, Data_Entry_2017.csv, BBox_List_2017.csv and the official split."""
    names = _nih_names(summary.images)
    entries, boxes, lists = [], [], {"train": [], "test": []}
    positives: dict[str, int] = {}
    for image in summary.images:
        number, follow_up = names[image.image_id]
        name = f"{number:08d}_{follow_up:03d}.png"
        found = _nih_findings(image)
        labels = sorted({f for f, _ in found})
        for label in labels:
            positives[label] = positives.get(label, 0) + 1
        entries.append(_nih_row(image, name, number, follow_up, labels))
        lists[image.split].append(name)
        _save_grey(_grey8(image, (NIH_FRAME, NIH_FRAME)), root / "images_001" / "images" / name, "PNG")
        if image.split != "test":
            continue
        sx, sy = NIH_FRAME / image.shape[1], NIH_FRAME / image.shape[0]
        for label, (x0, y0, x1, y1) in found:
            if label in _NIH_BOXED:
                boxes.append([name, label, x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy])
    write_csv(root / "Data_Entry_2017.csv", pd.DataFrame(entries))
    write_csv(root / "BBox_List_2017.csv",
              pd.DataFrame(boxes, columns=["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]))
    for split, file in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
        write_text(root / file, "".join(f"{n}\n" for n in sorted(lists[split])))
    return _counts(summary.images, ("train", "test")), positives


# ------------------------------------------------------------------------------------------ pneumonia


def _val_patients(images: Sequence[PhantomImage], seed: int) -> set[str]:
    """About a tenth of the training patients (at least one when there are four), for Kaggle's ``val/``."""
    patients = sorted({i.patient_id for i in images if i.split == "train"})
    k = max(1 if len(patients) >= 4 else 0, round(0.1 * len(patients)))
    order = sorted(patients, key=lambda p: _pick(seed, "val", p))
    return set(order[:k])


def _pneumonia_names(images: Sequence[PhantomImage], seed: int) -> dict[str, str]:
    """Kaggle-style file stems: ``person<N>_bacteria|virus_<k>`` for pneumonia, ``IM-<NNNN>-<kkkk>`` for normal."""
    numbers: dict[str, int] = {}
    seen: dict[tuple[str, bool], int] = {}
    out = {}
    for k, image in enumerate(images, start=1):
        number = numbers.setdefault(image.patient_id, len(numbers) + 1)
        sick = bool(image.findings & PNEUMONIA_LIKE)
        count = seen[(image.patient_id, sick)] = seen.get((image.patient_id, sick), 0) + 1
        if sick:
            kind = "virus" if _pick(seed, "virus", image.patient_id) % 3 == 0 else "bacteria"
            out[image.image_id] = f"person{number}_{kind}_{k}"
        else:
            out[image.image_id] = f"IM-{number:04d}-{count:04d}"
    return out


def _pneumonia(summary: PhantomSummary, root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Guangzhou/Kaggle ``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``."""
    val = _val_patients(summary.images, summary.seed)
    names = _pneumonia_names(summary.images, summary.seed)
    splits = dict.fromkeys(("train", "val", "test"), 0)
    sick_count = 0
    for image in summary.images:
        split = "val" if image.patient_id in val else image.split
        sick = bool(image.findings & PNEUMONIA_LIKE)
        sick_count += sick
        splits[split] += 1
        folder = root / split / ("PNEUMONIA" if sick else "NORMAL")
        _save_grey(_grey8(image), folder / f"{names[image.image_id]}.jpeg", "JPEG")
    return splits, {"Pneumonia": sick_count, NO_FINDING: len(summary.images) - sick_count}


_WRITERS: dict[str, Callable[[PhantomSummary, Path], tuple[dict[str, int], dict[str, int]]]] = {
    "vindr-cxr-kaggle": _kaggle, "vindr-pcxr": _pcxr, "nih": _nih, "pneumonia": _pneumonia,
}

__all__ = ["LAYOUTS", "PNEUMONIA_LIKE", "LayoutSummary", "make_layout_dataset"]
