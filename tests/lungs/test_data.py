"""hybridcxr.lungs.data: the mask dataset layout (and the real set's), the patient-grouped split, decoding."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from hybridcxr.errors import DataWarning, DatasetError
from hybridcxr.lungs.data import load_pair, load_pairs, read_mask_dataset, split_by_patient


def test_layout_with_patient_table(mask_dataset):
    data = read_mask_dataset(mask_dataset)
    assert len(data) == 24 and list(data.table.columns) == ["image_id", "image", "mask", "patient_id"]
    assert data.table["patient_id"].nunique() == 12


def test_without_table_each_image_is_its_own_patient(mask_dataset, tmp_path):
    folder = tmp_path / "d"
    shutil.copytree(mask_dataset, folder)
    (folder / "patients.csv").unlink()
    for mask in (folder / "masks").glob("*.png"):  # Shenzhen's naming: ID_mask.png
        mask.rename(mask.with_name(f"{mask.stem}_mask.png"))
    (folder / "images" / "extra.png").write_bytes((folder / "images" / "img00.png").read_bytes())
    with pytest.warns(DataWarning) as caught:
        data = read_mask_dataset(folder)
    messages = " ".join(str(w.message) for w in caught)
    assert "1 images have no mask" in messages and "its own patient" in messages
    assert len(data) == 24 and data.table["patient_id"].nunique() == 24


def test_bad_layouts(tmp_path):
    with pytest.raises(DatasetError, match="images/ folder"):
        read_mask_dataset(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match="no image in images/ has a mask"):
        read_mask_dataset(tmp_path)


def test_real_lung_masks_are_read_as_they_are(shared_data):
    folder = shared_data / "lung-masks"
    if not folder.is_dir():
        pytest.skip(f"real lung masks not found at {folder}")
    data = read_mask_dataset(folder)
    assert len(data) == 356 and data.table["patient_id"].nunique() == 214


def test_split_keeps_patients_whole():
    patients = [f"p{i // 3}" for i in range(60)] + ["q"] * 10
    held = split_by_patient(patients, 0.2, seed=3, minimum=15)
    assert held.sum() >= 15
    for p in set(patients):
        sides = {bool(h) for q, h in zip(patients, held) if q == p}
        assert len(sides) == 1, p
    assert (held == split_by_patient(patients, 0.2, seed=3, minimum=15)).all()
    with pytest.raises(DatasetError, match="at least 2 patients"):
        split_by_patient(["a", "a"], 0.5, seed=0)


def test_pairs_are_resized_and_checked(mask_dataset, tmp_path):
    data = read_mask_dataset(mask_dataset)
    images, masks = load_pairs(data.subset([0, 1]), 32, progress=False)
    assert images.shape == masks.shape == (2, 32, 32) and images.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    Image.fromarray(np.zeros((10, 50), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(DatasetError, match="mask is 50x10"):
        load_pair(data.table["image"][0], tmp_path / "wide.png", 32)
