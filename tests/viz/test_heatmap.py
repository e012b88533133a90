"""Grad-CAM heatmaps: through the whole fusion model, back on the radiograph's own frame, no state left behind."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hybridcxr.classify.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, to_backbone_input
from hybridcxr.classify.fusion import FusionConfig, FusionHead
from hybridcxr.cli import app
from hybridcxr.viz import heatmap as hm
from hybridcxr.viz.heatmap import grad_cam, letterbox_window, target_layer, unletterbox

runner = CliRunner()


def fake(name: str = "resnet18", groups=("yolo", "cnn", "age", "sex"), shape=(90, 200), seed: int = 0):
    """An analyzer-like object (random CNN at 64 px, random head) and an analysis of one random image."""
    torch.manual_seed(seed)
    backbone = Backbone(name, input_size=64).eval()
    config = FusionConfig(findings=("Cardiomegaly", "Pleural effusion"), groups=groups,
                          dims={"yolo": 8, "cnn": backbone.dim}, hidden=(16,))
    analyzer = SimpleNamespace(backbone=backbone, head=FusionHead(config).eval(), config=config,
                               findings=list(config.findings))
    rng = np.random.default_rng(seed)
    radiograph = SimpleNamespace(pixels=rng.random(shape).astype(np.float32))
    analysis = SimpleNamespace(detection=SimpleNamespace(radiograph=radiograph, features=rng.random(8).astype(np.float32)),
                               probabilities={"Cardiomegaly": 0.2, "Pleural effusion": 0.7}, age_years=None, sex="F")
    return analyzer, analysis


def letterboxed(pixels: np.ndarray, size: int, pad: float) -> np.ndarray:
    """``pixels`` as to_backbone_input places them on its square (channel 0 un-normalised), padding = ``pad``."""
    def square(p):
        return (to_backbone_input(p, size)[0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).numpy()

    inside = square(np.ones_like(pixels)) > 0.5
    return np.where(inside, square(pixels), pad).astype(np.float32)


# -- the mapping back onto the image -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(90, 200), (200, 90), (37, 61), (64, 64), (300, 301)])
def test_letterbox_window_matches_to_backbone_input(shape):
    size = 64
    inside = letterboxed(np.ones(shape, np.float32), size, pad=0.0) > 0.5
    rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    assert letterbox_window(*shape, size) == (rows[0], cols[0], len(rows), len(cols))


@pytest.mark.parametrize("shape", [(90, 200), (200, 90)])
def test_cam_is_cropped_and_resized_onto_the_original_frame(monkeypatch, shape):
    """A known CAM over the square (the image's own pattern letterboxed, the padding at full heat) comes back
    as that pattern, with no heat leaking in from the padding: the crop lands exactly on the image."""
    height, width = shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pattern = 0.8 * np.sin(np.pi * (x + 0.5) / width) * np.sin(np.pi * (y + 0.5) / height) ** 2
    pattern[: height // 3, : width // 3] += 0.15  # an off-centre patch: a flip or transpose would show
    analyzer, analysis = fake(shape=shape)
    analysis.detection.radiograph.pixels = pattern.astype(np.float32)
    seen = {}

    def known_cam(model, layer, x_in, index):
        seen.update(index=index, shape=tuple(x_in.shape))
        return letterboxed(pattern.astype(np.float32), x_in.shape[-1], pad=1.0)

    monkeypatch.setattr(hm, "_cam", known_cam)
    finding, heat = grad_cam(analyzer, analysis, "Cardiomegaly")
    assert finding == "Cardiomegaly" and seen == {"index": 0, "shape": (1, 3, 64, 64)}
    assert heat.shape == shape and heat.dtype == np.float32
    assert np.abs(heat - pattern).max() < 0.1  # 64 px and back: resampling error only
    assert np.abs(heat - pattern).mean() < 0.02
    for edge in (heat[0], heat[-1], heat[:, 0], heat[:, -1]):  # padding at 1.0 one pixel off would show here
        assert edge.max() < 0.5


def test_unletterbox_rejects_a_non_square_map():
    with pytest.raises(ValueError, match="square"):
        unletterbox(np.zeros((4, 5)), (10, 10))


# -- Grad-CAM itself, on small random models -----------------------------------------------------------------

@pytest.mark.parametrize("name, layer", [("resnet18", "layer4"), ("densenet121", "norm5")])
def test_grad_cam_leaves_no_hooks_grads_or_mode_changes(name, layer):
    analyzer, analysis = fake(name)
    backbone = analyzer.backbone
    assert target_layer(backbone) is dict(backbone.body.named_modules())[
        layer if name == "resnet18" else f"features.{layer}"]
    next(backbone.parameters()).requires_grad_(False)  # a mixed state to restore
    analyzer.head.train()  # a mode to restore (the CAM itself runs in eval mode)
    flags = [p.requires_grad for p in (*backbone.parameters(), *analyzer.head.parameters())]
    finding, heat = grad_cam(analyzer, analysis, "Pleural effusion")
    assert finding == "Pleural effusion" and heat.shape == (90, 200)
    assert 0.0 <= heat.min() and heat.max() <= 1.0 and heat.max() > heat.min()
    assert flags == [p.requires_grad for p in (*backbone.parameters(), *analyzer.head.parameters())]
    assert all(p.grad is None for p in (*backbone.parameters(), *analyzer.head.parameters()))
    assert analyzer.head.training and not backbone.training
    assert not any(m._forward_hooks or m._backward_hooks for m in backbone.modules())


def test_grad_cam_runs_inside_inference_mode():
    analyzer, analysis = fake()
    with torch.inference_mode():
        assert grad_cam(analyzer, analysis)[1].shape == (90, 200)


def test_grad_cam_explains_the_whole_fusion_model(monkeypatch):
    """The CAM's model maps the image to the head's logits, the image's yolo vector and demographics fixed."""
    analyzer, analysis = fake()
    captured = {}

    def spy(model, layer, x, index):
        with torch.no_grad():
            captured["logits"] = model(x)
        return np.zeros((x.shape[-1],) * 2, np.float32)

    monkeypatch.setattr(hm, "_cam", spy)
    finding, _ = grad_cam(analyzer, analysis)
    assert finding == "Pleural effusion"  # the most probable of the analysis
    from hybridcxr.classify.backbone import embed
    from hybridcxr.classify.fusion import assemble_inputs

    cnn = embed(analyzer.backbone, [analysis.detection.radiograph.pixels])
    inputs = assemble_inputs(analyzer.config, yolo=analysis.detection.features[None], cnn=cnn,
                             age_years=[np.nan], sex=["F"])
    with torch.no_grad():
        expected = analyzer.head(inputs)
    torch.testing.assert_close(captured["logits"], expected, rtol=1e-4, atol=1e-5)


def test_unknown_finding_and_a_head_without_the_cnn_are_refused():
    analyzer, analysis = fake()
    with pytest.raises(ValueError, match="unknown finding 'Pneumothorax'.*Cardiomegaly"):
        grad_cam(analyzer, analysis, "Pneumothorax")
    analyzer, analysis = fake(groups=("yolo", "age", "sex"))
    with pytest.raises(ValueError, match="does not use the CNN: no Grad-CAM"):
        grad_cam(analyzer, analysis)


# -- a trained classifier run: the Analyzer, classify_files and the CLI --------------------------------------

@pytest.fixture(scope="module")
def analyzed(tiny_classifier):
    from hybridcxr.pipeline import Analyzer

    folder, run, _ = tiny_classifier
    analyzer = Analyzer(run)
    manifest = pd.read_csv(folder / "prepared" / "manifest.csv", dtype={"image_id": str})
    paths = [folder / "prepared" / p for p in manifest["image"][:3]]
    return analyzer, list(analyzer.analyze_paths(paths)), paths


def test_grad_cam_of_a_trained_classifier(analyzed):
    analyzer, analyses, _ = analyzed
    spreads = []
    for analysis in analyses:
        finding, heat = grad_cam(analyzer, analysis)
        assert finding == max(analysis.probabilities, key=analysis.probabilities.get)
        assert heat.shape == analysis.detection.radiograph.pixels.shape and heat.dtype == np.float32
        assert 0.0 <= heat.min() and heat.max() <= 1.0
        spreads.append(heat.max() - heat.min())
    # an all-zero map is a legitimate answer (no cell raised the logit: ~1 image in 8 with this tiny 2x2-cell
    # CNN), so a trained model's maps must vary on most images, not on every one
    assert sum(spread > 0.1 for spread in spreads) >= 2, spreads
    assert not any(m._forward_hooks for m in analyzer.backbone.modules())
    assert not analyzer.backbone.training and not analyzer.head.training
    with pytest.raises(ValueError, match="unknown finding"):
        grad_cam(analyzer, analyses[0], "Not a finding")


def test_classify_files_adds_the_heatmap_panel(analyzed, tmp_path):
    from hybridcxr.pipeline import classify_files

    analyzer, _, paths = analyzed
    widths = {}
    for heatmap in (False, True):
        out = tmp_path / str(heatmap)
        result = classify_files(paths, analyzer, out, overlay=True, heatmap=heatmap, progress=False)
        assert result.done == len(paths)
        widths[heatmap] = {p.name: Image.open(p).width for p in sorted((out / "overlays").glob("*.png"))}
    assert widths[True].keys() == widths[False].keys() and len(widths[True]) == len(paths)
    for name, width in widths[True].items():  # one more panel, as wide as the image
        assert width > widths[False][name] + 0.9 * Image.open(paths[0]).width
    with pytest.raises(ValueError, match="overlay=True"):
        classify_files(paths, analyzer, tmp_path / "x", heatmap=True, progress=False)


def test_cli_heatmap_option(analyzed, tiny_classifier, tmp_path):
    _, _, paths = analyzed
    _, run, _ = tiny_classifier
    result = runner.invoke(app, ["classify", str(paths[0]), "--model", str(run), "--out", str(tmp_path / "a"),
                                 "--heatmap"])
    assert result.exit_code == 2 and "--overlay" in result.output
    result = runner.invoke(app, ["classify", str(paths[0]), "--model", str(run), "--out", str(tmp_path / "b"),
                                 "--overlay", "--heatmap", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "b" / "overlays").glob("*.png"))) == 1
