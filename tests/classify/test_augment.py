"""hybridcxr.classify.augment: CXR-safe views that keep size and label, seeded views in the feature cache, the
oversampling rule, and end-to-end training that augments training images (never validation ones)."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from _splits import run_splits

from hybridcxr.classify.augment import (
    ImageAugment,
    augmentation_card,
    image_index,
    settings_key,
    view_counts,
    view_id,
    with_views,
)
from hybridcxr.classify.cache import FeatureCache, StaleCacheError, view_cache
from hybridcxr.classify.train import SplitData, classifier_config, train_classifier, training_split

FAST = {"epochs": 3, "patience": 3, "backbone_size": 64, "hidden": [32]}
STRONG = {"aug_p": 1.0, "aug_rotate": 10.0, "aug_brightness": 0.3, "aug_contrast": 0.3, "aug_noise": 0.05}


def _chest(height: int = 90, width: int = 70) -> np.ndarray:
    """A grey image whose "heart" (a bright blob) is on the image's right, the patient's left."""
    pixels = np.full((height, width), 0.2, np.float32)
    pixels[height // 3: 2 * height // 3, width // 2 + 5: width - 8] = 0.9
    return pixels


def test_an_augmented_image_keeps_its_size_and_range_and_repeats_per_epoch_and_index():
    augment = ImageAugment(classifier_config(STRONG))
    pixels = _chest()
    first = augment(pixels, epoch=1, index=7)
    assert first.shape == pixels.shape and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    np.testing.assert_array_equal(first, augment(pixels, epoch=1, index=7))
    assert not np.array_equal(first, augment(pixels, epoch=2, index=7))
    assert not np.array_equal(first, augment(pixels, epoch=1, index=8))
    assert not np.array_equal(first, pixels)
    np.testing.assert_array_equal(pixels, _chest(), "the input is not changed in place")


def test_no_flip_by_default_and_half_flipped_with_hflip():
    pixels = _chest()
    right = slice(pixels.shape[1] // 2, None)

    def heart_on_the_right(config: dict) -> list[bool]:
        augment = ImageAugment(classifier_config({**config, "aug_p": 1.0, "aug_rotate": 3.0}))
        return [bool(out[:, right].mean() > out[:, :right.start].mean())
                for out in (augment(pixels, 1, i) for i in range(40))]

    assert all(heart_on_the_right({})), "hflip is off by default: the heart stays on the patient's left"
    flipped = heart_on_the_right({"hflip": True})
    assert 10 <= flipped.count(False) <= 30


def test_augmenting_travels_to_worker_processes():
    augment = ImageAugment(classifier_config(STRONG))
    expected = augment(_chest(), 3, 1)  # built and used, then pickled as a DataLoader worker would get it
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(augment))(_chest(), 3, 1), expected)


def test_views_are_the_training_rows_again_with_their_images_labels_age_and_sex():
    split = SplitData(["a", "b"], {"cnn": np.arange(8.0).reshape(2, 4)}, np.array([30.0, np.nan]), ["F", None],
                      np.array([[1.0, 0.0], [0.0, np.nan]]))
    views = {"cnn": np.full((3, 4), -1.0)}
    out = with_views(split, views, np.array([1, 2]))
    assert out.image_ids == ["a", "b", "a~aug1", "b~aug1", "b~aug2"]
    np.testing.assert_array_equal(out.labels, [[1, 0], [0, np.nan], [1, 0], [0, np.nan], [0, np.nan]])
    np.testing.assert_array_equal(out.age_years, [30, np.nan, 30, np.nan, np.nan])
    assert out.sex == ["F", None, "F", None, None]
    np.testing.assert_array_equal(out.features["cnn"][:2], split.features["cnn"])
    np.testing.assert_array_equal(out.features["cnn"][2:], views["cnn"])


def test_oversampling_gives_the_rarer_findings_images_more_views():
    # A: 8 positives, B: 4, C: 1 -> median 4; an image's rarest finding decides: floor(4 / n), capped
    labels = np.zeros((10, 4))
    labels[:8, 0] = 1
    labels[[0, 1, 2, 3], 1] = 1
    labels[9, 2] = 1
    labels[8, 3] = 1  # "No finding" is not a finding: its count is no rarity
    findings = ("A", "B", "C", "No finding")
    assert view_counts(labels, findings, 2).tolist() == [2] * 10
    assert view_counts(labels, findings, 2, "rare").tolist() == [2, 2, 2, 2, 2, 2, 2, 2, 2, 8]
    assert view_counts(labels, findings, 2, "rare", most=3).tolist()[-1] == 6
    labels[4, 1] = np.nan  # unlabelled is not positive
    assert view_counts(labels, findings, 1, "rare").tolist() == [1] * 9 + [4]
    assert view_counts(np.zeros((3, 2)), ("A", "B"), 3, "rare").tolist() == [3, 3, 3]


@pytest.fixture(scope="module")
def augmented(tiny_detector, tmp_path_factory):
    """A classifier run with 2 cached views per training image, oversampled."""
    _, folder, _ = tiny_detector
    out = tmp_path_factory.mktemp("aug") / "run"
    config = classifier_config({**FAST, **STRONG, "augment_views": 2, "oversample": "rare"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        card = train_classifier(folder / "prepared", folder / "run", out, config, progress=False)
    return folder, out, card, config


def test_views_of_every_training_image_are_cached_and_recorded(augmented):
    folder, out, card, config = augmented
    train, val, findings = run_splits(folder, out / "features")
    counts = view_counts(train.labels, findings, 2, "rare")
    assert counts.min() == 2 and counts.max() > 2, "the phantoms' rarer findings are oversampled"
    index = pd.read_csv(out / "features" / "views" / "index.csv", dtype={"image_id": str})
    expected = {view_id(i, v) for i, n in zip(train.image_ids, counts) for v in range(1, n + 1)}
    assert set(index["image_id"]) == expected, "training images only: validation and test are never augmented"
    meta = json.loads((out / "features" / "views" / "meta.json").read_text())
    base = json.loads((out / "features" / "meta.json").read_text())["fingerprints"]
    assert meta["fingerprints"] == {**base, "augmentation": settings_key(config)}
    assert card["augmentation"] == augmentation_card(config, [*train.image_ids, *sorted(expected)])
    assert card["augmentation"]["training_rows"] == {"images": len(train.image_ids), "views": int(counts.sum())}
    assert card["augmentation"]["applied"] == "cached views" and card["augmentation"]["hflip"] is False
    cache = FeatureCache(out / "features", base)
    rows = training_split(folder / "prepared", cache, findings, config)  # no models: the views are cached
    source = [train.image_ids.index(i.split("~aug")[0]) for i in rows.image_ids]
    np.testing.assert_array_equal(rows.labels, train.labels[source])
    assert rows.sex == [train.sex[i] for i in source]
    assert {g: x.shape[1] for g, x in rows.features.items()} == {g: x.shape[1] for g, x in train.features.items()}


def test_a_view_is_its_image_augmented_then_seen_by_the_same_models(augmented):
    from dataclasses import replace

    from hybridcxr.classify.backbone import embed
    from hybridcxr.classify.train import open_models
    from hybridcxr.io import read_radiograph
    from hybridcxr.layout import ClassifierLayout

    folder, out, _, config = augmented
    layout = ClassifierLayout(out)
    detector, backbone = open_models(layout.detector, config, layout.backbone)
    manifest = pd.read_csv(folder / "prepared" / "manifest.csv", dtype={"image_id": str}).set_index("image_id")
    image_id = manifest.index[manifest["split"] == "train"][0]
    original = read_radiograph(folder / "prepared" / manifest.at[image_id, "image"])
    pixels = ImageAugment(config)(original.pixels, 2, image_index(image_id))
    assert pixels.shape == original.pixels.shape
    cache = FeatureCache(out / "features", json.loads((out / "features" / "meta.json").read_text())["fingerprints"])
    views = view_cache(cache, settings_key(config))
    cached = views.load([view_id(image_id, 2)])
    yolo = detector.predict([replace(original, pixels=pixels)], features=True)[0].features
    np.testing.assert_allclose(cached["yolo"][0], yolo, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cached["cnn"], embed(backbone, [pixels]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(cached["cnn"], cache.load([image_id])["cnn"]), "a view is not its original"
    with pytest.raises(StaleCacheError, match="another augmentation"):
        view_cache(cache, settings_key({**config, "aug_rotate": 1.0}))


def test_evaluation_retrains_its_ablations_on_the_runs_views(augmented, tmp_path):
    from hybridcxr.classify.evaluate import evaluate_classifier

    folder, out, _, _ = augmented
    before = (out / "features" / "views" / "index.csv").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = evaluate_classifier(out, folder / "prepared", split="val", out=tmp_path / "r", n_boot=20,
                                     progress=False)
    assert report.is_file() and "without CNN embedding" in report.read_text()
    assert (out / "features" / "views" / "index.csv").read_text() == before, "views reused, not recomputed"


def test_end_to_end_augments_training_images_per_epoch_and_never_validation_ones(tiny_detector):
    from hybridcxr.classify.end_to_end import _loaders

    _, folder, _ = tiny_detector
    manifest = pd.read_csv(folder / "prepared" / "manifest.csv", dtype={"image_id": str})
    paths = [folder / "prepared" / p for p in manifest["image"][:2]]
    config = classifier_config({**FAST, **STRONG, "end_to_end": True})
    train, val = _loaders(paths, paths, config, cuda=False)
    assert train.dataset.augment is not None and val.dataset.augment is None
    plain = val.dataset[0][0]
    train.dataset.epoch = 1
    first = train.dataset[0][0]
    train.dataset.epoch = 2
    assert first.shape == plain.shape and not np.array_equal(first, plain)
    assert not np.array_equal(first, train.dataset[0][0])
    train.dataset.epoch = 1
    np.testing.assert_array_equal(first, train.dataset[0][0])
    off, _ = _loaders(paths, paths, classifier_config({**FAST, "end_to_end": True, "augment": False}), cuda=False)
    assert off.dataset.augment is None
