"""The dciodvfy helper follows the rule of tests/_services.py: skip with the reason locally, fail under CI."""

from __future__ import annotations

import _dicom3tools
import pytest


def test_missing_dciodvfy_skips_locally(monkeypatch, tmp_path):
    monkeypatch.setattr(_dicom3tools.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="dicom3tools"):
        _dicom3tools.dciodvfy_errors(tmp_path / "x.dcm")


def test_missing_dciodvfy_fails_under_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(_dicom3tools.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="dicom3tools"):
        _dicom3tools.dciodvfy_errors(tmp_path / "x.dcm")


def test_errors_are_found_and_warnings_are_not(tmp_path):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # a Secondary Capture missing nearly everything
    ds.SOPInstanceUID = "1.2.3.4"
    ds.save_as(tmp_path / "bad.dcm", implicit_vr=True, little_endian=True)
    errors = _dicom3tools.dciodvfy_errors(tmp_path / "bad.dcm")
    assert errors and all(line.lstrip().startswith("Error") for line in errors)
