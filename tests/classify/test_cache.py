"""The per-image feature cache: vectors stored and read back, other models' caches refused, lost chunks redone.

Most tests fill a cache folder directly with small vectors (no model needed); one checks the cache a classifier
run built for every image of its dataset.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from hybridcxr.classify.cache import FeatureCache, StaleCacheError, detector_fingerprint
from hybridcxr.errors import InputError

PRINTS = {"detector": "d" * 16, "backbone": "b" * 16}


def _vectors(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"yolo": rng.normal(size=(n, 6)), "cnn": rng.normal(size=(n, 4)).astype(np.float32)}


@pytest.fixture(scope="module")
def classifier(tiny_classifier):
    return tiny_classifier


def test_feature_cache_holds_every_image_and_refuses_other_models(classifier):
    folder, out, _ = classifier
    manifest = pd.read_csv(folder / "prepared" / "manifest.csv", dtype={"image_id": str})
    index = pd.read_csv(out / "features" / "index.csv", dtype={"image_id": str})
    assert set(index["image_id"]) == set(manifest["image_id"])
    meta = json.loads((out / "features" / "meta.json").read_text())
    cache = FeatureCache(out / "features", meta["fingerprints"])
    arrays = cache.load(manifest["image_id"].tolist()[:3])
    assert arrays["yolo"].shape == (3, 704) and arrays["cnn"].shape == (3, 512)
    with pytest.raises(StaleCacheError, match="another detector"):
        FeatureCache(out / "features", {**meta["fingerprints"], "detector": "0" * 16})


def test_vectors_round_trip_across_chunks_in_the_order_asked(tmp_path):
    cache = FeatureCache(tmp_path / "features", PRINTS)
    yolo_a, cnn_a = _vectors(3, 0).values()
    yolo_b, cnn_b = _vectors(2, 1).values()
    cache.add(["a0", "a1", "a2"], {"yolo": yolo_a, "cnn": cnn_a})
    cache.add(["b0", "b1"], {"yolo": yolo_b, "cnn": cnn_b})
    assert sorted(p.name for p in (tmp_path / "features").glob("chunk_*")) == ["chunk_00000.safetensors",
                                                                             "chunk_00001.safetensors"]
    reopened = FeatureCache(tmp_path / "features", PRINTS)
    assert reopened.ids == {"a0", "a1", "a2", "b0", "b1"}
    arrays = reopened.load(["b1", "a2", "a0", "b0"])
    assert arrays["yolo"].dtype == np.float32 and arrays["cnn"].dtype == np.float32
    np.testing.assert_array_equal(arrays["yolo"], np.stack([yolo_b[1], yolo_a[2], yolo_a[0], yolo_b[0]]).astype(np.float32))
    np.testing.assert_array_equal(arrays["cnn"], np.stack([cnn_b[1], cnn_a[2], cnn_a[0], cnn_b[0]]))
    assert json.loads((tmp_path / "features" / "meta.json").read_text()) == {"fingerprints": PRINTS,
                                                                             "groups": ["yolo", "cnn"]}


def test_an_image_cached_again_reads_its_newest_vectors(tmp_path):
    cache = FeatureCache(tmp_path, PRINTS)
    old, new = _vectors(1, 0), _vectors(1, 1)
    cache.add(["x"], old)
    cache.add(["x"], new)
    np.testing.assert_array_equal(cache.load(["x"])["cnn"], new["cnn"])


@pytest.mark.parametrize(("changed", "message"), [
    ({"backbone": "0" * 16}, "made by another backbone;"),
    ({"detector": "0" * 16}, "made by another detector;"),
    ({"detector": "0" * 16, "backbone": "0" * 16}, "made by another detector and backbone;"),
])
def test_a_cache_of_other_models_is_refused_naming_what_differs(tmp_path, changed, message):
    FeatureCache(tmp_path, PRINTS).add(["a"], _vectors(1, 0))
    with pytest.raises(StaleCacheError, match=message) as err:
        FeatureCache(tmp_path, {**PRINTS, **changed})
    assert isinstance(err.value, InputError) and err.value.path == str(tmp_path)
    assert "delete the folder" in str(err.value)
    assert FeatureCache(tmp_path, PRINTS).ids == {"a"}, "the refused cache is left as it was"


def test_images_not_cached_are_an_input_error(tmp_path):
    cache = FeatureCache(tmp_path, PRINTS)
    cache.add(["a"], _vectors(1, 0))
    with pytest.raises(InputError, match="1 images are not in the feature cache, e.g. missing"):
        cache.load(["a", "missing"])


def test_rows_of_a_chunk_lost_to_a_kill_are_dropped_so_they_are_redone(tmp_path):
    cache = FeatureCache(tmp_path, PRINTS)
    cache.add(["a", "b"], _vectors(2, 0))
    cache.add(["c"], _vectors(1, 1))
    (tmp_path / "chunk_00001.safetensors").unlink()
    reopened = FeatureCache(tmp_path, PRINTS)
    assert reopened.ids == {"a", "b"}
    reopened.add(["c"], _vectors(1, 2))
    np.testing.assert_array_equal(reopened.load(["c"])["cnn"], _vectors(1, 2)["cnn"])


def test_detector_fingerprint_follows_its_tensors_and_image_size():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    detector = SimpleNamespace(imgsz=128, model=model)
    first = detector_fingerprint(detector)
    assert len(first) == 16 and int(first, 16) >= 0
    assert detector_fingerprint(SimpleNamespace(imgsz=128, model=model)) == first
    assert detector_fingerprint(SimpleNamespace(imgsz=256, model=model)) != first
    with torch.no_grad():
        model.bias[0] += 1e-3
    assert detector_fingerprint(detector) != first


def test_a_chunk_must_hold_every_group_of_the_cache(tmp_path):
    lungs = FeatureCache(tmp_path / "lungs", {**PRINTS, "lungs": "l" * 16, "crop": "none"})
    assert lungs.groups == ("yolo", "cnn", "lungs")
    with pytest.raises(ValueError, match="holds yolo, cnn, lungs"):
        lungs.add(["a"], _vectors(1, 0))
    lungs.add(["a"], {**_vectors(1, 0), "lungs": np.ones((1, 3))})
    assert lungs.load(["a"])["lungs"].tolist() == [[1.0, 1.0, 1.0]]
    assert FeatureCache(tmp_path / "plain", PRINTS).groups == ("yolo", "cnn")


def test_a_cache_made_with_another_crop_is_refused(tmp_path):
    FeatureCache(tmp_path, {**PRINTS, "lungs": "l" * 16, "crop": "none"})
    with pytest.raises(StaleCacheError, match="another crop"):
        FeatureCache(tmp_path, {**PRINTS, "lungs": "l" * 16, "crop": "lungs+0.05"})


def test_a_view_cache_of_other_augmentation_settings_is_refused_and_leaves_the_originals_alone(tmp_path):
    from hybridcxr.classify.cache import view_cache

    cache = FeatureCache(tmp_path, PRINTS)
    cache.add(["a"], _vectors(1, 0))
    views = view_cache(cache, '{"aug_rotate": 5.0}')
    views.add(["a~aug1"], _vectors(1, 1))
    assert views.folder == tmp_path / "views" and views.ids == {"a~aug1"}
    assert json.loads((tmp_path / "views" / "meta.json").read_text())["fingerprints"] == {
        **PRINTS, "augmentation": '{"aug_rotate": 5.0}'}
    with pytest.raises(StaleCacheError, match="made by another augmentation;"):
        view_cache(cache, '{"aug_rotate": 9.0}')
    assert FeatureCache(tmp_path, PRINTS).ids == {"a"}, "views are not rows of the image cache"
