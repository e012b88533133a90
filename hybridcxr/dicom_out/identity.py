"""Who wrote a DICOM object: the marks every object hybridcxr writes carries, and the test for them.

Why: a PACS client must tell, from what sits in a study, whether this model version has already answered it
(so that a second run stores nothing new). Every object we write says ``Manufacturer = "hybridcxr"`` and
lists, in Software Versions, the package version and the model version: the first 16 hex digits of the
SHA-256 of the classifier run's card (``model/card.json``), which changes whenever the weights, thresholds or
findings do.

>>> software_versions("0123456789abcdef")  # doctest: +ELLIPSIS
['hybridcxr ...', 'model 0123456789abcdef']
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from hybridcxr import __version__
from hybridcxr.files import file_sha256

MANUFACTURER = "hybridcxr"
"""Manufacturer (0008,0070) of every object we write."""


def model_version(card: str | Path) -> str:
    """The model version of a run: the first 16 hex digits of its card's SHA-256."""
    return file_sha256(card)[:16]


def software_versions(model: str) -> list[str]:
    """Software Versions (0018,1020) values: the package version, then the model version."""
    return [f"hybridcxr {__version__}", f"model {model}"]


def is_ours(ds: Dataset, model: str | None = None) -> bool:
    """Whether ``ds`` was written by hybridcxr (and, when ``model`` is given, by that model version)."""
    if str(getattr(ds, "Manufacturer", "")) != MANUFACTURER:
        return False
    if model is None:
        return True
    versions = ds.get("SoftwareVersions", [])
    versions = [versions] if isinstance(versions, str) else list(versions)
    return f"model {model}" in [str(v) for v in versions]
