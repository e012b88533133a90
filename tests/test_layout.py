"""Folder layouts: every path of a prepared dataset, a detector run and a classifier run spelled once."""

from __future__ import annotations

import pytest

from hybridcxr.errors import InputError
from hybridcxr.layout import ClassifierLayout, DetectorLayout, PreparedLayout


def test_paths_are_where_the_jobs_write_them(tmp_path):
    prepared, detector, classifier = PreparedLayout(tmp_path), DetectorLayout(tmp_path), ClassifierLayout(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in (prepared.manifest, prepared.boxes, prepared.summary,
                                                          prepared.data_yaml, prepared.images("val"),
                                                          prepared.labels("val"))] == [
        "manifest.csv", "boxes.csv", "summary.json", "data.yaml", "images/val", "labels/val"]
    assert [p.relative_to(tmp_path).as_posix() for p in (detector.weights, detector.card, detector.last_pt,
                                                          detector.done_marker)] == [
        "weights/best.safetensors", "weights/best.json", "weights/last.pt", "weights/training-done.json"]
    assert [p.relative_to(tmp_path).as_posix() for p in (classifier.card, classifier.backbone, classifier.detector,
                                                          classifier.features)] == [
        "model/card.json", "backbone.safetensors", "detector", "features"]


def test_a_folder_without_a_classifier_is_refused_naming_it(tmp_path):
    with pytest.raises(InputError, match="not a classifier run folder") as err:
        ClassifierLayout(tmp_path).require()
    assert err.value.path == str(tmp_path)
    ClassifierLayout(tmp_path).card.parent.mkdir(parents=True)
    ClassifierLayout(tmp_path).card.write_text("{}")
    assert ClassifierLayout(tmp_path).require().root == tmp_path


def test_the_trained_runs_match_the_layout(tiny_classifier):
    folder, run, _ = tiny_classifier
    assert ClassifierLayout(run).require().backbone.is_file() and ClassifierLayout(run).features.is_dir()
    prepared = PreparedLayout(folder / "prepared")
    assert DetectorLayout(folder / "run").weights.is_file() and prepared.manifest.is_file()
    for split in ("train", "val"):  # one label file per prepared image, as ultralytics pairs them
        images, labels = sorted(prepared.images(split).glob("*.png")), sorted(prepared.labels(split).glob("*.txt"))
        assert images and [p.stem for p in images] == [p.stem for p in labels]
