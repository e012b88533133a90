"""Hand-made hostile radiograph files (from the hardening review), shared by the io and batch tests.

Each is small on disk; each used to crash a batch or return a wrong image. ``write_hostile(folder)`` writes
them all and returns ``{file name: the words its refusal must contain}``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def _dataset(pixels: np.ndarray, **elements) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


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
