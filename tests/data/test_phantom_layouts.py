"""Phantoms in each dataset's own layout read back by that dataset's adapter: counts, labels, splits, ages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from hybridcxr.data.phantom import make_phantom_dataset
from hybridcxr.data.phantom_layouts import LAYOUTS, LayoutSummary, make_layout_dataset
from hybridcxr.data.sources import load_source
from hybridcxr.data.sources.pneumonia import patient_of
from hybridcxr.errors import InputError
from hybridcxr.findings import NIH14, VINDR_CXR, VINDR_PCXR, VINDR_PCXR_LESIONS

N, SEED, SIZE = 12, 11, (192, 160)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LayoutSummary]:
    base = tmp_path_factory.mktemp("layouts")
    return {layout: make_layout_dataset(base / layout, layout, n=N, seed=SEED, size=SIZE) for layout in LAYOUTS}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_reads_back_with_its_adapter(written: dict[str, LayoutSummary], layout: str) -> None:
    summary = written[layout]
    tables = load_source(summary.source, summary.root)
    studies = tables.studies
    assert len(studies) == N == summary.n_images
    assert studies["path"].notna().all()
    assert studies["split"].value_counts().to_dict() == {k: v for k, v in summary.splits.items() if v}
    for finding in tables.findings:
        assert int(studies[finding].sum()) == summary.positives.get(finding, 0), finding
    assert summary.prepare_command == f"hybridcxr prepare {LAYOUTS[layout]} --root {summary.root} --out <PREPARED>"
    assert "SYNTHETIC PHANTOM" in (summary.root / "README.txt").read_text()
    assert not list(summary.root.parent.glob(".phantom-staging-*")), "the staging folder is removed"


def test_kaggle_layout_carries_exactly_the_physionet_labels_and_boxes(written, tmp_path: Path) -> None:
    kaggle = written["vindr-cxr-kaggle"]
    table = pd.read_csv(kaggle.root / "train.csv")
    assert list(table.columns) == ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    assert set(table.loc[table["class_name"] == "No finding", "class_id"]) <= {14}
    assert table.loc[table["class_name"] == "No finding", "x_min"].isna().all()
    assert not (kaggle.root / "annotations").exists() and not (kaggle.root / "test").exists()
    # the same phantoms in the PhysioNet layout (every image a training image, as in the Kaggle table)
    make_phantom_dataset(tmp_path / "physionet", N, seed=SEED, size=SIZE, test_fraction=0.0)
    a = load_source("vindr-cxr", kaggle.root, layout="kaggle")
    # (its empty image_labels_test.csv is refused by the adapter, so the training table is named)
    b = load_source("vindr-cxr", tmp_path / "physionet", layout="physionet",
                    labels=[tmp_path / "physionet" / "annotations" / "image_labels_train.csv"])
    columns = ["image_id", "patient_id", "age_years", "sex", "split", *a.findings]
    pd.testing.assert_frame_equal(a.studies[columns].sort_values("image_id").reset_index(drop=True),
                                  b.studies[columns].sort_values("image_id").reset_index(drop=True))
    key = ["image_id", "reader", "finding", "x_min"]
    pd.testing.assert_frame_equal(a.boxes.sort_values(key).reset_index(drop=True),
                                  b.boxes.sort_values(key).reset_index(drop=True))


def test_pcxr_has_one_reader_and_ages_in_months(written) -> None:
    root = written["vindr-pcxr"].root
    labels = pd.concat([pd.read_csv(root / f"image_labels_{s}.csv") for s in ("train", "test")])
    assert list(labels.columns) == ["image_id", "rad_ID", *VINDR_PCXR, "No finding"]
    assert labels["image_id"].is_unique  # one radiologist per image, as in VinDr-PCXR
    assert (labels[[*VINDR_PCXR, "No finding"]].sum(axis=1) >= 1).all()
    studies = load_source("vindr-pcxr", root).studies
    months = studies["age_years"] * 12
    assert ((months > 0) & (months < 120)).all(), studies["age_years"].tolist()
    np.testing.assert_allclose(months, np.round(months), atol=1e-6)
    lesions = load_source("vindr-pcxr", root, findings="lesions")
    assert lesions.findings == VINDR_PCXR_LESIONS and len(lesions.findings) == 36
    names = set(lesions.boxes["finding"])  # the phantom's five findings under the dataset's lesion names
    assert len(lesions.boxes) and "Other nodule/mass" in names and names <= set(VINDR_PCXR_LESIONS)
    adult = load_source("vindr-pcxr", root, findings="lesions-adult")
    assert adult.findings == VINDR_CXR and "Nodule/Mass" in set(adult.boxes["finding"])


def test_nih_pngs_tables_official_split_and_boxes(written) -> None:
    summary = written["nih"]
    root = summary.root
    pngs = sorted((root / "images_001" / "images").glob("*.png"))
    assert len(pngs) == N
    with Image.open(pngs[0]) as im:
        assert im.mode == "L" and im.size == (1024, 1024)
    entry = pd.read_csv(root / "Data_Entry_2017.csv")
    assert entry["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert set(entry["OriginalImage[Width"]) == {SIZE[1]} and set(entry["Height]"]) == {SIZE[0]}
    test_list = (root / "test_list.txt").read_text().split()
    tables = load_source("nih", root)
    studies = tables.studies.set_index("image_id")
    assert sorted(studies.index[studies["split"] == "test"] + ".png") == sorted(test_list)
    assert set(tables.findings) == set(NIH14)
    assert len(tables.boxes) and set(tables.boxes["image_id"] + ".png") <= set(test_list)
    assert (tables.boxes[["x_max", "y_max"]] <= 1024).all().all()
    for patient, group in studies.groupby("patient_id"):  # a patient's images are follow-ups 000, 001, ...
        assert sorted(group.index.str[-3:].astype(int)) == list(range(len(group)))
        assert group.index.str[:8].unique().tolist() == [patient]


def test_pneumonia_jpeg_folders_follow_consolidation(written, tmp_path: Path) -> None:
    summary = written["pneumonia"]
    files = sorted(summary.root.rglob("*.jpeg"))
    assert len(files) == N and {f.parent.name for f in files} <= {"NORMAL", "PNEUMONIA"}
    assert {f.parent.parent.name for f in files} == {"train", "val", "test"}
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and im.mode == "L" and im.size == (SIZE[1], SIZE[0])
    assert all(patient_of(f.stem)[0] is not None for f in files), "every name follows the Kaggle patterns"
    truth = make_phantom_dataset(tmp_path / "again", N, seed=SEED, size=SIZE)
    sick = sum("Consolidation" in image.findings for image in truth.images)
    assert len(list(summary.root.rglob("PNEUMONIA/*.jpeg"))) == sick == summary.positives["Pneumonia"]
    studies = load_source("pneumonia", summary.root).studies
    assert studies.groupby("patient_id")["split"].nunique().max() == 1  # a patient's films share one split


def test_default_and_explicit_vindr_cxr_layouts_are_byte_identical(tmp_path: Path) -> None:
    from hybridcxr.cli import app

    runner = CliRunner()
    for folder, extra in (("default", []), ("explicit", ["--layout", "vindr-cxr"])):
        result = runner.invoke(app, ["demo-data", str(tmp_path / folder), "--n", "4", "--seed", "2", *extra])
        assert result.exit_code == 0, result.output
        assert f"hybridcxr prepare vindr-cxr --root {tmp_path / folder}" in result.output
    files = {f.relative_to(tmp_path / "default") for f in (tmp_path / "default").rglob("*") if f.is_file()}
    assert files == {f.relative_to(tmp_path / "explicit") for f in (tmp_path / "explicit").rglob("*") if f.is_file()}
    assert any(f.suffix == ".dicom" for f in files)
    for name in files:
        assert (tmp_path / "default" / name).read_bytes() == (tmp_path / "explicit" / name).read_bytes(), name


def test_cli_layout_prints_its_prepare_command_and_refuses_unknown(tmp_path: Path) -> None:
    from hybridcxr.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["demo-data", str(tmp_path / "p"), "--n", "4", "--layout", "pneumonia"])
    assert result.exit_code == 0, result.output
    assert f"hybridcxr prepare pneumonia --root {tmp_path / 'p'} --out <PREPARED>" in result.output
    result = runner.invoke(app, ["demo-data", str(tmp_path / "q"), "--layout", "mimic"])
    assert result.exit_code == 2 and "vindr-cxr-kaggle" in result.output


def test_rewriting_a_phantom_folder_replaces_the_earlier_layout(tmp_path: Path) -> None:
    make_layout_dataset(tmp_path / "x", "nih", n=4, seed=1, size=SIZE)
    make_layout_dataset(tmp_path / "x", "pneumonia", n=4, seed=1, size=SIZE)
    assert not (tmp_path / "x" / "Data_Entry_2017.csv").exists()
    assert len(load_source("pneumonia", tmp_path / "x").studies) == 4
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a phantom")
    with pytest.raises(InputError, match="not empty"):
        make_layout_dataset(tmp_path / "mine", "nih", n=2)
    with pytest.raises(InputError, match="unknown phantom layout"):
        make_layout_dataset(tmp_path / "y", "mimic", n=2)
