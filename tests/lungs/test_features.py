"""The lung fields in the hybrid: the ``lungs`` feature vector, the lung-field crop, and a classifier run that
uses both (trained, cached, recorded in its card, loaded by the Analyzer, ablated by the evaluation)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hybridcxr.lungs.features import LUNG_DIM, LUNG_FEATURES, crop_box, lung_inputs, lung_vector
from hybridcxr.lungs.measures import measure_lungs

from .conftest import TINY, draw_lungs, write_mask_dataset


def test_the_vector_is_scale_free_and_reads_the_masks_geometry():
    small, large = draw_lungs(100, 80, gap=10), draw_lungs(400, 320, gap=40)
    a = lung_vector(measure_lungs(small), small.shape)
    b = lung_vector(measure_lungs(large), large.shape)
    assert a.shape == (LUNG_DIM,) and a[-1] == 0 and b[-1] == 0
    np.testing.assert_allclose(a[:-1], b[:-1], atol=0.02)  # the same drawing at 4x the size
    named = dict(zip(LUNG_FEATURES, b))
    assert named["right_area_frac"] == pytest.approx(large[:, :160].sum() / large.size, rel=1e-3)
    assert named["ctr_estimate"] == pytest.approx(measure_lungs(large).values["ctr_estimate"])
    assert 0 < named["box_x_min"] < 0.1 and 0.9 < named["box_x_max"] <= 1


def test_an_implausible_mask_gives_zeros_and_the_missing_flag():
    for mask in (np.zeros((60, 50), bool), draw_lungs(60, 50) & (np.arange(50) < 25)):  # empty; one lung
        vector = lung_vector(measure_lungs(mask), mask.shape)
        assert vector[-1] == 1 and not vector[:-1].any()


def test_the_crop_box_is_the_lung_field_with_its_margin_clipped_to_the_image():
    mask = draw_lungs(200, 160, gap=20)
    measures = measure_lungs(mask)
    ys, xs = np.nonzero(mask)
    tight = crop_box(measures, mask.shape, 0.0)
    assert tight == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    wide = crop_box(measures, mask.shape, 0.5)
    assert wide[0] == 0 and wide[2] == 160 and wide[1] < tight[1] and wide[3] > tight[3]
    assert crop_box(measure_lungs(np.zeros((20, 20), bool)), (20, 20), 0.1) is None


def test_lung_inputs_segment_once_and_crop_the_cnn_to_the_lung_field(tiny_lungs, mask_dataset):
    from PIL import Image

    from hybridcxr.lungs.predict import Segmenter

    segmenter = Segmenter.load(tiny_lungs.folder, device="cpu")
    image = np.asarray(Image.open(mask_dataset / "images" / "img00.png"), dtype=np.float32) / 255
    blank = np.full((96, 80), 0.8, dtype=np.float32)
    vectors, seen, measured = lung_inputs(segmenter, [image, blank], crop=True, margin=0.05)
    assert vectors.shape == (2, LUNG_DIM) and measured[0].ok and not measured[1].ok
    assert vectors[0, -1] == 0 and vectors[1, -1] == 1
    assert seen[0].shape[0] < image.shape[0] and seen[0].shape[1] <= image.shape[1]
    assert seen[1] is blank, "a failed segmentation leaves the CNN the whole image"
    _, uncropped, _ = lung_inputs(segmenter, [image], crop=False, margin=0.05)
    assert uncropped[0] is image


@pytest.fixture(scope="module")
def lung_classifier(tiny_detector, tiny_lungs, tmp_path_factory):
    """A classifier run with the lungs group and the lung crop, on the tiny detector's phantoms."""
    from hybridcxr.classify.train import classifier_config, train_classifier

    _, folder, _ = tiny_detector
    out = tmp_path_factory.mktemp("lungcls") / "run"
    config = classifier_config({"epochs": 4, "patience": 4, "backbone_size": 64, "hidden": [16],
                                "lungs": str(tiny_lungs.folder), "crop": "lungs"})
    with pytest.warns(UserWarning, match="randomly initialised"):
        card = train_classifier(folder / "prepared", folder / "run", out, config, progress=False)
    return folder, out, card


def test_a_classifier_with_a_lung_model_caches_records_and_uses_the_lung_group(lung_classifier, tiny_lungs):
    from hybridcxr.analyzer import Analyzer

    folder, run, card = lung_classifier
    assert card["groups"] == ["yolo", "cnn", "lungs", "age", "sex"] and card["dims"]["lungs"] == LUNG_DIM
    assert card["lungs"]["crop"] is True and card["lungs"]["features"] == list(LUNG_FEATURES)
    assert (run / "lungs" / "lungs.safetensors").is_file(), "the run keeps its own copy of the lung model"
    meta = json.loads((run / "features" / "meta.json").read_text())
    assert meta["groups"] == ["yolo", "cnn", "lungs"] and meta["fingerprints"]["crop"] == "lungs+0.05"
    analyzer = Analyzer(run, device="cpu")
    images = sorted((folder / "prepared" / "images").rglob("*.png"))[:3]
    results = list(analyzer.analyze_paths(images))
    assert len(results) == 3 and all(r.lungs is not None for r in results)
    assert all(set(r.probabilities) == set(card["findings"]) for r in results)


def test_a_lung_model_swapped_in_the_run_is_refused(lung_classifier, tmp_path):
    from hybridcxr.analyzer import Analyzer
    from hybridcxr.errors import InputError
    from hybridcxr.lungs.card import read_card
    from hybridcxr.lungs.train import train_lungs

    _, run, _ = lung_classifier
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    from hybridcxr.config import load_config

    data = write_mask_dataset(tmp_path / "masks", n=8, seed=5)
    other = train_lungs(data, tmp_path / "other", load_config("lungs", overrides={**TINY, "epochs": 1, "seed": 9}),
                        progress=False)
    for name in ("lungs.json", "lungs.safetensors"):
        shutil.copyfile(other.folder / name, copy / "lungs" / name)
    assert read_card(copy / "lungs")["weights_sha256"] != read_card(run / "lungs")["weights_sha256"]
    with pytest.raises(InputError, match="lung model differs"):
        Analyzer(copy, device="cpu")


def test_the_ablation_table_has_a_row_without_lung_features(lung_classifier):
    from hybridcxr.classify.evaluate import evaluate_classifier

    folder, run, _ = lung_classifier
    report = evaluate_classifier(run, folder / "prepared", split="val", n_boot=20, progress=False)
    text = report.read_text()
    assert "without lung features (yolo, cnn, age, sex)" in text


def test_classify_and_the_service_report_the_lung_measures(lung_classifier, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from hybridcxr.cli import app

    folder, run, _ = lung_classifier
    images = sorted((folder / "prepared" / "images").rglob("*.png"))[:2]
    done = CliRunner().invoke(app, ["classify", *map(str, images), "--model", str(run), "--out",
                                    str(tmp_path / "out"), "--no-progress"])
    assert done.exit_code == 0, done.output
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"image_id": str})
    assert {"lung_quality", "ctr_estimate", "ctr_profile"} <= set(predictions.columns)
    record = json.loads(next((tmp_path / "out" / "json").glob("*.json")).read_text())
    assert record["lungs"]["quality"] in set(predictions["lung_quality"])
    from hybridcxr.serve.schema import Analysis as Answer

    assert "lungs" in Answer.model_fields, "the service's answer has the lung measures too"
