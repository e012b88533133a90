"""Fixtures for the lung tests: a synthetic mask dataset, a segmenter trained on it once per session (seconds,
32 px), and one trained briefly on a few real masks of ``../shared/data/lung-masks`` (skips where absent).

What these tiny models segment is not the point (tools/bench_lungs.py measures accuracy); the plumbing is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _network import forbid_network

#: A segmenter small enough to train in seconds on 2 cores.
TINY = {"imgsz": 32, "channels": [8, 16, 32], "epochs": 4, "batch": 4, "patience": 4, "threads": 1, "lr": 1e-2}


def draw_lungs(height: int, width: int, *, gap: int = 8, rng: np.random.Generator | None = None) -> np.ndarray:
    """A boolean mask of two upright ellipses (lungs) with ``gap`` columns between their inner edges."""
    yy, xx = np.mgrid[:height, :width]
    half = (width - gap) / 4
    cy, ry = height * 0.5, height * 0.38
    jitter = (rng.uniform(-0.05, 0.05) if rng is not None else 0.0) * width
    right = ((yy - cy) / ry) ** 2 + ((xx - (half + jitter)) / (half * 0.9)) ** 2 <= 1
    left = ((yy - cy) / ry) ** 2 + ((xx - (width - half + jitter)) / (half * 0.9)) ** 2 <= 1
    return right | left


def write_mask_dataset(folder: Path, n: int = 24, seed: int = 0, size: tuple[int, int] = (96, 80)) -> Path:
    """A mask dataset in the documented layout: dark lung ellipses on a brighter, noisy chest; two images per
    patient in ``patients.csv``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        mask = draw_lungs(*size, gap=int(rng.integers(6, 16)), rng=rng)
        image = np.clip(0.75 - 0.45 * mask + rng.normal(0, 0.06, size), 0, 1)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / "images" / f"img{i:02d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"img{i:02d}.png")
    pd.DataFrame({"image_id": [f"img{i:02d}" for i in range(n)],
                  "patient_id": [f"p{i // 2}" for i in range(n)]}).to_csv(folder / "patients.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def mask_dataset(tmp_path_factory) -> Path:
    return write_mask_dataset(tmp_path_factory.mktemp("lungmasks") / "data")


@pytest.fixture(scope="session")
def tiny_lungs(mask_dataset, tmp_path_factory):
    """The synthetic set's segmenter (:data:`TINY`), trained once with the network forbidden: a LungRun."""
    from hybridcxr.config import load_config
    from hybridcxr.lungs.train import train_lungs

    out = tmp_path_factory.mktemp("lungrun") / "run"
    with pytest.MonkeyPatch.context() as mp:
        attempts = forbid_network(mp)
        run = train_lungs(mask_dataset, out, load_config("lungs", overrides=TINY), progress=False)
    assert not attempts, f"training tried the network: {attempts}"
    return run


@pytest.fixture(scope="session")
def real_lungs(shared_data, tmp_path_factory):
    """A segmenter trained for seconds on 40 real masks at 64 px: lung-like enough for the plumbing of `segment`."""
    from hybridcxr.config import load_config
    from hybridcxr.lungs.data import read_mask_dataset
    from hybridcxr.lungs.train import train_lungs

    folder = shared_data / "lung-masks"
    if not folder.is_dir():
        pytest.skip(f"real lung masks not found at {folder}")
    data = read_mask_dataset(folder).subset(range(40))
    settings = {**TINY, "imgsz": 64, "channels": [8, 16, 32, 64], "epochs": 8, "patience": 8, "batch": 8}
    return train_lungs(data, tmp_path_factory.mktemp("reallungs") / "run", load_config("lungs", overrides=settings),
                       progress=False)
