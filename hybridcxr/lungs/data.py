"""Lung mask datasets: find the image/mask pairs and their patients, split by patient, decode once.

A mask dataset is a folder ``DIR`` with ``images/`` (radiographs: PNG, JPEG or DICOM) and ``masks/`` (binary
PNGs, any non-zero pixel is lung; both lungs in one mask) whose names match the images' stems (``ID.png``, or
``ID_mask.png`` as the Shenzhen set names them), and optionally a CSV at the top of ``DIR`` with an
``image_id`` column and a ``patient_id`` column (``../shared/data/lung-masks/lung_masks.csv`` is one, read as
it is). Without patient ids each image counts as its own patient, with a :class:`DataWarning`.
``datasets/lung-masks.md`` says how to bring the public sets into this layout.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hybridcxr.errors import DataWarning, DatasetError, HybridCXRError, InputError
from hybridcxr.progress import progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
MASK_SUFFIXES = (".png", ".gif", ".bmp", ".tif", ".tiff")
_ID_COLUMNS = ("image_id", "image", "filename", "file", "Image Index")
_PATIENT_COLUMNS = ("patient_id", "patient", "PatientID", "Patient ID")


@dataclass
class MaskDataset:
    """The pairs of one mask dataset: ``table`` has ``image_id, image, mask, patient_id`` (one row per pair)."""

    root: Path
    table: pd.DataFrame

    def subset(self, rows: np.ndarray | Sequence[int]) -> MaskDataset:
        """The same dataset restricted to ``rows`` (positions)."""
        return MaskDataset(self.root, self.table.iloc[list(rows)].reset_index(drop=True))

    def __len__(self) -> int:
        return len(self.table)


def read_mask_dataset(root: str | Path) -> MaskDataset:
    """The image/mask pairs under ``root`` with their patient ids (see the module doc for the layout).

    Raises DatasetError naming the folder when ``images/`` or ``masks/`` is missing or no pair matches.
    """
    root = Path(root)
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DatasetError(root, f"a lung mask dataset needs an {sub}/ folder (see datasets/lung-masks.md)")
    images = {p.stem: p for p in sorted((root / "images").iterdir())
              if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}
    masks = {}
    for p in sorted((root / "masks").iterdir()):
        if p.suffix.lower() in MASK_SUFFIXES and not p.name.startswith("."):
            masks[p.stem[:-5] if p.stem.endswith("_mask") else p.stem] = p
    ids = sorted(set(images) & set(masks))
    if not ids:
        raise DatasetError(root, f"no image in images/ has a mask of the same name in masks/ "
                                 f"({len(images)} images, {len(masks)} masks)")
    unmatched = len(images) - len(ids)
    if unmatched:
        warnings.warn(DataWarning(f"{root}: {unmatched} images have no mask and are left out"), stacklevel=2)
    table = pd.DataFrame({"image_id": ids, "image": [str(images[i]) for i in ids], "mask": [str(masks[i]) for i in ids]})
    table["patient_id"] = _patients(root, ids)
    return MaskDataset(root, table)


def _patients(root: Path, ids: list[str]) -> list[str]:
    """Each image's patient id from the first CSV in ``root`` that has image and patient columns."""
    for csv in sorted(root.glob("*.csv")):
        try:
            head = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise DatasetError(csv, f"unreadable table ({str(err)[:200]})") from None
        id_col = next((c for c in _ID_COLUMNS if c in head.columns), None)
        patient_col = next((c for c in _PATIENT_COLUMNS if c in head.columns), None)
        if id_col is None or patient_col is None:
            continue
        stems = head[id_col].map(lambda v: Path(v).stem if Path(v).suffix.lower() in IMAGE_SUFFIXES else v)
        found = dict(zip(stems, head[patient_col]))
        missing = [i for i in ids if not found.get(i)]
        if missing:
            warnings.warn(DataWarning(f"{csv}: {len(missing)} images have no patient id; each counts as its "
                                      "own patient"), stacklevel=3)
        return [found.get(i) or f"image:{i}" for i in ids]
    warnings.warn(DataWarning(f"{root}: no table with image_id and patient_id columns; each image counts as its "
                              "own patient, so one patient's images may fall on both sides of the split"),
                  stacklevel=3)
    return [f"image:{i}" for i in ids]


def split_by_patient(patients: Sequence[str], fraction: float, seed: int, minimum: int = 1) -> np.ndarray:
    """A boolean array, True for the held-out rows: whole patients, drawn in a seeded random order until at least
    ``fraction`` of the rows (and at least ``minimum`` rows) are held out.

    >>> bool(split_by_patient(["a", "a", "b", "c"], 0.25, seed=0).sum() >= 1)
    True
    """
    patients = np.asarray(list(patients), dtype=object)
    unique = np.array(sorted(set(patients)), dtype=object)
    if len(unique) < 2:
        raise DatasetError("patients", f"a patient-grouped split needs at least 2 patients, got {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    held = np.zeros(len(patients), dtype=bool)
    wanted = max(minimum, int(np.ceil(fraction * len(patients))))
    for patient in unique[order]:
        if held.sum() >= wanted:
            break
        held |= patients == patient
    if held.all():
        raise DatasetError("patients", f"holding out {wanted} images leaves none to train on")
    return held


def resize(pixels: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """A square ``size`` x ``size`` copy of a 2-D array (area averaging down, linear up; nearest for labels)."""
    import cv2

    if nearest:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if min(pixels.shape) >= size else cv2.INTER_LINEAR
    return cv2.resize(pixels, (size, size), interpolation=interpolation)


def read_mask(path: str | Path) -> np.ndarray:
    """A binary mask file as a bool array (any non-zero pixel, of any channel, is lung)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            values = np.asarray(im.convert("L"))
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read the mask ({str(err)[:200]})") from None
    return values > 0


def load_pair(image: str | Path, mask: str | Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image and its mask at ``size`` x ``size``: uint8 grey (0-255) and uint8 0/1.

    Raises DatasetError when the mask's shape does not match the image's (a mask at another resolution with the
    same aspect ratio, as JSRT/SCR's, is accepted).
    """
    from hybridcxr.io import read_radiograph

    pixels = read_radiograph(image).pixels
    truth = read_mask(mask)
    if abs(truth.shape[0] / truth.shape[1] - pixels.shape[0] / pixels.shape[1]) > 0.02:
        raise DatasetError(mask, f"mask is {truth.shape[1]}x{truth.shape[0]} but its image is "
                                 f"{pixels.shape[1]}x{pixels.shape[0]}")
    grey = (resize(pixels, size) * 255 + 0.5).astype(np.uint8)
    small = resize(truth.astype(np.float32), size) >= 0.5
    return grey, small.astype(np.uint8)


def load_pairs(data: MaskDataset, size: int, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of ``data`` decoded once: ``(N, size, size)`` uint8 images and 0/1 masks, in table order.

    A pair that cannot be read stops with its error: a training set should not silently shrink.
    """
    images = np.zeros((len(data), size, size), np.uint8)
    masks = np.zeros((len(data), size, size), np.uint8)
    with progress_bar(len(data), "decoding lung masks", progress) as advance:
        for i, row in enumerate(data.table.itertuples(index=False)):
            try:
                images[i], masks[i] = load_pair(row.image, row.mask, size)
            except HybridCXRError:
                raise
            except Exception as err:  # a decoder's own failure is this file's problem
                raise DatasetError(row.image, f"cannot be read ({type(err).__name__}: {str(err)[:200]})") from err
            advance()
    return images, masks
