"""Fixtures for the export tests: copies of the session's tiny detector and classifier runs, exported to ONNX once.

The runs are copied because these tests write ONNX files into them and then damage some; the session's own
runs stay as the other tests expect them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def exported_classifier(tiny_detector, tiny_classifier, tmp_path_factory):
    """A copy of the tiny classifier run with its ONNX export; ``(phantom, run, ExportResult)``."""
    from hybridcxr.export.onnx import export_run

    phantom, run = tiny_detector[0], tiny_classifier[1]
    copy = tmp_path_factory.mktemp("onnx-cls") / "run"
    shutil.copytree(run, copy)
    return phantom, copy, export_run(copy)


@pytest.fixture(scope="session")
def exported_detector(tiny_detector, tmp_path_factory):
    """A copy of the tiny detector run with its ONNX export; ``(phantom, run, ExportResult)``."""
    from hybridcxr.export.onnx import export_run

    phantom, folder, _ = tiny_detector
    copy = tmp_path_factory.mktemp("onnx-det") / "run"
    shutil.copytree(folder / "run", copy)
    return phantom, copy, export_run(copy)


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A throw-away copy of an exported run, for tests that damage it."""
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


@pytest.fixture(scope="session")
def int8_detector(tiny_detector, tmp_path_factory):
    """A copy of the tiny detector run exported fp32 and int8 (calibrated on its prepared train images);
    ``(phantom, run, ExportResult)``."""
    from hybridcxr.export.onnx import export_run

    phantom, folder, _ = tiny_detector
    copy = tmp_path_factory.mktemp("onnx-int8") / "run"
    shutil.copytree(folder / "run", copy)
    return phantom, copy, export_run(copy, int8=True)
