"""``hybridcxr evaluate detector``: score detect's outputs against a prepared dataset or a box table."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.detect.evaluate import read_predictions, read_truth
from hybridcxr.errors import DatasetError, InputError

runner = CliRunner()


def test_evaluate_detector_cli(run, tmp_path):
    out, _ = run
    detector_dir = tmp_path / "det"
    test_images = out / "prepared" / "images" / "test"
    result = runner.invoke(app, ["detect", str(test_images), "--weights", str(out / "run"), "--out", str(detector_dir),
                                 "--conf", "0.001", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "detector", "--pred", str(detector_dir), "--truth", str(out / "prepared"),
                                 "--split", "test", "--report", str(tmp_path / "report.md")])
    assert result.exit_code == 0, result.output
    assert "mAP@0.4" in result.output and "split 'test'" in result.output
    assert "| Sensitivity |" in (tmp_path / "report.md").read_text()
    result = runner.invoke(app, ["evaluate", "detector", "--pred", str(detector_dir / "submission.csv"),
                                 "--truth", str(out / "prepared" / "boxes.csv")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("make", "error", "problem"), [
    (lambda d: d / "nowhere", InputError, "no predictions here"),
    (lambda d: d, InputError, "no predictions here"),  # a folder without detections.csv
    (lambda d: _write(d / "p.csv", "image_id,finding,score\na,Nodule/Mass,0.5\n"), DatasetError,
     r"lacks columns \['x_max', 'x_min', 'y_max', 'y_min'\]"),
])
def test_unusable_predictions_are_refused_naming_the_file(tmp_path, make, error, problem):
    path = make(tmp_path)
    with pytest.raises(error, match=problem) as err:
        read_predictions(path)
    assert err.value.path.startswith(str(tmp_path))


def test_a_split_needs_a_prepared_folder_with_that_split(run, tmp_path):
    out, _ = run
    boxes = out / "prepared" / "boxes.csv"
    with pytest.raises(InputError, match="--split needs a prepared folder"):
        read_truth(boxes, "test")
    with pytest.raises(DatasetError, match=r"no images in split 'tset'; splits here: \['test', 'train', 'val'\]"):
        read_truth(out / "prepared", "tset")
    with pytest.raises(DatasetError, match="missing: is this a folder made by `hybridcxr prepare`?") as err:
        read_truth(tmp_path, "test")
    assert err.value.path == str(tmp_path / "boxes.csv")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
