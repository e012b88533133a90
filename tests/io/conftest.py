"""Fixtures for the io tests: the real samples beside the repository, and tiny DICOMs made on the fly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
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


@pytest.fixture
def make_dicom(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_dicom(pixels, name="x.dcm", **elements)`` writes a DICOM into tmp_path."""

    def make(pixels: np.ndarray | None, name: str = "synthetic.dcm", **kwargs: Any) -> Path:
        preamble = kwargs.pop("preamble", True)
        return save_dicom(dicom_dataset(pixels, **kwargs), tmp_path / name, preamble=preamble)

    return make


@pytest.fixture
def build_dataset() -> Callable[..., Dataset]:
    """The :func:`dicom_dataset` builder, for tests that edit a dataset before saving it."""
    return dicom_dataset


@pytest.fixture
def write_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``write_dataset(ds, name="x.dcm", preamble=True)`` saves ``ds`` into tmp_path."""

    def write(ds: Dataset, name: str = "synthetic.dcm", *, preamble: bool = True) -> Path:
        return save_dicom(ds, tmp_path / name, preamble=preamble)

    return write
