"""Tiny DICOMs made on the fly, for the io tests and the hostile-file helpers (one builder for both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def dicom_dataset(
    pixels: np.ndarray | None,
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    modality: str | None = "DX",
    **elements: Any,
) -> Dataset:
    """A minimal single-image DICOM dataset around ``pixels`` (None: no Pixel Data)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if modality is not None:
        ds.Modality = modality
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    if pixels is not None:
        arr = np.ascontiguousarray(pixels)
        colour = arr.ndim == 3 and arr.shape[-1] == 3
        ds.Rows, ds.Columns = arr.shape[-3:-1] if colour else arr.shape[-2:]
        ds.SamplesPerPixel = 3 if colour else 1
        if colour:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = arr.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(arr.dtype.kind == "i")
        ds.PhotometricInterpretation = photometric
        ds.PixelData = arr.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def save_dicom(ds: Dataset, path: Path, *, preamble: bool = True) -> Path:
    """Write ``ds`` as a DICOM file (with 'DICM' preamble and file meta, or as a bare dataset)."""
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        bare = Dataset()
        bare.update(ds)
        bare.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return path
