"""The fusion classifier end to end on phantoms: training with resume, the run folder, classify."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pydicom
import pytest
from _splits import run_splits as _splits
from typer.testing import CliRunner

from hybridcxr.classify.train import (
    SplitData,
    classifier_config,
    dataset_findings,
    train_classifier,
    train_head,
)
from hybridcxr.cli import app

runner = CliRunner()
FAST = {"epochs": 8, "patience": 8, "backbone_size": 64, "hidden": [32]}


@pytest.fixture(scope="module")
def classifier(tiny_classifier):
    return tiny_classifier


def test_run_folder_is_self_contained(classifier):
    folder, out, card = classifier
    for name in ("model/model.safetensors", "model/card.json", "detector/best.safetensors", "detector/best.json",
                 "backbone.safetensors", "features/index.csv", "history.csv", "training_curves.png"):
        assert (out / name).is_file(), name
    findings = dataset_findings(folder / "prepared")
    assert set(card["thresholds"]) == set(findings) and len(findings) == 15 and findings[-1] == "No finding"
    assert card["findings"] == list(findings)
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == list(range(1, len(history) + 1))
    assert {"train_loss", "val_loss", "val_macro_auroc"} <= set(history.columns)
    assert 0 <= card["val_macro_auroc"] <= 1 and 1 <= card["best_epoch"] <= len(history)


def test_interrupted_training_resumes_from_its_checkpoint(classifier, tmp_path):
    folder, out, _ = classifier
    train, val, findings = _splits(folder, out / "features")
    config = classifier_config({**FAST, "patience": 100})
    first = train_head(train, val, findings, {**config, "epochs": 3}, checkpoint=tmp_path / "ck")
    assert len(first.history) == 3
    resumed = train_head(train, val, findings, {**config, "epochs": 6}, checkpoint=tmp_path / "ck")
    assert resumed.history["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    pd.testing.assert_frame_equal(resumed.history.iloc[:3], first.history)
    other = train_head(train, val, findings, {**config, "epochs": 2, "lr": 0.5}, checkpoint=tmp_path / "ck")
    assert other.history["epoch"].tolist() == [1, 2], "a checkpoint of another config is not resumed"


def test_no_augmented_views_trains_on_exactly_the_unaugmented_features(classifier):
    """augment_views=0 (the default, and the fixture's run) is today's training: no views cached, the training
    split's arrays are the image cache's, and retraining the head on them repeats the run's history."""
    from hybridcxr.classify.cache import FeatureCache
    from hybridcxr.classify.train import training_split

    folder, out, card = classifier
    assert not (out / "features" / "views").exists()
    assert card["augmentation"]["applied"] == "none" and card["augmentation"]["training_rows"]["views"] == 0
    train, val, findings = _splits(folder, out / "features")
    cache = FeatureCache(out / "features", json.loads((out / "features" / "meta.json").read_text())["fingerprints"])
    config = classifier_config(card["train_config"])
    same = training_split(folder / "prepared", cache, findings, config)
    assert same.image_ids == train.image_ids
    for group, array in train.features.items():
        np.testing.assert_array_equal(same.features[group], array)
    np.testing.assert_array_equal(same.labels, train.labels)
    again = train_head(train, val, findings, config)
    history = pd.read_csv(out / "history.csv")
    np.testing.assert_allclose(again.history["val_macro_auroc"], history["val_macro_auroc"], rtol=1e-9)
    np.testing.assert_allclose(again.history["train_loss"], history["train_loss"], rtol=1e-6)
    assert again.best_epoch == card["best_epoch"]


def test_head_learns_a_visible_signal():
    """Weighted BCE on features that carry the label reaches a high validation AUROC."""
    rng = np.random.default_rng(0)
    findings = ("A", "B")

    def split(n: int) -> SplitData:
        labels = (rng.random((n, 2)) < [0.2, 0.5]).astype(float)
        cnn = rng.normal(size=(n, 16))
        cnn[:, :2] += 2.0 * labels
        return SplitData([str(i) for i in range(n)], {"cnn": cnn, "yolo": rng.normal(size=(n, 8))},
                         rng.uniform(20, 80, n), list(rng.choice(["M", "F"], n)), labels)

    result = train_head(split(300), split(100), findings, classifier_config({"epochs": 30, "patience": 30}))
    assert result.best_auroc > 0.85


def test_classify_reports_each_files_own_demographics(classifier, shared_data, tmp_path):
    _, out, _ = classifier
    dicoms = [shared_data / "dicom" / "nih-udacity" / f"test{i}.dcm" for i in (1, 2, 3)]
    dicoms.append(next((shared_data / "dicom" / "siim-acr").glob("1.2.276*.dcm")))
    png = shared_data / "nih" / "images" / "00000404_000.png"
    result = runner.invoke(app, ["classify", *map(str, dicoms), str(png), "--model", str(out),
                                 "--out", str(tmp_path / "c"), "--no-progress"])
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "c" / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    for path in dicoms:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        row = predictions.loc[path.stem]
        assert row["age_years"] == float(str(header.PatientAge).rstrip("Y"))
        assert row["sex"] == header.PatientSex
    assert np.isnan(predictions.loc[png.stem, "age_years"]) and pd.isna(predictions.loc[png.stem, "sex"])
    card = json.loads((out / "model" / "card.json").read_text())
    findings = list(card["findings"])
    assert list(predictions.columns) == ["age_years", "sex", *findings, *(f"{f} positive" for f in findings), "path"]
    probabilities = predictions[findings].to_numpy()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    learned = [f for f in findings if f not in card["unlearned"]]
    assert set(np.unique(predictions[[f"{f} positive" for f in learned]])) <= {0, 1}
    assert predictions[[f"{f} positive" for f in card["unlearned"]]].isna().all().all(), "no decision: empty"
    record = json.loads((tmp_path / "c" / "json" / "test1.json").read_text())
    assert len(record["findings"]) == 15 and "PatientName" not in json.dumps(record)


def test_classify_with_given_demographics(classifier, shared_data, tmp_path):
    _, out, _ = classifier
    png = shared_data / "nih" / "images" / "00000404_000.png"
    result = runner.invoke(app, ["classify", str(png), "--model", str(out), "--out", str(tmp_path / "a"),
                                 "--age", "062Y", "--sex", "F", "--no-progress"])
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "a" / "predictions.csv").iloc[0]
    assert row["age_years"] == 62.0 and row["sex"] == "F"
    table = tmp_path / "demo.csv"
    pd.DataFrame({"image_id": [png.stem], "age": ["45"], "sex": ["M"]}).to_csv(table, index=False)
    result = runner.invoke(app, ["classify", str(png), "--model", str(out), "--out", str(tmp_path / "b"),
                                 "--demographics", str(table), "--no-progress"])
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "b" / "predictions.csv").iloc[0]
    assert row["age_years"] == 45.0 and row["sex"] == "M"


def test_classify_needs_a_classifier_run(tmp_path):
    result = runner.invoke(app, ["classify", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "not a classifier run folder" in result.output


def test_end_to_end_mode_fine_tunes_the_cnn_and_leaves_a_consistent_run(tiny_detector, tmp_path, monkeypatch):
    from hybridcxr.classify.backbone import OFFLINE_ENV
    from hybridcxr.pipeline import Analyzer

    _, folder, _ = tiny_detector
    out = tmp_path / "e2e"
    monkeypatch.setenv(OFFLINE_ENV[0], "1")  # ImageNet weights asked for, none to be had
    config = classifier_config({**FAST, "epochs": 2, "patience": 2, "end_to_end": True, "e2e_batch_size": 8,
                                "backbone_weights": "imagenet"})
    with pytest.warns(UserWarning, match="randomly initialised"):
        card = train_classifier(folder / "prepared", folder / "run", out, config, progress=False)
    assert card["backbone"]["fine_tuned"] is True
    # the card says what the CNN started from, not what was asked for
    assert card["backbone"]["weights"] == "none (random initialisation)"
    assert card["backbone"]["weights_requested"] == "imagenet"
    start = json.loads((out / "checkpoint" / "features-start" / "meta.json").read_text())["fingerprints"]
    final = json.loads((out / "features" / "meta.json").read_text())["fingerprints"]
    # the CNN learned: its weights (and so its features) are not the ones training started from
    assert final["backbone"] == card["backbone"]["fingerprint"] != start["backbone"]
    assert final["detector"] == start["detector"]
    assert len(pd.read_csv(out / "history.csv")) >= 1
    analyzer = Analyzer(out)  # refuses a run whose saved CNN is not the one the head was trained with
    manifest = pd.read_csv(folder / "prepared" / "manifest.csv", dtype={"image_id": str})
    paths = [folder / "prepared" / p for p in manifest["image"][:3]]
    results = list(analyzer.analyze_paths(paths))
    assert len(results) == 3 and all(0 <= p <= 1 for r in results for p in r.probabilities.values())


def test_end_to_end_batches_can_go_to_worker_processes():
    """DataLoader workers started by spawn or forkserver (Windows, macOS, newer Pythons) pickle the collate."""
    import pickle

    import torch

    from hybridcxr.classify.end_to_end import _Collate

    collate = pickle.loads(pickle.dumps(_Collate(32)))
    images, rows = collate([(torch.rand(40, 30), 3), (torch.rand(20, 50), 7)])
    assert images.shape == (2, 3, 32, 32) and rows.tolist() == [3, 7]


def test_no_finding_is_learned_from_the_manifest_or_from_no_positive_finding():
    from hybridcxr.classify.train import split_labels

    rows = pd.DataFrame({"A": [1, 0, 0, np.nan, np.nan], "B": [0, 0, np.nan, 1, np.nan]})
    labels = split_labels(rows, ("A", "B", "No finding"))
    np.testing.assert_array_equal(labels[:, 2], [0, 1, np.nan, 0, np.nan])
    rows["no_finding"] = [0, 0, 1, 0, 1]  # a dataset's own label wins
    np.testing.assert_array_equal(split_labels(rows, ("A", "B", "No finding"))[:, 2], [0, 0, 1, 0, 1])
    assert split_labels(rows, ("A", "B")).shape == (5, 2)
    rows = rows.drop(columns="no_finding")  # a subset's "No finding" is still "none of the dataset's findings"
    np.testing.assert_array_equal(split_labels(rows, ("A", "No finding"), ("A", "B", "No finding"))[:, 1],
                                  [0, 1, np.nan, 0, np.nan])
    np.testing.assert_array_equal(split_labels(rows, ("A", "No finding"))[:, 1], [0, 1, 1, np.nan, np.nan])


def test_a_findings_subset_keeps_the_datasets_order_and_refuses_unknown_names(tmp_path):
    from hybridcxr.errors import ConfigError

    (tmp_path / "data.yaml").write_text("names: {0: Atelectasis, 1: Cardiomegaly, 2: Effusion, 3: Mass}\n")
    assert dataset_findings(tmp_path) == ("Atelectasis", "Cardiomegaly", "Effusion", "Mass", "No finding")
    assert dataset_findings(tmp_path, ["Mass", "Atelectasis"]) == ("Atelectasis", "Mass", "No finding")
    with pytest.raises(ConfigError, match=r"'Efusion'.*did you mean 'Effusion'"):
        dataset_findings(tmp_path, ["Efusion"])
    assert classifier_config({"findings": ["Mass"]}).findings == ["Mass"]
    with pytest.raises(ConfigError, match="findings must be"):
        classifier_config({"findings": []})
