"""Grad-CAM heatmaps of the classifier's CNN, mapped back onto the radiograph (the overlay's heatmap panel).

What it shows: Grad-CAM (Selvaraju et al., 2017, through the ``grad-cam`` library) weights each channel of the
CNN's last convolutional block by the mean gradient of one finding's logit with respect to it, sums the
channels and keeps the positive part: the map marks where the CNN's features pushed that logit *up*. The
gradient runs through the whole fusion model (CNN, then the fusion head with the image's own detector vector,
age and sex held fixed), so it explains the classifier's actual output for that finding, not the CNN alone.

Its limits, to read it right:

- it is coarse: one cell per 32 input pixels, 7x7 cells over the 224 px square the CNN sees (fewer for a
  smaller ``input_size``), smoothed by the upsampling; it points at a region, it does not outline a lesion;
- it shows only the CNN's share of the decision: what the detector features and the demographics contribute
  is not in the picture (and a head without the CNN gets no heatmap at all);
- it is scaled per image (the hottest cell of the network's square input is 1, even for a finding at 1 %
  probability), so compare images by their probabilities, not by their heat; where the CNN looked at the
  letterbox padding rather than the film, the film stays cool; an all-zero map means no cell raised the logit;
- it is not a segmentation, nor evidence that the finding is present.

>>> finding, heat = grad_cam(analyzer, analysis)  # doctest: +SKIP
>>> save_overlay("overlay.png", analysis.detection.radiograph, heatmap=heat, title=f"Grad-CAM: {finding}")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from hybridcxr.findings import canonical

NO_CNN = "this classifier does not use the CNN: no Grad-CAM"


class FusionModel(nn.Module):
    """Image tensor ``(N, 3, S, S)`` -> backbone -> fusion head -> logits, the other feature groups held fixed."""

    def __init__(self, backbone: nn.Module, head: nn.Module, fixed: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.backbone = backbone  # registered first: the Grad-CAM library runs where the first parameter lives
        self.head = head
        self.fixed = dict(fixed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head({**self.fixed, "cnn": self.backbone(x)})


def target_layer(backbone: nn.Module) -> nn.Module:
    """The CNN's last convolutional block: ResNet's ``layer4``; DenseNet's ``features[-1]`` (``norm5``, the
    normalised output of the last dense block, as the grad-cam library recommends for DenseNets)."""
    body = getattr(backbone, "body", backbone)
    if hasattr(body, "layer4"):
        return body.layer4
    if hasattr(body, "features"):
        return body.features[-1]
    raise ValueError(f"no Grad-CAM target layer known for a {type(body).__name__} backbone")


def letterbox_window(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """``(top, left, new_h, new_w)``: where :func:`~hybridcxr.classify.backbone.to_backbone_input` puts an
    ``(height, width)`` image on its ``size x size`` square (same arithmetic, checked by the tests)."""
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def unletterbox(square: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Map a ``(size, size)`` map over the CNN's letterboxed input back onto the original ``(H, W)`` frame:
    crop the padding away, resize (bilinear) to ``shape``; values are clipped to [0, 1], not rescaled."""
    square = np.asarray(square, dtype=np.float32)
    if square.ndim != 2 or square.shape[0] != square.shape[1]:
        raise ValueError(f"expected a square (size, size) map, got shape {square.shape}")
    height, width = int(shape[0]), int(shape[1])
    top, left, new_h, new_w = letterbox_window(height, width, square.shape[0])
    crop = torch.from_numpy(np.ascontiguousarray(square[top:top + new_h, left:left + new_w]))
    if (new_h, new_w) != (height, width):
        crop = nn.functional.interpolate(crop[None, None], size=(height, width), mode="bilinear",
                                         align_corners=False)[0, 0]
    return np.clip(np.nan_to_num(crop.numpy(), nan=0.0), 0.0, 1.0).astype(np.float32)


def grad_cam(analyzer: Any, analysis: Any, finding: str | None = None) -> tuple[str, np.ndarray]:
    """Grad-CAM of the classifier's CNN for one finding's logit, on the radiograph's own pixel frame.

    Args:
        analyzer: a :class:`hybridcxr.pipeline.Analyzer` (its ``backbone``, ``head``, ``config``, ``findings``).
        analysis: the image's :class:`hybridcxr.pipeline.Analysis` (pixels, detector vector, age, sex).
        finding: the finding to explain; default: the one with the highest probability in ``analysis``.

    Returns:
        ``(finding, heatmap)``: the heatmap is float32 ``(H, W)`` in [0, 1], the radiograph's shape.

    Runs on the device of the analyzer's CNN in eval mode; every module's training mode and every parameter's
    ``requires_grad`` are restored afterwards (gradients are taken through the input; the library's
    ``zero_grad`` leaves every parameter's ``.grad`` at None), and the library's hooks are always removed. Not to be run while the same
    CNN is running elsewhere (another thread's forward pass would reach the hooks).

    Raises:
        ValueError: the classifier does not use the CNN, or ``finding`` is not one it predicts.
    """
    from hybridcxr.classify.fusion import assemble_inputs

    config = analyzer.config
    if "cnn" not in config.groups:
        raise ValueError(f"{NO_CNN} (its feature groups: {', '.join(config.groups)})")
    findings = list(analyzer.findings)
    if finding is None:
        probabilities = analysis.probabilities
        finding = max(findings, key=lambda f: float(probabilities[f]))
    elif finding not in findings:
        if canonical(finding) not in findings:
            raise ValueError(f"unknown finding {finding!r}; this classifier predicts {', '.join(findings)}")
        finding = canonical(finding)
    index = findings.index(finding)

    detection = analysis.detection
    if "yolo" in config.groups and detection.features is None:
        raise ValueError("the analysis carries no detector features; its classifier uses them")
    yolo = np.asarray(detection.features, dtype=np.float32)[None] if "yolo" in config.groups else None
    age = analysis.age_years
    fixed = assemble_inputs(config, yolo=yolo, cnn=np.zeros((1, config.dims["cnn"]), np.float32),
                            age_years=[np.nan if age is None else age], sex=[analysis.sex])
    del fixed["cnn"]

    backbone, head = analyzer.backbone, analyzer.head
    model = FusionModel(backbone, head, fixed)
    device = next(backbone.parameters()).device
    pixels = detection.radiograph.pixels
    modes = {module: module.training for module in model.modules()}
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            x = backbone.prepare(pixels).to(device).requires_grad_(True)
            square = _cam(model, target_layer(backbone), x, index)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for module, mode in modes.items():
            module.train(mode)
    return finding, unletterbox(square, pixels.shape)


def _cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, index: int) -> np.ndarray:
    """The library's Grad-CAM of logit ``index`` for the single image ``x``: ``(S, S)`` in [0, 1].

    The hooks are released in ``finally`` rather than by the library's ``with`` block, whose ``__exit__``
    prints and swallows an IndexError.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = GradCAM(model=model, target_layers=[layer])
    try:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(index)])[0]
    finally:
        cam.activations_and_grads.release()
        cam.outputs = None  # drop the retained graph now
