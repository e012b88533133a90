"""Shared fixtures: where the real samples live, and an isolated hybridcxr home for every test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _network import forbid_network

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # Keep ultralytics' config dir and fonts out of the user's home, and never let it go online.
    home = Path(config.rootpath) / ".pytest-home" if not os.environ.get("HYBRIDCXR_HOME") else None
    if home is not None:
        os.environ["HYBRIDCXR_HOME"] = str(home)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("HYBRIDCXR_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real chest X-ray samples beside the repository (``../shared/data``); skips where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real samples not found at {SHARED_DATA} (they live beside the repository, not in it)")
    return SHARED_DATA


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any socket connection outside loopback (see :func:`forbid_network`)."""
    attempts = forbid_network(monkeypatch)
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory):
    """Phantom DICOMs, their prepared dataset and a detector trained on them for 1 epoch at 128 px, made once
    per test session with every non-loopback connection forbidden. Returns ``(phantom, folder, DetectorRun)``;
    ``folder`` holds ``prepared/`` and ``run/``.

    Trained in fp32 from disk reads (``amp=false``, ``cache=false``), not the CPU defaults (bf16 where the CPU
    has it, images cached in RAM): a 1-epoch detector proposes many huge boxes that clip to the same
    whole-image box, and which of them NMS keeps hangs on IoUs at its threshold; the ONNX-against-PyTorch box
    tests compare exactly that, so the session's weights must not change with the machine. The defaults are
    trained and checked by tests/detect/test_train.py's resume test.
    """
    from hybridcxr.data.phantom import make_phantom_dataset
    from hybridcxr.data.prepare import PrepareOptions, prepare
    from hybridcxr.data.sources import load_source
    from hybridcxr.detect.train import detector_config, train_detector

    phantom = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(phantom, n=24, seed=5)
    out = tmp_path_factory.mktemp("det")
    prepare(load_source("vindr-cxr", phantom), out / "prepared", PrepareOptions(size=160, workers=0, progress=False))
    with pytest.MonkeyPatch.context() as mp:
        attempts = forbid_network(mp)
        result = train_detector(out / "prepared", out / "run",
                                detector_config({"epochs": 1, "imgsz": 128, "batch": 8, "workers": 0, "amp": False,
                                                 "ultralytics.cache": False}))
    assert not attempts, f"training tried the network: {attempts}"
    return phantom, out, result


TINY_CLASSIFIER = {"epochs": 8, "patience": 8, "backbone_size": 64, "hidden": [32]}


@pytest.fixture(scope="session")
def tiny_classifier(tiny_detector, tmp_path_factory):
    """A fusion classifier run trained briefly on the ``tiny_detector`` phantoms (64 px CNN, random init), made
    once per test session. Returns ``(folder, run, card)``; ``folder`` holds ``prepared/`` and the detector ``run/``.
    """
    from hybridcxr.classify.train import classifier_config, train_classifier

    _, folder, _ = tiny_detector
    out = tmp_path_factory.mktemp("cls") / "run"
    with pytest.warns(UserWarning, match="randomly initialised"):
        card = train_classifier(folder / "prepared", folder / "run", out, classifier_config(TINY_CLASSIFIER),
                                progress=False)
    return folder, out, card
