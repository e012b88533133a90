"""A tampered detector card never runs code: layers, activations and arguments are allow-listed before building."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.detect.card import check_model_yaml
from hybridcxr.detect.weights import load_detector
from hybridcxr.errors import InputError

runner = CliRunner()


@pytest.fixture(scope="module")
def card(tiny_detector) -> dict:
    _, out, _ = tiny_detector
    return json.loads((out / "run" / "weights" / "best.json").read_text())


def _tampered_run(tiny_detector, tmp_path: Path, change) -> Path:
    """A copy of the tiny detector run whose card ``change(card)`` edited."""
    _, out, _ = tiny_detector
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    for name in ("best.safetensors", "best.json"):
        shutil.copy(out / "run" / "weights" / name, run / "weights" / name)
    card_file = run / "weights" / "best.json"
    card = json.loads(card_file.read_text())
    change(card)
    card_file.write_text(json.dumps(card))
    return run


def _payload(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"


def test_trained_card_passes_the_allow_list(card):
    check_model_yaml(card["model_yaml"], "best.json")
    assert len(card["weights_sha256"]) == 64


def _activation(marker):
    def change(card):
        card["model_yaml"]["activation"] = _payload(marker)
    return change


def _safe_load_layer(marker):
    def change(card):
        card["model_yaml"]["backbone"][0] = [-1, 1, "torch_safe_load", [str(marker.with_suffix(".pt"))]]
    return change


def _eval_arg(marker):
    def change(card):
        card["model_yaml"]["backbone"][0][3] = [_payload(marker), 3, 2]
    return change


@pytest.mark.parametrize("tamper, message", [
    (_activation, "activation .* refused"),
    (_safe_load_layer, "torch_safe_load.*not a YOLO detection layer"),
    (_eval_arg, "string argument .* refused"),
])
@pytest.mark.parametrize("command", ["detect", "loader"])
def test_tampered_card_is_refused_and_nothing_runs(tiny_detector, tmp_path, tamper, message, command):
    marker = tmp_path / "pwned.txt"
    run = _tampered_run(tiny_detector, tmp_path, tamper(marker))
    if command == "loader":  # what classify, the Analyzer and serve call
        with pytest.raises(InputError, match=message):
            load_detector(run, device="cpu")
    else:
        phantom = tiny_detector[0]
        result = runner.invoke(app, ["detect", str(phantom / "test"), "--weights", str(run),
                                     "--out", str(tmp_path / "det"), "--no-progress"])
        assert result.exit_code != 0 and "best.json" in result.output, result.output
    assert not marker.exists(), "code from the card ran"


def test_ultralytics_builds_restricted_even_without_our_check(card, tmp_path):
    """Defence in depth: ultralytics' restricted mode (set by ultralytics_env) refuses eval and non-layers."""
    from hybridcxr.detect.ultralytics_env import import_ultralytics

    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    marker = tmp_path / "pwned.txt"
    for change in (_activation(marker), _safe_load_layer(marker)):
        tampered = copy.deepcopy(card)
        change(tampered)
        with pytest.raises(TypeError, match="restricted"):
            DetectionModel(cfg=tampered["model_yaml"], nc=14, verbose=False)
    assert not marker.exists()


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model_yaml"]["backbone"][0][3].__setitem__(0, 4e9), "within"),
    (lambda c: c["model_yaml"].__setitem__("evil", 1), "keys no YOLO detection model has"),
    (lambda c: c["model_yaml"]["backbone"][0].__setitem__(1, 10_000), "repeats"),
    (lambda c: c.__setitem__("weights_sha256", "0" * 64), "sha256 differs"),
])
def test_oversized_or_foreign_cards_are_refused(tiny_detector, tmp_path, edit, message):
    run = _tampered_run(tiny_detector, tmp_path, edit)
    with pytest.raises(InputError, match=message):
        load_detector(run, device="cpu")


def test_nan_weights_are_refused(tiny_detector, tmp_path):
    from _weights import edit_detector_weights

    run = _tampered_run(tiny_detector, tmp_path, lambda c: None)

    def poison(tensor):
        tensor.view(-1)[0] = float("nan")
        return tensor

    edit_detector_weights(run / "weights", poison)
    with pytest.raises(InputError, match="NaN or infinite"):
        load_detector(run, device="cpu")


def test_starting_from_a_pt_warns_that_it_is_a_pickle(tmp_path):
    from hybridcxr.detect.train import _model_source

    pt = tmp_path / "start.pt"
    pt.write_bytes(b"not really")
    with pytest.warns(UserWarning, match="a .pt file is a pickle"):
        assert _model_source(str(pt)) == str(pt)
