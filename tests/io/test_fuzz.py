"""Seeded fuzzing of the shared DICOMs: mutated headers and bytes never crash the reader or return a bad image.

Every mutant either decodes to a 2-D, finite float32 image in [0, 1] or is refused with one of hybridcxr's
errors whose message names the file. The run is bounded (a fixed number of mutants, and a time budget of
about a minute on a 2-core machine) and seeded, so a failure can be replayed from its seed and index.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.tag import Tag

from hybridcxr.errors import HybridCXRError
from hybridcxr.io import read_radiograph

SEED = 20261201
HEADER_MUTANTS = 300
BYTE_MUTANTS = 300
BUDGET_S = float(os.environ.get("HYBRIDCXR_FUZZ_SECONDS", "50"))

#: Header elements that steer decoding, with values a broken or hostile writer might put there.
HOSTILE_VALUES: dict[str, list] = {
    "Rows": [0, 1, 2, 7, 65535], "Columns": [0, 1, 3, 65535],
    "BitsAllocated": [0, 1, 7, 12, 32, 64], "BitsStored": [0, 1, 17, 33], "HighBit": [0, 31, 200],
    "SamplesPerPixel": [0, 2, 3, 4], "PixelRepresentation": [1, 2],
    "PhotometricInterpretation": ["PALETTE COLOR", "RGB", "YBR_FULL", "MONOCHROME1", "HSV", ""],
    "RescaleSlope": ["NaN", "inf", "-inf", "0", "1e308", "-1"], "RescaleIntercept": ["NaN", "1e308", "-inf"],
    "WindowCenter": ["NaN", "inf", "1e308", "-5"], "WindowWidth": ["NaN", "0", "-1", "inf", "1e-30"],
    "NumberOfFrames": ["0", "2", "-1", "99999"], "PlanarConfiguration": [1, 5],
    "VOILUTFunction": ["SIGMOID", "NONSENSE"], "Modality": ["CT", "", "DX"],
}


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> list[Path]:
    found = sorted((shared_data / "dicom").rglob("*.dcm"))
    if not found:
        pytest.skip(f"no shared DICOMs under {shared_data / 'dicom'}")
    return found


def _check(path: Path) -> str:
    """Read one mutant; return 'ok' or 'refused', fail the test on anything else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            radiograph = read_radiograph(path, allow_modality=True)
    except HybridCXRError as err:
        assert path.name in str(err), f"the error does not name the file: {err}"
        return "refused"
    pixels = radiograph.pixels
    assert pixels.ndim == 2 and pixels.dtype == np.float32, f"{path.name}: shape {pixels.shape} {pixels.dtype}"
    assert np.isfinite(pixels).all(), f"{path.name}: NaN or infinite pixels returned"
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0, f"{path.name}: values outside [0, 1]"
    return "ok"


def _header_mutant(source: Path, rng: np.random.Generator, dest: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(source)
        for _ in range(int(rng.integers(1, 4))):
            keyword = str(rng.choice(list(HOSTILE_VALUES)))
            if rng.random() < 0.15 and keyword in ds:
                del ds[Tag(keyword)]
            else:
                values = HOSTILE_VALUES[keyword]
                setattr(ds, keyword, values[int(rng.integers(len(values)))])
        ds.save_as(dest)


def _byte_mutant(data: bytes, rng: np.random.Generator, dest: Path) -> None:
    buf = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:  # flip bytes, mostly in the header where they steer parsing
        for _ in range(int(rng.integers(1, 16))):
            at = int(rng.integers(0, min(len(buf), 4096) if rng.random() < 0.8 else len(buf)))
            buf[at] = int(rng.integers(256))
    elif kind == 1:  # truncate
        buf = buf[: int(rng.integers(0, len(buf)))]
    else:  # splice a run of random bytes into the middle
        at = int(rng.integers(0, len(buf)))
        buf[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    dest.write_bytes(bytes(buf))


@pytest.mark.slow
def test_fuzzed_dicoms_are_read_or_refused_cleanly(samples, tmp_path):
    rng = np.random.default_rng(SEED)
    start = time.monotonic()
    outcomes = {"ok": 0, "refused": 0}
    originals = {p: p.read_bytes() for p in samples}
    for index in range(HEADER_MUTANTS + BYTE_MUTANTS):
        if time.monotonic() - start > BUDGET_S:
            break
        source = samples[int(rng.integers(len(samples)))]
        dest = tmp_path / f"mutant-{index:04d}.dcm"
        if index < HEADER_MUTANTS:
            _header_mutant(source, rng, dest)
        else:
            _byte_mutant(originals[source], rng, dest)
        outcomes[_check(dest)] += 1
        dest.unlink()
    assert sum(outcomes.values()) >= 100, f"too few mutants in the time budget: {outcomes}"
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0, outcomes
