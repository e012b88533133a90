"""Fixtures for the io tests: the real samples beside the repository, and tiny DICOMs made on the fly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _dicoms import dicom_dataset, save_dicom
from pydicom.dataset import Dataset


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
