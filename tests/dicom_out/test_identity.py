"""The marks of our DICOM objects: recognised by model version, foreign objects not taken for ours."""

from __future__ import annotations

from pydicom.dataset import Dataset

from hybridcxr.dicom_out.identity import MANUFACTURER, is_ours, model_version, software_versions


def test_model_version_follows_the_card(tmp_path):
    card = tmp_path / "card.json"
    card.write_text('{"a": 1}')
    first = model_version(card)
    card.write_text('{"a": 2}')
    assert len(first) == 16 and model_version(card) != first


def test_is_ours_checks_manufacturer_and_model():
    ds = Dataset()
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = software_versions("0123456789abcdef")
    assert is_ours(ds) and is_ours(ds, "0123456789abcdef")
    assert not is_ours(ds, "fedcba9876543210")
    foreign = Dataset()
    foreign.Manufacturer = "ACME"
    foreign.SoftwareVersions = software_versions("0123456789abcdef")
    assert not is_ours(foreign, "0123456789abcdef") and not is_ours(Dataset())
