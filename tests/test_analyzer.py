"""The Analyzer loads a classifier run only when its detector and CNN are the ones the head was trained with."""

from __future__ import annotations

import shutil

import pytest

from hybridcxr.analyzer import Analyzer
from hybridcxr.errors import InputError


def test_a_run_loads_and_reports_its_findings(tiny_classifier):
    _, run, card = tiny_classifier
    analyzer = Analyzer(run, device="cpu")
    assert analyzer.findings == list(card["findings"]) and set(analyzer.thresholds) == set(card["findings"])
    from hybridcxr.dicom_out.identity import model_version

    assert analyzer.model_version == model_version(run / "model" / "card.json")


def test_a_swapped_detector_is_refused(tiny_classifier, tmp_path):
    """Weights edited (and their card's sha256 updated to match) still differ from the trained detector."""
    from _weights import edit_detector_weights

    _, run, _ = tiny_classifier
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    edit_detector_weights(copy / "detector", lambda tensor: tensor * 1.01)
    with pytest.raises(InputError, match="detector weights differ from those the head was trained on"):
        Analyzer(copy, device="cpu")
