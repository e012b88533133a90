"""The five recipes of docs/recipes.md, each run through the command line as documented there, at toy size
(a few dozen phantoms in that recipe's own dataset layout, 64 px CNN inputs, 1-2 epochs, random weights), with
the recipe's config from configs/recipes/, checking the outputs the recipe names.

What these toy models score is not the point (phantoms, minutes of CPU): the commands, the layouts, the
settings reaching the run and the reports' contents are. Where a recipe trains a detector only to feed the
classifier, the session's ``tiny_detector`` stands in (trained on VinDr-CXR phantoms); recipe 1 trains its own on
its 36-lesion view, as documented.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hybridcxr.cli import app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "recipes"
#: Toy size for every classifier run: 64 px CNN inputs, two epochs, random initialisation (nothing downloads).
TOY = ["epochs=2", "patience=2", "backbone_size=64", "backbone_weights=null", "e2e_batch_size=8", "e2e_workers=0"]
runner = CliRunner()


def cli(*args: object, code: int = 0) -> str:
    """Run ``hybridcxr ARGS`` in this process; assert its exit code; return what it printed."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result.output


def phantoms(layout: str, out: Path, n: int = 24, seed: int = 0) -> Path:
    """``hybridcxr demo-data OUT --layout LAYOUT`` (the stand-in for the download), drawn small to save time."""
    from hybridcxr.data.phantom_layouts import make_layout_dataset

    return make_layout_dataset(out, layout, n=n, seed=seed, size=(192, 160)).root


def recipe(name: str) -> Path:
    path = RECIPES / f"{name}.classifier.yaml"
    assert path.is_file(), path
    return path


def prepare(source: str, root: Path, out: Path, *extra: object) -> str:
    return cli("prepare", source, "--root", root, "--out", out, "--size", 128, "--workers", 0, "--no-progress", *extra)


def train(data: Path, detector: Path, out: Path, name: str, *extra: object) -> dict:
    cli("train", "classifier", "--data", data, "--detector", detector, "--out", out, "--config", recipe(name),
        "--no-progress", *TOY, *extra)
    return json.loads((out / "model" / "card.json").read_text())


def evaluate(run: Path, data: Path) -> Path:
    cli("evaluate", "classifier", "--model", run, "--data", data, "--no-ablation", "--n-boot", 20, "--no-progress")
    return run / "report-test"


def manifest(prepared: Path) -> pd.DataFrame:
    return pd.read_csv(prepared / "manifest.csv", dtype={"image_id": str, "patient_id": str})


def test_every_recipe_config_holds_only_classifier_keys_it_changes():
    from hybridcxr.config import classifier_config, config_default, read_config_file

    names = sorted(p.name for p in RECIPES.glob("*.yaml"))
    assert names == [f"{n}.classifier.yaml" for n in ("chestxray8-split-tables", "nih-densenet121",
                                                       "paediatric-hybrid", "pediatric-pneumonia",
                                                       "vinbigdata-lung-crop")]
    for path in RECIPES.glob("*.yaml"):
        settings = read_config_file(path)
        assert settings, path
        for key, value in settings.items():
            assert value != config_default("classifier", key), f"{path.name}: {key} repeats the default"
        classifier_config({**settings, **({"lungs": "RUN"} if settings.get("crop") == "lungs" else {})})


# ---------------------------------------------------------------------------------- 1. paediatric hybrid


def test_paediatric_hybrid_reports_precision_recall_and_f1_per_diagnosis(tmp_path):
    from hybridcxr.findings import VINDR_PCXR_LESIONS

    phantoms("vindr-pcxr", tmp_path / "pcxr", seed=3)
    prepare("vindr-pcxr", tmp_path / "pcxr", tmp_path / "lesions", "--findings", "lesions")
    boxes = pd.read_csv(tmp_path / "lesions" / "boxes.csv")
    assert "Other nodule/mass" in set(boxes["finding"]), "the lesion view has the detector's boxes, paediatric names"
    cli("train", "detector", "--data", tmp_path / "lesions", "--out", tmp_path / "det", "--epochs", 1, "--imgsz", 128,
        "batch=8", "workers=0")
    detector_card = json.loads((tmp_path / "det" / "weights" / "best.json").read_text())
    assert detector_card["findings"] == list(VINDR_PCXR_LESIONS)  # the 36 YOLO classes of the lesion view
    prepare("vindr-pcxr", tmp_path / "pcxr", tmp_path / "diagnoses", "--split-from", tmp_path / "lesions")
    splits = [manifest(tmp_path / view).set_index("image_id")["split"].sort_index() for view in ("lesions", "diagnoses")]
    assert splits[0].equals(splits[1]), "one image, one split in both views: no detector training image in val"
    card = train(tmp_path / "diagnoses", tmp_path / "det", tmp_path / "cls", "paediatric-hybrid")
    assert card["train_config"]["augment_views"] == 2 and card["train_config"]["oversample"] == "rare"
    assert {"yolo", "cnn", "age", "sex"} <= set(card["train_config"]["groups"])
    cli("tune", "--data", tmp_path / "diagnoses", "--detector", tmp_path / "det", "--out", tmp_path / "tune",
        "--trials", 2, "--features-from", tmp_path / "cls", "--config", recipe("paediatric-hybrid"), "--no-progress",
        *TOY)
    assert (tmp_path / "tune" / "best_config.yaml").is_file()
    report = evaluate(tmp_path / "cls", tmp_path / "diagnoses")
    table = pd.read_csv(report / "per_finding.csv").set_index("finding")
    learned = [f for f in ("Pneumonia", "Lung tumor", "Other disease") if table.at[f, "n_pos"] > 0]
    assert learned, table
    assert {"precision", "recall", "f1", "auroc"} <= set(table.columns)
    assert table.loc[learned, "f1"].notna().all()
    assert "F1" in (report / "report.md").read_text()


# ---------------------------------------------------------------------------------- 2. VinBigData, lung crop


def test_vinbigdata_lung_crop_records_the_crop_and_the_graph_head(tiny_detector, tmp_path):
    from lungs.conftest import TINY, write_mask_dataset

    phantom, det_folder, _ = tiny_detector
    physionet = json.loads((det_folder / "prepared" / "summary.json").read_text())
    phantoms("vindr-cxr-kaggle", tmp_path / "kaggle", seed=5)
    prepare("vindr-cxr", tmp_path / "kaggle", tmp_path / "prepared")
    kaggle = json.loads((tmp_path / "prepared" / "summary.json").read_text())
    assert kaggle["source"] == physionet["source"] == "vindr-cxr"
    write_mask_dataset(tmp_path / "masks")
    cli("train", "lungs", "--data", tmp_path / "masks", "--out", tmp_path / "lungs", "--no-progress",
        *(f"{k}={json.dumps(v)}" for k, v in TINY.items()))
    card = train(tmp_path / "prepared", det_folder / "run", tmp_path / "cls", "vinbigdata-lung-crop",
                 f"lungs={tmp_path / 'lungs'}")
    assert card["backbone"]["name"] == "densenet121"
    assert card["train_config"]["head"] == "gcn" and card["train_config"]["crop"] == "lungs"
    assert card["lungs"]["crop"] is True and card["lungs"]["fingerprint"]


# ---------------------------------------------------------------------------------- 3 and 4: NIH layout


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> Path:
    return phantoms("nih", tmp_path_factory.mktemp("nih") / "nih", n=30, seed=2)


def test_nih_densenet121_honours_the_official_split(nih, tiny_detector, tmp_path):
    _, det_folder, _ = tiny_detector
    prepare("nih", nih, tmp_path / "prepared")
    rows = manifest(tmp_path / "prepared")
    official = {Path(line).stem for line in (nih / "test_list.txt").read_text().split()}
    assert set(rows.loc[rows["split"] == "test", "image_id"]) == official
    assert set(rows.loc[rows["split"] != "test", "image_id"]).isdisjoint(official)
    # DenseNet-121 end to end costs minutes on 2 CPU cores: the plumbing is the same for ResNet-18
    card = train(tmp_path / "prepared", det_folder / "run", tmp_path / "cls", "nih-densenet121",
                 "backbone=resnet18", "epochs=1")
    config = card["train_config"]
    assert config["findings"] == ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                                  "Pneumothorax"]
    assert (config["end_to_end"], config["lr"], config["backbone_lr"]) == (True, 3e-3, 3e-3)
    assert (config["lr_factor"], config["lr_patience"], config["hflip"]) == (0.1, 5, True)
    assert card["backbone"]["fine_tuned"] is True
    from hybridcxr.classify.fusion import load_checkpoint

    assert tuple(load_checkpoint(tmp_path / "cls" / "model")[1].findings) == (*config["findings"], "No finding")


def _course_tables(nih: Path, folder: Path, leak: str | None = None) -> list[Path]:
    """train.csv, valid.csv, test.csv as the course ships them (Image, the findings, PatientId), patients in
    order 60/20/20; ``leak``: one of the test table's patients also gets a row in the training table."""
    entries = pd.read_csv(nih / "Data_Entry_2017.csv")
    table = pd.DataFrame({"Image": entries["Image Index"], "PatientId": entries["Patient ID"]})
    patients = sorted(table["PatientId"].unique())
    cut = [0, int(0.6 * len(patients)), int(0.8 * len(patients)), len(patients)]
    parts = [table[table["PatientId"].isin(patients[a:b])] for a, b in zip(cut, cut[1:])]
    if leak is not None:
        parts[0] = pd.concat([parts[0], parts[2][parts[2]["PatientId"] == int(leak)].head(1)])
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in ("train.csv", "valid.csv", "test.csv")]
    for part, path in zip(parts, paths):
        part.to_csv(path, index=False)
    return paths


def test_chestxray8_split_tables_refuse_a_leak_and_train_on_a_clean_split(nih, tiny_detector, tmp_path):
    import torch
    import torchvision

    _, det_folder, _ = tiny_detector
    clean = _course_tables(nih, tmp_path / "clean")
    patient = str(pd.read_csv(clean[2])["PatientId"].iloc[0])
    leaky = _course_tables(nih, tmp_path / "leaky", leak=patient)
    said = cli("check-leakage", *leaky, code=1)
    assert f"{int(patient):08d}" in said or patient in said
    said = cli("prepare", "nih", "--root", nih, "--out", tmp_path / "refused", "--split-tables",
               ",".join(map(str, leaky)), "--workers", 0, "--no-progress", code=1)
    assert patient in said and not (tmp_path / "refused" / "manifest.csv").exists()
    assert "no patient is in more than one" in cli("check-leakage", *clean)
    said = prepare("nih", nih, tmp_path / "prepared", "--split-tables", ",".join(map(str, clean)))
    assert "positive weight" in said
    rows = manifest(tmp_path / "prepared").set_index("image_id")
    for path, split in zip(clean, ("train", "val", "test")):
        assert set(rows.index[rows["split"] == split]) == {Path(i).stem for i in pd.read_csv(path)["Image"]}
    weights = tmp_path / "densenet121.pth"  # "transfer learning from a local weights file"
    torch.save(torchvision.models.densenet121(weights=None).state_dict(), weights)
    card = train(tmp_path / "prepared", det_folder / "run", tmp_path / "cls", "chestxray8-split-tables",
                 f"backbone_weights={weights}")
    assert card["backbone"]["name"] == "densenet121" and card["backbone"]["weights"] == str(weights)
    report = evaluate(tmp_path / "cls", tmp_path / "prepared")
    assert (report / "roc_curves.png").stat().st_size > 0


# ---------------------------------------------------------------------------------- 5. pediatric pneumonia


def test_pediatric_pneumonia_writes_the_confusion_matrix_and_the_accuracy_curves(tiny_detector, tmp_path):
    _, det_folder, _ = tiny_detector
    phantoms("pneumonia", tmp_path / "chest_xray", n=30, seed=1)
    assert sorted(p.name for p in (tmp_path / "chest_xray" / "train").iterdir()) == ["NORMAL", "PNEUMONIA"]
    prepare("pneumonia", tmp_path / "chest_xray", tmp_path / "prepared")
    card = train(tmp_path / "prepared", det_folder / "run", tmp_path / "cls", "pediatric-pneumonia")
    assert card["train_config"]["groups"] == ["cnn"] and card["backbone"]["fine_tuned"] is True
    report = evaluate(tmp_path / "cls", tmp_path / "prepared")
    for name in ("confusion_matrix.png", "training_accuracy.png"):
        assert (report / name).stat().st_size > 0, name
    binary = json.loads((report / "binary.json").read_text())
    assert binary["finding"] == "Pneumonia" and binary["n"] == card_test_images(tmp_path / "prepared")
    assert sum(map(sum, binary["confusion_matrix"])) == binary["n"]
    assert {"accuracy", "sensitivity", "specificity"} <= set(binary)


def card_test_images(prepared: Path) -> int:
    return int((manifest(prepared)["split"] == "test").sum())
