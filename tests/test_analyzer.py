"""The Analyzer loads a classifier run only when its detector and CNN are the ones the head was trained with."""

from __future__ import annotations

import json
import shutil

import pytest

from hybridcxr.analyzer import Analyzer
from hybridcxr.errors import InputError
from hybridcxr.files import file_sha256


def test_a_run_loads_and_reports_its_findings(tiny_classifier):
    _, run, card = tiny_classifier
    analyzer = Analyzer(run, device="cpu")
    assert analyzer.findings == list(card["findings"]) and set(analyzer.thresholds) == set(card["findings"])


def test_a_swapped_detector_is_refused(tiny_classifier, tmp_path):
    """Weights edited (and their card's sha256 updated to match) still differ from the trained detector."""
    from safetensors.torch import load_file, save_file

    _, run, _ = tiny_classifier
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = copy / "detector" / "best.safetensors"
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = state[name] * 1.01
    save_file(state, str(weights))
    card_file = copy / "detector" / "best.json"
    card = json.loads(card_file.read_text())
    card["weights_sha256"] = file_sha256(weights)
    card_file.write_text(json.dumps(card))
    with pytest.raises(InputError, match="detector weights differ from those the head was trained on"):
        Analyzer(copy, device="cpu")
