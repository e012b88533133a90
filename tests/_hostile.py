"""Hand-made hostile radiograph files (from the hardening review), shared by the io and batch tests.

Each is small on disk; each used to crash a batch or return a wrong image. ``write_hostile(folder)`` writes
them all and returns ``{file name: the words its refusal must contain}``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from _dicoms import dicom_dataset
from pydicom.dataset import Dataset

def _dataset(pixels: np.ndarray, **elements) -> Dataset:
    """A valid one-frame DX dataset around ``pixels``, then ``elements`` set on it (the breakage)."""
    return dicom_dataset(pixels, **elements)


def good_pixels(seed: int = 0, size: int = 96) -> np.ndarray:
    """A plausible 12-bit grey image (so the good files of a batch decode and run)."""
    rng = np.random.default_rng(seed)
    return (rng.random((size, size)) * 4000).astype(np.uint16)


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid, tiny PNG whose header claims ``width x height`` grey pixels (its data is one empty row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def write_hostile(folder: Path) -> dict[str, str]:
    """Write every hostile file into ``folder``; returns file name -> text expected in its refusal."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = good_pixels()
    cases: dict[str, tuple[Dataset | bytes, str]] = {
        "palette-no-lut.dcm": (_dataset(pixels.astype(np.uint8), BitsStored=8, BitsAllocated=8, HighBit=7,
                                        PhotometricInterpretation="PALETTE COLOR"), "PALETTE COLOR"),
        "nan-slope.dcm": (_dataset(pixels, RescaleSlope="NaN"), "RescaleSlope"),
        "inf-window.dcm": (_dataset(pixels, WindowCenter="inf", WindowWidth="400"), "WindowCenter"),
        "rows-too-small.dcm": (_dataset(pixels, Rows=2), "shape"),
        "float-nan.dcm": (_float_nan(), "NaN"),
        "bomb.png": (bomb_png(), "pixels, more than the limit"),
    }
    for name, (content, _) in cases.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            content.save_as(folder / name, enforce_file_format=True)
    return {name: words for name, (_, words) in cases.items()}


def _float_nan() -> Dataset:
    """A Float Pixel Data image with NaN pixels (parametric map style)."""
    values = np.linspace(0, 1, 96 * 96, dtype=np.float32).reshape(96, 96)
    values[10:20, 10:20] = np.nan
    ds = _dataset(values.astype(np.uint16))
    del ds.PixelData
    ds.BitsAllocated = ds.BitsStored = 32
    del ds.HighBit
    del ds.PixelRepresentation
    ds.FloatPixelData = values.tobytes()
    return ds
