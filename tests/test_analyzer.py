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


def test_radiographs_analyzed_together_give_what_each_gives_alone(tiny_classifier, tiny_detector):
    """The service's batches: one call over several radiographs answers, in order, what one call each would."""
    from hybridcxr.io import read_radiograph

    phantom, _, _ = tiny_detector
    _, run, _ = tiny_classifier
    analyzer = Analyzer(run, device="cpu")
    radiographs = [read_radiograph(p) for p in sorted(phantom.rglob("*.dicom"))[:5]]
    ages, sexes = [40.0, None, 71.5, 8.0, None], ["F", "M", None, "M", None]
    together = analyzer.analyze_radiographs(radiographs, ages, sexes)
    alone = [analyzer.analyze_radiographs([r], [a], [s])[0] for r, a, s in zip(radiographs, ages, sexes)]
    assert [a.image_id for a in together] == [r.image_id for r in radiographs]
    for batched, single in zip(together, alone):
        assert (batched.age_years, batched.sex) == (single.age_years, single.sex)
        assert batched.probabilities == pytest.approx(single.probabilities, abs=1e-5)
        assert batched.decisions == single.decisions
        assert batched.detection.boxes["finding"].tolist() == single.detection.boxes["finding"].tolist()
        columns = ["score", "x_min", "y_min", "x_max", "y_max"]
        assert batched.detection.boxes[columns].to_numpy() == pytest.approx(
            single.detection.boxes[columns].to_numpy(), abs=1e-3)
    assert len({tuple(a.probabilities.values()) for a in together}) > 1, "different images, different answers"
