"""Fusion head: config checks, demographic encoding, forward pass, safetensors + JSON checkpoints."""

from __future__ import annotations

import json
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import hybridcxr
from hybridcxr.classify.fusion import (
    CARD_FILE,
    GROUPS,
    WEIGHTS_FILE,
    FusionConfig,
    FusionHead,
    assemble_inputs,
    checkpoint_paths,
    encode_demographics,
    feature_stats,
    load_checkpoint,
    save_checkpoint,
)
from hybridcxr.errors import DataWarning, InputError

FINDINGS = ("Aortic enlargement", "Cardiomegaly", "Pleural effusion")
N = 12


@pytest.fixture(scope="module")
def batch() -> dict[str, object]:
    """Features of 12 images: detector (16-d, far from standardised), CNN (8-d), ages and sexes with gaps."""
    rng = np.random.default_rng(0)
    ages: list[object] = [float(a) for a in rng.uniform(20, 90, N)]
    ages[3], ages[7] = None, float("nan")
    return {
        "yolo": (rng.normal(5.0, 3.0, (N, 16))).astype(np.float32),
        "cnn": rng.normal(0.0, 0.5, (N, 8)).astype(np.float32),
        "lungs": np.c_[rng.uniform(0.1, 0.3, (N, 5)), rng.integers(0, 2, (N, 1))].astype(np.float32),
        "age_years": ages,
        "sex": ["M", "F", None, "F", "M", "O", "F", "M", "f", None, "M", "F"],
    }


def _head(batch: dict[str, object], groups: tuple[str, ...], **kwargs: object) -> FusionHead:
    config = FusionConfig.fit(FINDINGS, {g: batch[g] for g in ("yolo", "cnn", "lungs")},  # type: ignore[misc]
                              age_years=batch["age_years"], groups=groups, **kwargs)  # type: ignore[arg-type]
    torch.manual_seed(len(groups))
    return FusionHead(config).eval()


def _inputs(head: FusionHead, batch: dict[str, object]) -> dict[str, torch.Tensor]:
    return assemble_inputs(head.config, yolo=batch.get("yolo"), cnn=batch.get("cnn"),  # type: ignore[arg-type]
                           lungs=batch.get("lungs"),  # type: ignore[arg-type]
                           age_years=batch["age_years"], sex=batch["sex"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- config


def test_config_fills_fixed_dims_and_orders_groups() -> None:
    config = FusionConfig(findings=FINDINGS, groups=("sex", "cnn", "age"), dims={"cnn": 512, "yolo": 99})
    assert config.groups == ("cnn", "age", "sex")
    assert config.dims == {"cnn": 512, "age": 2, "sex": 3} and config.input_dim == 517
    assert config.feature_mean == {"cnn": [0.0] * 512} and config.feature_std == {"cnn": [1.0] * 512}
    assert FusionConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"groups": ()}, "non-empty subset"),
    ({"groups": ("cnn", "text")}, "non-empty subset"),
    ({"groups": ("cnn", "cnn")}, "without repeats"),
    ({"groups": ("cnn",), "dims": {}}, r"dims\['cnn'\]"),
    ({"groups": ("age",), "dims": {"age": 1}}, "has 2 inputs"),
    ({"groups": ("sex",), "dropout": 1.0}, "dropout"),
    ({"groups": ("sex",), "hidden": (0,)}, "hidden"),
    ({"groups": ("age",), "age_std": 0.0}, "age_std"),
    ({"groups": ("cnn",), "dims": {"cnn": 4}, "feature_mean": {"cnn": [0.0] * 3}}, "4 finite numbers"),
    ({"groups": ("cnn",), "dims": {"cnn": 2}, "feature_std": {"cnn": [1.0, 0.0]}}, "positive"),
    ({"groups": ("sex",), "findings": ()}, "findings"),
])
def test_config_refuses_inconsistent_settings(kwargs: dict[str, object], match: str) -> None:
    kwargs = {"findings": FINDINGS, **kwargs}
    with pytest.raises(ValueError, match=match):
        FusionConfig(**kwargs)  # type: ignore[arg-type]


def test_fit_takes_normalisation_from_training_data(batch: dict[str, object]) -> None:
    yolo = np.asarray(batch["yolo"]).copy()
    yolo[:, 0] = 3.0  # a constant feature: std 1, not 0
    config = FusionConfig.fit(FINDINGS, {"yolo": yolo, "cnn": batch["cnn"]}, age_years=batch["age_years"],
                              hidden=(32,), dropout=0.1)
    assert config.dims == {"yolo": 16, "cnn": 8, "age": 2, "sex": 3}
    assert np.allclose(config.feature_mean["yolo"], yolo.mean(axis=0))
    assert config.feature_std["yolo"][0] == 1.0 and np.allclose(config.feature_std["yolo"][1:], yolo[:, 1:].std(axis=0))
    known = [a for a in batch["age_years"] if a is not None and not np.isnan(a)]  # type: ignore[union-attr]
    assert config.age_mean == pytest.approx(np.mean(known)) and config.age_std == pytest.approx(np.std(known))
    assert config.hidden == (32,) and config.dropout == 0.1
    assert feature_stats(np.ones((3, 2))) == ([1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="no 'cnn' features"):
        FusionConfig.fit(FINDINGS, {"yolo": yolo}, groups=("yolo", "cnn"))


# ------------------------------------------------------------------------------------------ demographics


def test_encode_demographics_handles_missing_and_odd_values() -> None:
    ages = [70, None, float("nan"), "63", np.float32("nan"), pd.NA, 30.5, ""]
    sexes = ["M", "F", None, "x", "female", float("nan"), "O", " m "]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # empty values are unknown, not bad: no warning
        age, sex = encode_demographics(ages, sexes, age_mean=50.0, age_std=10.0)
    assert age.dtype == np.float32 and sex.dtype == np.float32
    # known ages standardised with flag 0; None, NaN, pd.NA and "" give [0, 1]; numeric text is a number
    assert np.allclose(age, [[2, 0], [0, 1], [0, 1], [1.3, 0], [0, 1], [0, 1], [-1.95, 0], [0, 1]])
    assert sex.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]]
    assert (sex.sum(axis=1) == 1).all()


def test_unusable_ages_warn_once_and_count_as_unknown() -> None:
    with pytest.warns(DataWarning, match=r"3 age value\(s\).*'081Y'") as record:
        age, _ = encode_demographics(["081Y", -5, 200, 40], [None] * 4, age_mean=40.0, age_std=5.0)
    assert len(record) == 1
    assert age.tolist() == [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="3 ages but 2 sexes"):
        encode_demographics([1, 2, 3], ["M", "F"], 0.0, 1.0)
    with pytest.raises(ValueError, match="age_std"):
        encode_demographics([1], ["M"], 0.0, 0.0)
    one_age, one_sex = encode_demographics(45, "F", 45.0, 10.0)  # a single image
    assert one_age.tolist() == [[0.0, 0.0]] and one_sex.tolist() == [[0.0, 1.0, 0.0]]


# ---------------------------------------------------------------------------------------------- forward


def test_forward_standardises_concatenates_and_ignores_unused_groups(batch: dict[str, object]) -> None:
    head = _head(batch, GROUPS, hidden=(32, 16), layer_norm=True)
    inputs = _inputs(head, batch)
    logits = head(inputs)
    assert logits.shape == (N, len(FINDINGS)) and torch.isfinite(logits).all()
    c = head.config
    expected_input = torch.cat([
        (inputs["yolo"] - torch.tensor(c.feature_mean["yolo"])) / torch.tensor(c.feature_std["yolo"]),
        (inputs["cnn"] - torch.tensor(c.feature_mean["cnn"])) / torch.tensor(c.feature_std["cnn"]),
        (inputs["lungs"] - torch.tensor(c.feature_mean["lungs"])) / torch.tensor(c.feature_std["lungs"]),
        inputs["age"], inputs["sex"]], dim=1).float()
    assert torch.allclose(logits, head.mlp(expected_input), atol=1e-6)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in head.mlp) == 2
    # a head of a subset reads only its groups from the same dict
    small = _head(batch, ("cnn", "sex"), hidden=())
    assert small(inputs).shape == (N, len(FINDINGS)) and len(small.mlp) == 1
    assert small.mlp[0].in_features == 8 + 3


def test_forward_refuses_missing_or_misshapen_groups(batch: dict[str, object]) -> None:
    head = _head(batch, ("yolo", "age"))
    inputs = _inputs(head, batch)
    with pytest.raises(ValueError, match="missing feature group 'age'"):
        head({"yolo": inputs["yolo"]})
    with pytest.raises(ValueError, match=r"'yolo' must be \(N, 16\)"):
        head({**inputs, "yolo": inputs["yolo"][:, :5]})
    with pytest.raises(ValueError, match="rows"):
        head({**inputs, "age": inputs["age"][:3]})
    with pytest.raises(ValueError, match="pass age_years and sex"):
        assemble_inputs(head.config, yolo=batch["yolo"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass cnn="):
        assemble_inputs(FusionConfig(findings=FINDINGS, groups=("cnn",), dims={"cnn": 8}))


# ------------------------------------------------------------------------------------------- checkpoints


def _train_a_little(head: FusionHead, inputs: dict[str, torch.Tensor]) -> None:
    """A few optimiser steps, so the saved weights are not the initial ones."""
    target = torch.from_numpy(np.random.default_rng(1).integers(0, 2, (N, len(FINDINGS))).astype(np.float32))
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-2)
    head.train()
    for _ in range(3):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(head(inputs), target).backward()
        optimiser.step()
    head.eval()


@pytest.mark.parametrize(("groups", "kwargs"), [
    (GROUPS, {"hidden": (32, 16), "layer_norm": True, "dropout": 0.3}),
    (("cnn", "age", "sex"), {"hidden": (8,)}),
    (("yolo",), {"hidden": ()}),
])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path, batch: dict[str, object],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      groups: tuple[str, ...], kwargs: dict[str, object]) -> None:
    head = _head(batch, groups, **kwargs)
    inputs = _inputs(head, batch)
    _train_a_little(head, inputs)
    with torch.inference_mode():
        before = head(inputs)
    thresholds = {f: np.float32(0.25 * (i + 1)) for i, f in enumerate(FINDINGS)}  # numpy values are fine
    folder = save_checkpoint(tmp_path / "run" / "best", head, head.config,
                             card={"thresholds": thresholds, "train_images": np.int64(N)})
    assert folder == tmp_path / "run" / "best"
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, WEIGHTS_FILE]  # no temp files, no pickle

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading a checkpoint must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    loaded, config, card = load_checkpoint(folder)
    assert config == head.config and not loaded.training
    with torch.inference_mode():
        assert torch.equal(loaded(inputs), before)
    assert card["thresholds"] == {f: 0.25 * (i + 1) for i, f in enumerate(FINDINGS)}
    assert card["train_images"] == N
    assert card["findings"] == list(FINDINGS) and card["groups"] == list(config.groups)
    assert card["dims"] == config.dims and card["hidden"] == list(config.hidden)
    assert card["versions"]["torch"] == torch.__version__ and card["versions"]["hybridcxr"] == hybridcxr.__version__
    assert card["normalisation"]["age"]["mean"] == config.age_mean
    # the same checkpoint loads from either of its files too
    assert torch.equal(load_checkpoint(folder / WEIGHTS_FILE)[0](inputs), before)
    assert torch.equal(load_checkpoint(folder / CARD_FILE)[0](inputs), before)


def test_weights_file_is_safetensors_not_pickle(tmp_path: Path, batch: dict[str, object]) -> None:
    head = _head(batch, ("yolo", "sex"))
    save_checkpoint(tmp_path, head, head.config)
    raw = (tmp_path / WEIGHTS_FILE).read_bytes()
    assert not raw.startswith((b"PK", b"\x80"))  # neither torch.save's zip nor a bare pickle
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert header["__metadata__"] == {"kind": "hybridcxr fusion head"}
    assert header["yolo_mean"]["dtype"] == "F32" and header["yolo_mean"]["shape"] == [16]
    assert set(header) - {"__metadata__"} == set(head.state_dict())
    card = json.loads((tmp_path / CARD_FILE).read_text())
    assert card["kind"] == "hybridcxr fusion head" and len(card["weights_sha256"]) == 64
    assert card["normalisation"]["features"]["yolo"]["mean"] == head.config.feature_mean["yolo"]


def _no_card(folder: Path, good: Path, other: Path) -> Path:
    (folder / CARD_FILE).unlink()
    return folder / CARD_FILE


def _bad_json(folder: Path, good: Path, other: Path) -> Path:
    (folder / CARD_FILE).write_text("{not json")
    return folder / CARD_FILE


def _wrong_kind(folder: Path, good: Path, other: Path) -> Path:
    (folder / CARD_FILE).write_text(json.dumps({"kind": "hybridcxr detector"}))
    return folder / CARD_FILE


def _incomplete(folder: Path, good: Path, other: Path) -> Path:
    card = json.loads((good / CARD_FILE).read_text())
    del card["dims"]
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder / CARD_FILE


def _swapped(folder: Path, good: Path, other: Path) -> Path:  # weights of another save
    (folder / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    return folder / WEIGHTS_FILE


def _swapped_hand_edited(folder: Path, good: Path, other: Path) -> Path:
    _swapped(folder, good, other)
    card = json.loads((good / CARD_FILE).read_text())
    del card["weights_sha256"]  # a hand-edited card: the tensors themselves must then disagree
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder / WEIGHTS_FILE


def _truncated(folder: Path, good: Path, other: Path) -> Path:
    (folder / WEIGHTS_FILE).write_bytes((good / WEIGHTS_FILE).read_bytes()[:100])
    card = json.loads((good / CARD_FILE).read_text())
    del card["weights_sha256"]
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder / WEIGHTS_FILE


def _renormalised(folder: Path, good: Path, other: Path) -> Path:
    card = json.loads((good / CARD_FILE).read_text())
    card["normalisation"]["features"]["cnn"]["mean"][0] += 1.0
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder / CARD_FILE


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory, batch: dict[str, object]) -> tuple[Path, Path]:
    """A good checkpoint and one of another head, to break copies of."""
    root = tmp_path_factory.mktemp("checkpoints")
    head = _head(batch, ("cnn", "age"))
    other = _head(batch, ("yolo", "age"))
    return save_checkpoint(root / "good", head, head.config), save_checkpoint(root / "other", other, other.config)


@pytest.mark.parametrize(("breaker", "match"), [
    (_no_card, "missing"),
    (_bad_json, "not readable JSON"),
    (_wrong_kind, "not a fusion head card"),
    (_incomplete, "invalid card"),
    (_swapped, "different saves"),
    (_swapped_hand_edited, "does not match card.json"),
    (_truncated, "not a readable safetensors file"),
    (_renormalised, "'cnn' normalisation differs"),
])
def test_broken_checkpoints_raise_input_errors_naming_the_file(tmp_path: Path, saved_pair: tuple[Path, Path],
                                                               breaker, match: str) -> None:
    good, other = saved_pair
    folder = tmp_path / breaker.__name__.strip("_")
    folder.mkdir()
    for file in (WEIGHTS_FILE, CARD_FILE):
        (folder / file).write_bytes((good / file).read_bytes())
    named = breaker(folder, good, other)
    with pytest.raises(InputError, match=match) as err:
        load_checkpoint(folder)
    if breaker is not _wrong_kind:
        assert err.value.path == str(named)


def test_missing_or_foreign_checkpoint_paths_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing") as err:
        load_checkpoint(tmp_path / "absent")
    assert err.value.path == str(tmp_path / "absent" / WEIGHTS_FILE)
    with pytest.raises(InputError, match="folder"):
        load_checkpoint(tmp_path / "head.pt")


def test_save_refuses_clashing_card_keys_and_foreign_configs(tmp_path: Path, batch: dict[str, object]) -> None:
    head = _head(batch, ("cnn",))
    with pytest.raises(ValueError, match="findings"):
        save_checkpoint(tmp_path, head, head.config, card={"findings": ["x"]})
    with pytest.raises(ValueError, match="config differs"):
        save_checkpoint(tmp_path, head, _head(batch, ("yolo",)).config)
    assert not any(tmp_path.iterdir())  # nothing written
    assert checkpoint_paths(tmp_path / "run" / WEIGHTS_FILE) == (tmp_path / "run" / WEIGHTS_FILE,
                                                                 tmp_path / "run" / CARD_FILE)
    save_checkpoint(tmp_path / "run" / WEIGHTS_FILE, head)  # config defaults to the head's
    assert load_checkpoint(tmp_path / "run")[1] == head.config


@pytest.mark.parametrize("key, value", [("hidden", [4_000_000_000]), ("hidden", [4e9]), ("hidden", [0]),
                                        ("dims", {"cnn": 10**9})])
def test_a_card_asking_for_absurd_sizes_is_refused_before_allocating(tmp_path: Path, batch: dict[str, object],
                                                                      key: str, value: object) -> None:
    head = _head(batch, ("cnn", "age"))
    folder = save_checkpoint(tmp_path / "run", head, head.config)
    card = json.loads((folder / CARD_FILE).read_text())
    card[key] = value if key == "hidden" else {**card["dims"], **value}
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(InputError, match="invalid card.*between 1 and 65536"):
        load_checkpoint(folder)
