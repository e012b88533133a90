"""hybridcxr.lungs.cli: `train lungs` and `segment` through a typer app that calls ``register`` (as hybridcxr/cli.py
does), on synthetic masks and on real NIH PNGs and DICOMs of ../shared/data."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import typer
from _dicom3tools import dciodvfy_errors
from PIL import Image
from typer.testing import CliRunner

from hybridcxr.io import read_radiograph
from hybridcxr.lungs.cli import register

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    main = typer.Typer()
    train = typer.Typer()
    main.add_typer(train, name="train")
    register(main, train)
    return main


def test_train_lungs_command(app, mask_dataset, tmp_path):
    result = runner.invoke(app, ["train", "lungs", "--data", str(mask_dataset), "--out", str(tmp_path / "run"),
                                 "--imgsz", "32", "--epochs", "1", "channels=[8,16,32]", "threads=1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Lung segmenter trained" in result.output and (tmp_path / "run" / "lungs.json").is_file()


def test_train_lungs_usage_and_input_errors(app, mask_dataset, tmp_path):
    bad_key = runner.invoke(app, ["train", "lungs", "--data", str(mask_dataset), "--out", str(tmp_path / "r"),
                                  "imgs=64"])
    assert bad_key.exit_code == 2 and "did you mean 'imgsz'" in bad_key.output
    no_data = runner.invoke(app, ["train", "lungs", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "r")])
    assert no_data.exit_code == 1 and "images/ folder" in no_data.output


def test_segment_bad_model_exits_1(app, tmp_path, mask_dataset):
    result = runner.invoke(app, ["segment", str(mask_dataset / "images"), "--model", str(tmp_path), "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 1 and "no lung segmenter card" in result.output


@pytest.fixture(scope="module")
def segmented(app, real_lungs, shared_data, tmp_path_factory):
    """`segment --overlay --dicom` on 3 NIH PNGs, the udacity DICOMs (one a CT), the SIIM DICOM and a corrupt file."""
    inputs = tmp_path_factory.mktemp("inputs")
    for name in ("00000404_000.png", "00001369_000.png", "00002578_000.png"):  # 2 of them RGBA
        shutil.copy(shared_data / "nih" / "images" / name, inputs / name)
    for path in sorted((shared_data / "dicom" / "nih-udacity").glob("test[1-5].dcm")):
        shutil.copy(path, inputs / path.name)
    siim = next(p for p in (shared_data / "dicom" / "siim-acr").glob("1.*.dcm"))
    shutil.copy(siim, inputs / "siim.dcm")
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    out = tmp_path_factory.mktemp("segmented")
    result = runner.invoke(app, ["segment", str(inputs), "--model", str(real_lungs.folder), "--out", str(out),
                                 "--overlay", "--dicom", "--no-progress"])
    return inputs, out, result


def test_segment_skips_bad_files_and_exits_3(segmented):
    _, out, result = segmented
    assert result.exit_code == 3, result.output
    assert "corrupt.png" in result.output and "test5.dcm" in result.output  # corrupt, and a CT
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(p.rsplit("/", 1)[-1] for p in skipped["path"]) == ["corrupt.png", "test5.dcm"]


def test_segment_masks_at_original_size(segmented):
    inputs, out, _ = segmented
    table = pd.read_csv(out / "lungs.csv")
    assert len(table) == 8
    for row in table.itertuples():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # test4's body part
            shape = read_radiograph(row.path).pixels.shape
        with Image.open(out / "masks" / f"{row.image_id}.png") as mask:
            values = np.asarray(mask)
        assert values.shape == shape and set(np.unique(values)) <= {0, 255}
        assert (out / "overlays" / f"{row.image_id}.png").is_file()
    assert {"right_area_px", "left_area_cm2", "ctr_estimate", "quality", "box_x_min"} <= set(table.columns)


def test_segment_json_and_quality(segmented):
    _, out, _ = segmented
    png = json.loads((out / "json" / "00000404_000.json").read_text())
    assert png["dicom_segmentation"].startswith("not written: the source is not a DICOM")
    assert png["width"] == 1024 and "not a heart segmentation" in png["ctr_estimate_note"]
    assert (png["measurements"] is None) == (png["quality"] != "ok")


def test_segment_dicom_segmentation_reads_back(segmented, real_lungs):
    import highdicom as hd
    import pydicom

    inputs, out, _ = segmented
    written = 0
    for name in ("test1", "siim"):
        record = json.loads((out / "json" / f"{name}.json").read_text())
        source = pydicom.dcmread(inputs / f"{name}.dcm", stop_before_pixels=True)
        if not record["dicom_segmentation"].endswith(".dcm"):
            assert record["dicom_segmentation"] == "not written: no lung was found: there is nothing to segment"
            continue
        seg = hd.seg.segread(record["dicom_segmentation"])
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.SeriesInstanceUID != source.SeriesInstanceUID
        assert source.SOPInstanceUID in [uids[2] for uids in seg.get_source_image_uids()]
        assert str(seg.PatientName) == str(source.get("PatientName", "")) and seg.number_of_segments >= 1
        assert dciodvfy_errors(record["dicom_segmentation"]) == []
        from hybridcxr.dicom_out.identity import is_ours
        from hybridcxr.lungs.card import read_card

        assert is_ours(seg, str(read_card(real_lungs.folder)["weights_sha256"])[:16]), "the lung model's version"
        labels = [s.SegmentLabel for s in seg.SegmentSequence]
        assert set(labels) <= {"Right lung", "Left lung"}
        written += 1
    assert written, "no DICOM Segmentation was written"
