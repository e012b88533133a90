"""The command line as a user meets it: help, exit codes, messages that name the file and the problem."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hybridcxr.cli import app

runner = CliRunner()


def test_help_lists_every_command_with_one_line():
    result = subprocess.run([sys.executable, "-m", "hybridcxr.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("prepare", "demo-data"):
        assert command in result.stdout
    from typer.main import get_command

    group = get_command(app)
    for name, command in group.commands.items():
        help_line = command.get_short_help_str(limit=200)
        assert help_line and "\n" not in help_line, name


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "hybridcxr" in result.stdout


def test_prepare_unknown_source_names_the_known_ones(tmp_path):
    result = runner.invoke(app, ["prepare", "mimic", "--root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "mimic" in result.output and "vindr-cxr" in result.output


def test_prepare_missing_tables_names_the_file(tmp_path):
    result = runner.invoke(app, ["prepare", "vindr-cxr", "--root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert str(tmp_path) in result.output


@pytest.mark.parametrize("args", [["--split", "0.5,0.5"], ["--bits", "12"], ["--fusion", "mean"],
                                  ["--findings", "lesions"]])  # --findings is vindr-pcxr's
def test_prepare_bad_options_are_usage_errors(tmp_path, args):
    result = runner.invoke(app, ["prepare", "vindr-cxr", "--root", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2


def test_demo_data_then_prepare(tmp_path):
    result = runner.invoke(app, ["demo-data", str(tmp_path / "ph"), "--n", "10", "--seed", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["prepare", "vindr-cxr", "--root", str(tmp_path / "ph"), "--out",
                                 str(tmp_path / "prep"), "--size", "128", "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Prepared 10 images" in result.output
    assert (tmp_path / "prep" / "data.yaml").is_file()


def test_prepare_findings_names_its_three_views(tmp_path):
    result = runner.invoke(app, ["prepare", "vindr-pcxr", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                                 "--findings", "lesion"])
    assert result.exit_code == 2 and "diagnoses, lesions, lesions-adult" in result.output


@pytest.mark.parametrize("view", ["diagnoses", "lesions", "lesions-adult"])
def test_prepare_findings_views_are_accepted(tmp_path, view):
    result = runner.invoke(app, ["prepare", "vindr-pcxr", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                                 "--findings", view])
    assert result.exit_code == 1 and "image_labels_train.csv" in result.output  # past the check: no tables here


def test_help_keeps_the_bracketed_defaults():
    """Rich reads ``[word]`` as a style tag and drops it: every default in brackets must reach the help text."""
    for command, text in ((["evaluate", "detector"], "[those predicted]"), (["prepare"], "[wbf]"),
                          (["export"], "(default: the detector's prepared"), (["train", "detector"], "[yolov8n.yaml]")):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0 and text in result.output, (command, result.output[-800:])
