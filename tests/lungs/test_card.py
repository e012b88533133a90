"""hybridcxr.lungs.card: a run's card and weights are checked on load; tampering gives a clear InputError."""

from __future__ import annotations

import json
import shutil

import pytest

from hybridcxr.errors import ConfigError, InputError
from hybridcxr.lungs.card import load_network, read_card


@pytest.fixture
def run_copy(tiny_lungs, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(tiny_lungs.folder, folder)
    return folder


def _edit_card(folder, **changes):
    card = json.loads((folder / "lungs.json").read_text())
    card.update(changes)
    (folder / "lungs.json").write_text(json.dumps(card))


def test_good_run_loads(run_copy):
    network, card = load_network(run_copy)
    assert card["imgsz"] == 32 and not network.training
    assert read_card(run_copy / "lungs.safetensors")["kind"] == "hybridcxr-lungs"


def test_absent_weights(run_copy):
    (run_copy / "lungs.safetensors").unlink()
    with pytest.raises(InputError, match="weights file the card names is missing"):
        load_network(run_copy)


def test_tampered_weights(run_copy):
    data = bytearray((run_copy / "lungs.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (run_copy / "lungs.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256 differs"):
        load_network(run_copy)


@pytest.mark.parametrize("changes, message", [
    ({"kind": "hybridcxr-detector"}, "not a lung segmenter card"),
    ({"format": 7}, "card format"),
    ({"imgsz": 33}, "imgsz 33"),
    ({"weights": "../elsewhere.safetensors"}, "beside the card"),
    ({"weights_sha256": "abc"}, "64 lower-case hex"),
    ({"architecture": {"name": "os.system"}}, "architecture must be a mapping"),
])
def test_tampered_card(run_copy, changes, message):
    _edit_card(run_copy, **changes)
    with pytest.raises(InputError, match=message):
        read_card(run_copy)


def test_architecture_outside_the_allow_list(run_copy):
    card = json.loads((run_copy / "lungs.json").read_text())
    for key, value, message in [("channels", [8, 16, 100000], "channels"), ("num_res_units", "2", "num_res_units"),
                                ("norm", "eval('x')", "norm"), ("strides", [1, 1], "strides")]:
        _edit_card(run_copy, architecture={**card["architecture"], key: value})
        with pytest.raises(InputError, match=message):
            read_card(run_copy)


def test_weights_of_another_architecture(run_copy):
    card = json.loads((run_copy / "lungs.json").read_text())
    _edit_card(run_copy, architecture={**card["architecture"], "channels": [8, 16, 64]})
    with pytest.raises(InputError, match="do not fit the card's architecture"):
        load_network(run_copy)


def test_not_a_run_and_not_json(tmp_path):
    with pytest.raises(InputError, match="no lung segmenter card"):
        read_card(tmp_path)
    (tmp_path / "lungs.json").write_text("{not json")
    with pytest.raises(InputError, match="not readable JSON, not a valid lung segmenter card"):
        read_card(tmp_path)


def test_config_rules():
    from hybridcxr.config import load_config

    with pytest.raises(ConfigError, match="imgsz must be"):
        load_config("lungs", overrides={"imgsz": 100})
    with pytest.raises(ConfigError, match="did you mean 'imgsz'"):
        load_config("lungs", overrides={"imgs": 256})
