"""Pooled features of a trained YOLOv8: what the detector "sees", as one vector per image for the classifier.

The vector is the global average of the SPPF output (the backbone's summary of the whole image) and of the
three neck outputs that feed the Detect head (P3/8, P4/16, P5/32), concatenated in that order: 256 + 64 +
128 + 256 = 704 values for YOLOv8n, and the card records the dimension. They are taken with forward hooks
during the detection forward pass, so detection and features cost one pass.
``Detector.predict(..., features=True)`` returns them with the boxes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np


def feature_layers(model: Any) -> tuple[list[int], list[int]]:
    """Indices of the SPPF layer and of the Detect head's inputs, and their channel counts."""
    import torch
    from ultralytics.nn.modules import SPPF

    layers = [m.i for m in model.model if isinstance(m, SPPF)][-1:]
    head = model.model[-1]
    layers += list(head.f) if isinstance(head.f, (list, tuple)) else [head.f]
    hooks = FeatureHooks(model, layers)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), hooks.capture() as pooled:
        model(torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device))
        dims = [int(part.shape[1]) for part in pooled()]
    model.train(was_training)
    return layers, dims


class FeatureHooks:
    """Forward hooks that global-average-pool the outputs of chosen layers while the model runs."""

    def __init__(self, model: Any, layers: Sequence[int]) -> None:
        self.model, self.layers = model, list(layers)

    @contextmanager
    def capture(self, enabled: bool = True) -> Iterator[Callable[[], np.ndarray]]:
        """Within the block, forward passes record pooled outputs; the yielded callable returns them per layer."""
        if not enabled:
            yield lambda: []
            return
        with pooled_outputs(self.model, self.layers) as tensors:
            yield lambda: [t.cpu().numpy().astype(np.float32) for t in tensors()]


@contextmanager
def pooled_outputs(model: Any, layers: Sequence[int]) -> Iterator[Callable[[], list[Any]]]:
    """Within the block, forward passes of ``model`` record the global average of the chosen layers' outputs; the
    yielded callable returns them as tensors, in ``layers`` order (part of the graph when the model is traced,
    which is how the ONNX export gives the pooled features as an output)."""
    store: dict[int, Any] = {}
    handles = []
    for index in layers:
        def hook(_module, _inputs, output, index=index):  # type: ignore[no-untyped-def]
            store[index] = output.float().mean(dim=(2, 3))
        handles.append(model.model[index].register_forward_hook(hook))
    try:
        yield lambda: [store[i] for i in layers]
    finally:
        for handle in handles:
            handle.remove()


def concat_pooled(parts: Sequence[np.ndarray]) -> np.ndarray:
    """One (N, D) feature matrix from the per-layer pooled outputs."""
    return np.concatenate(parts, axis=1)
