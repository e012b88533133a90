"""prepare --split-tables: the user's own train/val/test tables honoured, refused when they leak a patient."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.data.phantom import make_phantom_dataset
from hybridcxr.data.prepare import PrepareOptions, prepare
from hybridcxr.data.sources import load_source
from hybridcxr.data.split_tables import image_column, table_splits
from hybridcxr.data.splits import LeakageError
from hybridcxr.errors import DatasetError


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(root, n=24, seed=4, size=(192, 160), workers=1, progress=False)
    return root


def _tables(phantom: Path, folder: Path, parts: int = 3, leak: bool = False) -> list[Path]:
    """Course-style tables (Image, PatientId) dividing the phantom's patients in order; ``leak`` puts one
    image of the first training patient into the last table."""
    studies = load_source("vindr-cxr", phantom).studies
    patients = sorted(studies["patient_id"].astype(str).unique())
    cut = [patients[: len(patients) // 2], patients[len(patients) // 2: 3 * len(patients) // 4], patients[3 * len(patients) // 4:]]
    if parts == 2:
        cut = [cut[0] + cut[1], cut[2]]
    paths = []
    for k, chosen in enumerate(cut):
        rows = studies[studies["patient_id"].astype(str).isin(chosen)]
        table = pd.DataFrame({"Image": rows["image_id"] + ".png", "PatientId": rows["patient_id"]})
        if leak and k == len(cut) - 1:
            first = studies[studies["patient_id"].astype(str) == cut[0][0]].iloc[:1]
            table = pd.concat([table, pd.DataFrame({"Image": first["image_id"] + ".png",
                                                    "PatientId": first["patient_id"]})])
        paths.append(folder / f"{['train-small', 'valid-small', 'test'][k if parts == 3 else (0, 2)[k]]}.csv")
        table.to_csv(paths[-1], index=False)
    return paths


def test_three_tables_give_the_splits_exactly(phantom, tmp_path):
    paths = _tables(phantom, tmp_path)
    result = prepare(load_source("vindr-cxr", phantom), tmp_path / "out",
                     PrepareOptions(size=128, workers=0, progress=False, split_tables=paths))
    got = result.manifest.set_index("image_id")["split"]
    for path, split in zip(paths, ("train", "val", "test")):
        ids = pd.read_csv(path)["Image"].str.replace(".png", "", regex=False)
        assert (got.loc[ids] == split).all(), path
    text = str(result)
    assert "class frequency in train" in text and "weight" in text


def test_two_tables_carve_validation_from_training_patients(phantom, tmp_path):
    train, test = _tables(phantom, tmp_path, parts=2)
    result = prepare(load_source("vindr-cxr", phantom), tmp_path / "out",
                     PrepareOptions(size=128, workers=0, progress=False, split_tables=[train, test]))
    manifest = result.manifest
    test_ids = set(pd.read_csv(test)["Image"].str.replace(".png", "", regex=False))
    assert set(manifest.loc[manifest["split"] == "test", "image_id"]) == test_ids
    assert set(manifest["split"]) == {"train", "val", "test"}
    by_patient = manifest.groupby("patient_id")["split"].nunique()
    assert (by_patient == 1).all()


def test_a_planted_leak_is_refused_with_the_patient_before_anything_is_decoded(phantom, tmp_path):
    paths = _tables(phantom, tmp_path, leak=True)
    patient = sorted(pd.read_csv(paths[0])["PatientId"].astype(str))[0]
    out = tmp_path / "out"
    with pytest.raises(LeakageError, match=patient):
        prepare(load_source("vindr-cxr", phantom), out, PrepareOptions(size=128, workers=0, progress=False,
                                                                       split_tables=paths))
    assert not out.exists()
    result = CliRunner().invoke(app, ["prepare", "vindr-cxr", "--root", str(phantom), "--out", str(out),
                                      "--split-tables", ",".join(map(str, paths)), "--no-progress"])
    assert result.exit_code == 1 and patient in result.output and "test.csv" in result.output


def test_bad_tables_name_the_file(tmp_path):
    one = tmp_path / "a.csv"
    pd.DataFrame({"Picture": ["x.png"], "PatientId": [1]}).to_csv(one, index=False)
    two = tmp_path / "b.csv"
    pd.DataFrame({"Image": ["y.png"], "PatientId": [2]}).to_csv(two, index=False)
    with pytest.raises(DatasetError, match="a.csv.*no image column"):
        table_splits([one, two])
    with pytest.raises(DatasetError, match="takes 2"):
        table_splits([two])
    assert image_column(pd.DataFrame(columns=["image index"]), "t") == "image index"
    pd.DataFrame({"Image": ["y.png"], "PatientId": [3]}).to_csv(one, index=False)
    with pytest.raises(DatasetError, match="also in the train table"):
        table_splits([two, one])


def test_split_from_gives_a_second_view_of_one_dataset_the_first_views_splits(tmp_path):
    from hybridcxr.data.phantom_layouts import make_layout_dataset

    root = make_layout_dataset(tmp_path / "pcxr", "vindr-pcxr", n=24, seed=2, size=(160, 128)).root
    options = {"size": 96, "workers": 0, "progress": False}
    lesions = prepare(load_source("vindr-pcxr", root, findings="lesions"), tmp_path / "lesions",
                      PrepareOptions(seed=0, **options)).manifest.set_index("image_id")["split"]
    alone = prepare(load_source("vindr-pcxr", root), tmp_path / "alone",
                    PrepareOptions(seed=1, **options)).manifest.set_index("image_id")["split"]
    assert (alone.loc[lesions.index] != lesions).any()  # split by its own labels, the views disagree
    joined = prepare(load_source("vindr-pcxr", root), tmp_path / "diagnoses",
                     PrepareOptions(seed=1, split_from=tmp_path / "lesions", **options))
    assert joined.manifest.set_index("image_id")["split"].loc[lesions.index].tolist() == lesions.tolist()
    with pytest.raises(DatasetError, match="manifest.csv"):
        prepare(load_source("vindr-pcxr", root), tmp_path / "nope",
                PrepareOptions(split_from=tmp_path / "missing", **options))
    with pytest.raises(DatasetError, match="not both"):
        prepare(load_source("vindr-pcxr", root), tmp_path / "nope",
                PrepareOptions(split_from=tmp_path / "lesions", split_tables=[tmp_path / "a.csv"] * 3, **options))
