"""``--runtime onnx``: the exported graphs run by onnxruntime on the CPU, every core, inside the usual classes.

Only the networks change. :class:`OnnxDetector` is a :class:`~hybridcxr.detect.predict.Detector` whose
``forward`` runs ``best.onnx`` (the Detect head's output and the pooled features in one graph), so letterboxing,
ultralytics' NMS, box mapping, TTA and threaded decoding are the PyTorch path's own code and the boxes agree
within :data:`~hybridcxr.export.record.TOLERANCE`. :class:`OnnxBackbone` embeds as
:func:`~hybridcxr.classify.backbone.embed` does (the CNN's own pixel preparation, then the graph), and
:class:`OnnxHead` gives the fusion head's logits; calibration, thresholds and the lung model stay as they are.

``--runtime onnx-int8`` is the same with the detector's int8 graph (``best.int8.onnx``, made by
``hybridcxr export --int8``; :mod:`hybridcxr.export.quantize`): its outputs are within that module's looser
int8 tolerance; the classifier's probabilities move with the int8 pooled features, and the Analyzer refuses an
int8 graph whose record says they moved beyond that tolerance's ``probabilities``.

Every file is checked against its export record before a session opens (:func:`~hybridcxr.export.record.check_export`):
a stale or changed ONNX file is refused with its name. The PyTorch models are loaded too: the checks that a
classifier run's parts belong together read their weights, and Grad-CAM heatmaps need the CNN's gradients.

>>> detector = open_detector("runs/det", runtime="onnx")                       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridcxr.detect.predict import Detector
from hybridcxr.device import cpu_threads
from hybridcxr.detect.weights import resolve_weights
from hybridcxr.errors import ConfigError, InputError
from hybridcxr.export.record import check_export
from hybridcxr.layout import ClassifierLayout

#: The runtimes ``detect``, ``classify``, the Analyzer and the service run on; ``onnx-int8`` is ``onnx`` with
#: the detector's int8 graph (:mod:`hybridcxr.export.quantize`; the CNN and the head stay fp32).
RUNTIMES: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
ONNX_RUNTIMES: tuple[str, ...] = ("onnx", "onnx-int8")
#: Names of the detector graph's input and outputs (the exporter's ``images``/``output0``, our ``features``).
DETECTOR_INPUT, DETECTOR_OUTPUTS = "images", ("output0", "features")
BACKBONE_INPUT, BACKBONE_OUTPUT = "pixels", "embedding"
HEAD_OUTPUT = "logits"


def detector_onnx(weights: Path, int8: bool = False) -> Path:
    """Where the ONNX export of a detector's ``.safetensors`` weights lives: beside them, as ``.onnx`` (its
    int8 version as ``.int8.onnx``)."""
    return Path(weights).with_suffix(".int8.onnx" if int8 else ".onnx")


def check_runtime(runtime: str, device: str | None = None) -> str:
    """``runtime`` when it is one of :data:`RUNTIMES` and fits ``device``; ConfigError otherwise."""
    if runtime not in RUNTIMES:
        raise ConfigError("--runtime", f"must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if runtime in ONNX_RUNTIMES and device not in (None, "cpu"):
        raise ConfigError("--runtime", f"{runtime} runs on the CPU (onnxruntime); it cannot use --device {device}")
    return runtime


def open_session(path: Path) -> Any:
    """An onnxruntime CPU session on every core (intra-op threads: :func:`cpu_threads`), all graph
    optimisations on, threads that sleep when idle; InputError naming the file when onnxruntime cannot load it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    options.inter_op_num_threads = 1  # the graphs are one chain of convolutions: nothing to run side by side
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; a failure is reported below with the file's name
    # Idle intra-op threads sleep instead of spinning: the decoder threads share the cores, and so do other jobs
    # on a shared machine; with 2 cores under load, YOLOv8n at 320 px ran 14.6 images/s so against 7.8 spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for an unreadable graph
        raise InputError(path, f"onnxruntime cannot load it ({type(err).__name__}: {str(err)[:200]})") from None


class OnnxDetector(Detector):
    """A :class:`Detector` whose network runs in onnxruntime (see the module doc)."""

    def __init__(self, base: Detector, session: Any, record: Mapping[str, Any], path: Path | None = None) -> None:
        super().__init__(base.model, base.card, "cpu", base.config)
        self.session, self.record, self.path = session, dict(record), path

    @classmethod
    def load(cls, weights: str | Path, device: str | None = None,
             config: dict[str, Any] | None = None, int8: bool = False) -> OnnxDetector:
        """The detector of ``weights`` (a run folder or ``.safetensors``) with its checked ONNX export (its
        int8 graph with ``int8``)."""
        check_runtime("onnx-int8" if int8 else "onnx", device)
        path = resolve_weights(weights)
        onnx_file = detector_onnx(path, int8)
        record = check_export(onnx_file, path, "detector", int8)
        return cls(Detector.load(path, device="cpu", config=config), open_session(onnx_file), record, onnx_file)

    def forward(self, images: np.ndarray, features: bool = False) -> tuple[Any, np.ndarray | None]:
        """The graph on letterboxed ``(N, S, S)`` uint8 images, scaled as the PyTorch path scales them."""
        raw, pooled = self.session.run(list(DETECTOR_OUTPUTS), {DETECTOR_INPUT: detector_input(images)})
        return raw, pooled if features else None


def detector_input(images: np.ndarray) -> np.ndarray:
    """Letterboxed ``(N, S, S)`` uint8 images as the detector graph's ``(N, 3, S, S)`` float32 input in [0, 1]
    (grey repeated to three channels, as the PyTorch path's ``forward`` feeds the network)."""
    return np.ascontiguousarray(np.repeat(images[:, None], 3, axis=1), dtype=np.float32) / np.float32(255.0)


def open_detector(weights: str | Path, device: str | None = None, runtime: str = "torch",
                  config: dict[str, Any] | None = None) -> Detector:
    """``Detector.load`` for ``runtime="torch"``, :meth:`OnnxDetector.load` for ``"onnx"`` and ``"onnx-int8"``."""
    if check_runtime(runtime, device) in ONNX_RUNTIMES:
        return OnnxDetector.load(weights, device=device, config=config, int8=runtime == "onnx-int8")
    return Detector.load(weights, device=device, config=config)


class OnnxBackbone:
    """The CNN's ONNX graph behind the torch :class:`~hybridcxr.classify.backbone.Backbone`'s pixel preparation."""

    def __init__(self, backbone: Any, session: Any) -> None:
        self.backbone, self.session = backbone, session

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """``(N, dim)`` float32 embeddings of grey images in [0, 1], as :func:`~hybridcxr.classify.backbone.embed`."""
        import torch

        out = np.empty((len(images), self.backbone.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                batch = torch.cat([self.backbone.prepare(image) for image in chunk]).numpy()
                out[start:start + len(chunk)] = self.session.run([BACKBONE_OUTPUT], {BACKBONE_INPUT: batch})[0]
        return out


class OnnxHead:
    """The fusion head's ONNX graph: one input per feature group of its config, the logits out."""

    def __init__(self, groups: Sequence[str], session: Any) -> None:
        self.groups, self.session = tuple(groups), session

    def logits(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """``(N, C)`` logits from :func:`~hybridcxr.classify.fusion.assemble_inputs`' output."""
        feeds = {g: np.ascontiguousarray(np.asarray(inputs[g], dtype=np.float32)) for g in self.groups}
        return self.session.run([HEAD_OUTPUT], feeds)[0]


@dataclass(frozen=True)
class OnnxClassifier:
    """The CNN and fusion head graphs of a classifier run."""

    backbone: OnnxBackbone
    head: OnnxHead


def open_classifier(layout: ClassifierLayout, backbone: Any, groups: Sequence[str]) -> OnnxClassifier:
    """The checked CNN and head graphs of a classifier run (``backbone``: its loaded torch CNN)."""
    from hybridcxr.classify.fusion import checkpoint_paths

    weights, _ = checkpoint_paths(layout.model)
    check_export(layout.onnx_backbone, layout.backbone, "backbone")
    check_export(layout.onnx_head, weights, "head")
    return OnnxClassifier(OnnxBackbone(backbone, open_session(layout.onnx_backbone)),
                          OnnxHead(groups, open_session(layout.onnx_head)))
