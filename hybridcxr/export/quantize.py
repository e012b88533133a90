"""int8 detector graphs (``hybridcxr export RUN --format onnx --int8``) and what "the same outputs" means for them.

The detector's fp32 graph is quantised statically by onnxruntime's own tool (QDQ format: weights int8 per
output channel, activations uint8 per tensor, min-max ranges) on the run's own images: ranges are measured on
up to :data:`CALIBRATION` training images of the prepared dataset the detector was trained on, and the result is
checked on up to :data:`CHECK` validation images, which calibration never saw (``--calibration DIR`` uses a
folder of the user's images instead: three in four calibrate, every fourth checks).

Two parts stay fp32, because one uint8 scale cannot hold them:

- the Detect head's decoding (distribution-to-box softmax, anchors, strides, and the concatenation of boxes in
  pixels with scores in [0, 1]: on one scale the scores vanish; measured: scores off by up to 0.80);
- the pooled-feature means the classifier reads (quantised, they were off by 14% of their largest value).

Where the check fails, the first layers are kept fp32 too, two more at a time (:data:`FP32_LEADING`), and
the record names them; where it fails even so, nothing is written and the detector keeps to fp32.

int8 also shifts each pooled feature a little, the same way on most images (rounding is biased after SiLU);
the classifier reads those features. Each written graph therefore adds back the mean shift measured on the
calibration images (bias correction, as in Nagel et al. 2019, "Data-Free Quantization", section 4.2, at the
one output where it matters): with every layer int8, it halved how far the demo's probabilities moved (0.081
to 0.044) and changed little on NIH's detector (0.025 to 0.027; that graph is not the one written, whose
features needed the first 4 layers fp32: 0.016 there).

int8 cannot match fp32 to rounding, so its outputs are held to :data:`INT8_TOLERANCE` (scores in absolute
terms, boxes as a fraction of the image size, features relative to the largest): looser than the fp32
export's, stated in each record and measured there. Exported with a classifier run, the run's probabilities
on the same images are measured too (the head reads the int8 features): the search goes on to more fp32
layers until they are within ``probabilities`` as well; where no attempt gets there, the first graph within
the rest is written for detection and ``classify``, gated ``detect`` and the service refuse it
(:func:`~hybridcxr.export.record.classification_refusal`).

The CNN and the fusion head are not quantised: ResNet-18 ran at 0.67x its fp32 graph in int8 on the CPU we
measured (onnxruntime 1.30), and the head is a few matrix products.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridcxr.errors import InputError

ENFORCED = ("scores", "boxes", "features")  # what a graph must keep to be written
CALIBRATION = 64  # images whose activations set the int8 ranges
CHECK = 32  # held-out images the int8 graph is checked on
#: How many of the first layers to keep fp32, tried in turn until the check holds (int8 errors grow through
#: the early, narrow layers: on a detector trained on NIH images, features were off by 12% of their largest
#: value with every layer in int8, 8% with the first four in fp32, at 1.32x rather than 1.34x the fp32 graph).
FP32_LEADING = (0, 2, 4, 6)


@dataclass(frozen=True)
class Int8Tolerance:
    """How far an int8 detector graph may be from PyTorch's fp32 outputs on real images.

    ``scores``: largest absolute difference of any class score (in [0, 1]) of any anchor; ``boxes``: largest
    difference of a box coordinate, as a fraction of the image size, over the anchors PyTorch scores at least
    ``scored`` (the others' boxes are never kept); ``features``: largest difference of a pooled feature,
    relative to the largest feature magnitude. A graph must keep these three to be written. A classifier
    run's export also measures ``probabilities``, the largest absolute difference of any calibrated
    probability from the run's PyTorch path on those images: a graph beyond it still detects, but does not
    classify (:func:`~hybridcxr.export.record.classification_refusal`).
    """

    scores: float = 0.1
    boxes: float = 0.03
    features: float = 0.1
    scored: float = 0.05
    probabilities: float = 0.05

    def measure(self, onnx_out: tuple[np.ndarray, np.ndarray], torch_out: tuple[Any, np.ndarray],
                imgsz: int) -> dict[str, float]:
        """The three differences of :class:`Int8Tolerance` between ``(output0, features)`` pairs."""
        raw, feats = (np.asarray(a, dtype=np.float64) for a in onnx_out)
        ref, ref_feats = (np.asarray(b, dtype=np.float64) for b in torch_out)
        scores = np.abs(raw[:, 4:] - ref[:, 4:])
        scored = (ref[:, 4:].max(axis=1) >= self.scored)[:, None, :]
        boxes = np.where(scored, np.abs(raw[:, :4] - ref[:, :4]), 0.0)
        scale = max(float(np.abs(ref_feats).max()), 1e-12)
        return {"scores": float(scores.max(initial=0.0)), "boxes": float(boxes.max(initial=0.0)) / imgsz,
                "features": float(np.abs(feats - ref_feats).max(initial=0.0)) / scale}

    def failures(self, measured: dict[str, float]) -> list[str]:
        """The measures of :meth:`measure` beyond this tolerance (NaN is always beyond)."""
        return [k for k, v in measured.items() if k in ENFORCED and not v <= getattr(self, k)]

    def classifies(self, measured: dict[str, float]) -> bool:
        """Whether a graph with these measures may feed a classifier: probabilities within (or not measured)."""
        moved = measured.get("probabilities")
        return moved is None or bool(moved <= self.probabilities)

    def as_dict(self) -> dict[str, Any]:
        """The tolerance as an export record stores it (``kind: int8`` tells it from the fp32 one)."""
        return {"kind": "int8", "scores": self.scores, "boxes": self.boxes, "features": self.features,
                "scored": self.scored, "probabilities": self.probabilities}


INT8_TOLERANCE = Int8Tolerance()


def calibration_files(card: dict[str, Any], weights: Path, folder: Path | None = None) -> tuple[list[Path], list[Path]]:
    """``(calibrate, check)`` image files: from ``folder`` when given, else the training and validation images
    of the prepared dataset the detector's card names; InputError naming what is missing."""
    if folder is not None:
        from hybridcxr.pipeline import collect_inputs

        files = sorted(collect_inputs([folder]))
        if len(files) < 4:
            raise InputError(folder, f"--calibration needs at least 4 images (DICOM, PNG, JPEG); found {len(files)}")
        check = files[3::4][:CHECK]
        return [p for i, p in enumerate(files) if i % 4 != 3][:CALIBRATION], check
    from hybridcxr.layout import PreparedLayout

    if not card.get("data"):
        raise InputError(weights, "int8 export calibrates on the detector's training images, but its card names "
                                  "no prepared dataset; pass --calibration DIR (images of the kind it will see)")
    prepared = Path(str(card["data"])).parent
    train, val = (sorted(PreparedLayout(prepared).images(split).glob("*.png")) for split in ("train", "val"))
    if not train or not val:
        raise InputError(weights, f"int8 export calibrates on the detector's training images, but {prepared} "
                                  "holds no prepared train and val images; pass --calibration DIR (images of the "
                                  "kind the detector will see)")
    return train[:CALIBRATION], val[:CHECK]


def letterboxed(detector: Any, radiographs: list[Any]) -> np.ndarray:
    """``(N, S, S)`` uint8 images of decoded radiographs as the detector's ``forward`` takes them."""
    return np.stack([detector.prepare(r).image for r in radiographs])


def kept_fp32(graph: Any, detect_layer: int, leading: int = 0) -> list[str]:
    """Names of the nodes to leave fp32: the Detect layer's decoding (all of it but its two conv branches,
    ``cv2`` boxes and ``cv3`` classes), the pooled-feature means and what joins them into ``features``, and
    the first ``leading`` layers."""
    prefix = f"/model.{detect_layer}/"
    first = tuple(f"/model.{i}/" for i in range(leading))
    return [n.name for n in graph.node
            if (n.name.startswith(prefix) and "/cv2." not in n.name and "/cv3." not in n.name)
            or n.op_type == "ReduceMean" or "features" in n.output or (first and n.name.startswith(first))]


def quantize_detector(src: Path, dest: Path, images: np.ndarray, detect_layer: int, input_name: str,
                      leading: int = 0) -> None:
    """Write the int8 (QDQ) version of the fp32 detector graph ``src`` to ``dest``, its activation ranges set
    by ``images`` (letterboxed uint8, scaled as ``forward`` scales them), its first ``leading`` layers fp32."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from hybridcxr.export.runtime import detector_input

    batches = [{input_name: detector_input(images[i:i + 8])} for i in range(0, len(images), 8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    pre = dest.with_name(dest.name + ".pre.onnx")
    root, notes = logging.getLogger(), _QuantiserNotes()
    root.addFilter(notes)  # the tool logs notes ("Expected bias ... to be an initializer") on the root logger
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        keep = kept_fp32(onnx.load(str(pre)).graph, detect_layer, leading)
        quantize_static(str(pre), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep)
    finally:
        root.removeFilter(notes)
        pre.unlink(missing_ok=True)


def correct_features(path: Path, images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Add to the int8 detector graph at ``path`` the mean shift of its pooled features on ``images`` (the
    calibration images, letterboxed uint8) from ``reference`` (PyTorch's fp32 features of them), as a
    constant after its ``features`` output; returns that shift, one value per feature. For a graph fresh
    from :func:`quantize_detector` only (a second call would add a second shift)."""
    import onnx
    from onnx import helper, numpy_helper

    from hybridcxr.export.runtime import DETECTOR_INPUT, DETECTOR_OUTPUTS, detector_input, open_session

    name, session = DETECTOR_OUTPUTS[1], open_session(path)
    int8 = np.concatenate([session.run([name], {DETECTOR_INPUT: detector_input(images[i:i + 8])})[0]
                           for i in range(0, len(images), 8)])
    shift = (np.asarray(reference, dtype=np.float64) - int8).mean(axis=0).astype(np.float32)
    model = onnx.load(str(path))
    producer = next(n for n in model.graph.node if name in n.output)
    producer.output[list(producer.output).index(name)] = f"{name}_int8"
    model.graph.initializer.append(numpy_helper.from_array(shift, f"{name}_shift"))
    model.graph.node.append(helper.make_node("Add", [f"{name}_int8", f"{name}_shift"], [name],
                                             name=f"/{name}/shift_correction"))
    onnx.save(model, str(path))
    return shift


class _QuantiserNotes(logging.Filter):
    """Drops the quantiser's own warnings and notes, only those (errors and other modules' records pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "quantization" not in record.pathname.replace("\\", "/")
