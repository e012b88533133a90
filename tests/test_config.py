"""Job configs: built and validated once, unknown keys with a did-you-mean, types and choices named by key."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.config import (
    JOBS,
    ClassifierConfig,
    Fusion,
    ensure_config,
    load_config,
    look_up_option,
    parse_overrides,
)
from hybridcxr.errors import ConfigError

runner = CliRunner()


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_loads_its_yaml_into_its_dataclass(job):
    config = load_config(job)
    assert isinstance(config, JOBS[job]) and list(config) == config.keys()


@pytest.mark.parametrize("job, typo, suggestion", [
    ("prepare", "sise", "size"),
    ("detector", "epoch", "epochs"),
    ("detector", "flipl", "fliplr"),
    ("classifier", "lr0", "lr"),
    ("tune", "trails", "trials"),
    ("lungs", "imgsize", "imgsz"),
])
def test_mistyped_key_fails_with_a_suggestion(job, typo, suggestion):
    with pytest.raises(ConfigError, match=rf"unknown key '{typo}' \(did you mean '{suggestion}'\?\)"):
        load_config(job, overrides={typo: 1})


@pytest.mark.parametrize("job, key, value, message", [
    ("prepare", "bits", 12, "bits must be 8 or 16"),
    ("prepare", "fusion", "mean", "fusion 'mean' is not one of wbf, nms, none"),
    ("prepare", "split", [0.5, 0.5], "split must be three fractions"),
    ("prepare", "size", "big", "size must be an integer"),
    ("detector", "epochs", 2.5, "epochs must be an integer"),
    ("detector", "amp", "yes", "amp must be true or false"),
    ("detector", "fliplr", "half", "augment.fliplr must be a number"),
    ("classifier", "loss", "focl", r"loss 'focl' is not one of bce, focal \(did you mean 'focal'\?\)"),
    ("classifier", "hidden", [4e9], r"hidden\[0\] must be an integer"),
    ("classifier", "hidden", [5_000_000], "hidden must be widths between 1 and 65536"),
    ("classifier", "groups", ["cnn", "xray"], "groups must be a non-empty list"),
    ("tune", "pruner", "medain", r"pruner 'medain' is not one of median, hyperband, none \(did you mean 'median'\?\)"),
    ("tune", "trials", "many", "trials must be an integer"),
])
def test_wrong_type_or_choice_fails_naming_the_key(job, key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(job, overrides={key: value})


def test_values_are_typed_once():
    config = load_config("classifier", overrides=parse_overrides(["lr=1e-3", "epochs=5", "loss=focal"]))
    assert config.lr == 1e-3 and isinstance(config.lr, float) and config.epochs == 5
    assert config.loss == "focal" and config.to_dict()["loss"] == "focal" and type(config.to_dict()["loss"]) is str
    assert load_config("detector", overrides={"device": 0}).device == 0


def test_ensure_config_validates_plain_mappings_and_passes_built_ones():
    built = load_config("classifier")
    assert ensure_config("classifier", built) is built
    plain = {**built.to_dict(), "epochs": 3}
    assert isinstance(ensure_config("classifier", plain), ClassifierConfig)
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        ensure_config("classifier", {**built.to_dict(), "epoch": 3})


def test_look_up_option_suggests():
    assert look_up_option("nms", Fusion, "fusion") is Fusion.nms
    with pytest.raises(ConfigError, match="did you mean 'wbf'"):
        look_up_option("wfb", Fusion, "fusion")


def test_cli_rejects_a_mistyped_key_before_any_work(tmp_path):
    """`train classifier ... lr0=1e-3` names the key and suggests lr, before it looks at the data."""
    missing = tmp_path / "nothing-here"
    result = runner.invoke(app, ["train", "classifier", "--data", str(missing), "--detector", str(missing),
                                 "--out", str(tmp_path / "run"), "lr0=1e-3"])
    assert result.exit_code == 2, result.output
    assert "did you mean 'lr'?" in result.output and not (tmp_path / "run").exists()
    result = runner.invoke(app, ["train", "detector", "--data", str(missing), "--out", str(tmp_path / "det"),
                                 "mosaik=0"])
    assert result.exit_code == 2 and "did you mean 'mosaic'?" in result.output, result.output


def test_the_lungs_group_and_crop_follow_the_lung_model():
    from hybridcxr.config import load_config

    assert "lungs" not in load_config("classifier").groups, "no lung model: the default drops the lungs group"
    assert load_config("classifier", overrides={"lungs": "runs/lungs"}).groups == ["yolo", "cnn", "lungs", "age", "sex"]
    with pytest.raises(ConfigError, match="crop=lungs needs a lung model"):
        load_config("classifier", overrides={"crop": "lungs"})
    with pytest.raises(ConfigError, match="the lungs group needs a lung model"):
        load_config("classifier", overrides={"groups": ["lungs"]})
    with pytest.raises(ConfigError, match="use crop=none"):
        load_config("classifier", overrides={"lungs": "runs/lungs", "crop": "lungs", "end_to_end": True})
    with pytest.raises(ConfigError, match="crop_margin"):
        load_config("classifier", overrides={"crop_margin": 0.9})


def test_the_config_rules_of_augmentation():
    from hybridcxr.config import load_config

    config = load_config("classifier")
    assert config.hflip is False and config.augment_views == 0 and config.oversample == "none"
    with pytest.raises(ConfigError, match="set augment_views to 1 or more"):
        load_config("classifier", overrides={"oversample": "rare"})
    with pytest.raises(ConfigError, match="end_to_end=true augments the training images every epoch"):
        load_config("classifier", overrides={"end_to_end": True, "augment_views": 2})
    with pytest.raises(ConfigError, match="aug_rotate must be between 0 and 30 degrees"):
        load_config("classifier", overrides={"aug_rotate": 45})
    with pytest.raises(ConfigError, match="augment_views must be between 0 and 64"):
        load_config("classifier", overrides={"augment_views": -1})
    with pytest.raises(ConfigError, match="oversample 'often' is not one of none, rare"):
        load_config("classifier", overrides={"augment_views": 1, "oversample": "often"})
