"""``hybridcxr export RUN --format onnx``: the run's networks as ONNX files beside their cards, checked on export.

What is written, each file with its export record ``X.onnx.json`` (:mod:`hybridcxr.export.record`):

- a detector run: ``weights/best.onnx`` beside ``weights/best.json``;
- a classifier run: ``detector/best.onnx`` (its detector), ``model/backbone.onnx`` (the CNN) and
  ``model/head.onnx`` (the fusion head) beside ``model/card.json``. The lung segmenter, when the run has one,
  stays on PyTorch.

The detector goes through ultralytics' own exporter (:func:`hybridcxr.detect.ultralytics_env.export_onnx`) with
one change: the graph also outputs the pooled features the classifier fuses (``features``, ``(N, D)``), beside
the Detect head's ``output0`` (``(N, 4 + C, anchors)``, what NMS reads), so one pass gives both, as in PyTorch.
The CNN and the head go through ``torch.onnx.export``'s TorchScript exporter, as ultralytics' does: offline,
deterministic, no extra package. All graphs are fp32, opset :data:`OPSET`, with a dynamic batch axis.

Every graph is checked before it replaces anything: onnxruntime runs it on seeded sample inputs (batches of three,
though exported at one) and each output must equal PyTorch's within :data:`~hybridcxr.export.record.TOLERANCE`;
the record keeps the largest absolute difference measured. A graph that fails is not written.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from hybridcxr.detect.features import pooled_outputs
from hybridcxr.errors import ConfigError, InputError, OutputError, guarded_warnings
from hybridcxr.export.quantize import (
    CHECK, ENFORCED, FP32_LEADING, INT8_TOLERANCE, calibration_files, correct_features, letterboxed,
    quantize_detector,
)
from hybridcxr.export.record import KIND, RECORD_VERSION, TOLERANCE, record_path
from hybridcxr.export.runtime import (
    BACKBONE_INPUT, BACKBONE_OUTPUT, DETECTOR_INPUT, DETECTOR_OUTPUTS, HEAD_OUTPUT, OnnxBackbone, OnnxDetector,
    OnnxHead, detector_onnx, open_session,
)
from hybridcxr.files import atomic_path, file_sha256, read_model_card, write_json
from hybridcxr.layout import ClassifierLayout

FORMATS: tuple[str, ...] = ("onnx",)
OPSET = 18  # what ultralytics picks for torch 2.x; onnxruntime 1.30 runs opsets up to 23
SAMPLES = 3  # sample inputs per check: a batch other than the exported one tests the dynamic axis
SEED = 0


@dataclass(frozen=True)
class Exported:
    """One ONNX file written and checked."""

    model: str
    path: Path
    max_abs_diff: dict[str, float]
    int8: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)  # what the int8 search added to the record


@dataclass
class ExportResult:
    """What an export wrote."""

    run: Path
    files: list[Exported] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{len(self.files)} ONNX files written for {self.run}, each fp32 one equal to PyTorch within rtol "
                 f"{TOLERANCE.rtol:g}, atol {TOLERANCE.atol:g} on {SAMPLES} sample inputs:"]
        for item in self.files:
            diffs = ", ".join(f"{k} {v:.2g}" for k, v in item.max_abs_diff.items())
            if item.int8:
                held = (*ENFORCED, "probabilities") if "probabilities" in item.max_abs_diff else ENFORCED
                limits = ", ".join(f"{k} {getattr(INT8_TOLERANCE, k):g}" for k in held)
                lines.append(f"  {item.model} int8: {item.path} (on {CHECK} held-out images or fewer, largest "
                             f"difference: {diffs}; int8 tolerance {limits}: see hybridcxr.export.quantize)")
                flips = item.extra.get("decisions_flipped")
                if flips:
                    lines.append(f"    the run's decisions at its thresholds: {flips['flipped']} of {flips['of']} "
                                 "flipped on those images")
                if item.extra.get("classifies") is False:
                    lines.append("    it detects, but its probabilities are beyond the tolerance: classify, gated "
                                 "detect and serve refuse it (--runtime onnx gives PyTorch's probabilities)")
            else:
                lines.append(f"  {item.model}: {item.path} (largest difference: {diffs})")
        return "\n".join(lines)


def export_run(run: str | Path, fmt: str = "onnx", int8: bool = False,
               calibration: str | Path | None = None) -> ExportResult:
    """Export a classifier run (detector, CNN, head) or a detector run (its detector) as ``fmt`` files; with
    ``int8`` also the detector's int8 graph (:mod:`hybridcxr.export.quantize`), calibrated on ``calibration``
    (a folder of images) or else on the detector's own training images.

    Raises:
        ConfigError: for a format other than ``onnx``.
        InputError: naming the folder, for one that is neither kind of run or lacks a part.
    """
    if fmt not in FORMATS:
        raise ConfigError("--format", f"must be one of {', '.join(FORMATS)}, not {fmt!r}")
    run = Path(run)
    layout = ClassifierLayout(run)
    result = ExportResult(run)
    if not layout.card.is_file():
        weights = _detector_weights(run, f"{run}: neither a classifier run (no {layout.card}) nor a detector run")
        result.files.append(export_detector(weights))
    else:
        missing = [str(p) for p in (layout.model / "model.safetensors", layout.backbone) if not p.is_file()]
        if missing:
            raise InputError(run, f"a classifier run without all its models: missing {', '.join(missing)}")
        weights = _detector_weights(layout.detector, "the classifier run's detector")
        result.files += [export_detector(weights), export_backbone(layout), export_head(layout)]
    if int8:
        drift = probability_drift(run) if layout.card.is_file() else None
        result.files.append(export_detector_int8(weights, None if calibration is None else Path(calibration), drift))
    return result


def _detector_weights(folder: Path, what: str) -> Path:
    """The detector weights in ``folder``; InputError saying what is missing."""
    from hybridcxr.detect.weights import resolve_weights

    try:
        return resolve_weights(folder)
    except InputError as err:
        raise InputError(folder, f"nothing to export: {what} has no detector weights ({err.problem})") from None


def export_detector(weights: Path) -> Exported:
    """Write ``best.onnx`` beside a detector's ``best.safetensors``: ``output0`` and ``features`` per image."""
    from hybridcxr.detect.predict import Detector
    from hybridcxr.detect.ultralytics_env import export_onnx

    torch_detector = Detector.load(weights, device="cpu")
    model, card = torch_detector.model, torch_detector.card

    def write(tmp: Path) -> None:
        export_onnx(_with_pooled_output(model, card["feature_layers"]), tmp, int(card["imgsz"]), opset=OPSET)
        _tidy(tmp, DETECTOR_OUTPUTS)

    def check(tmp: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        images = _sample_images(torch_detector.imgsz)
        onnx_detector = OnnxDetector(torch_detector, open_session(tmp), {})
        pairs = zip(onnx_detector.forward(images, True), torch_detector.forward(images, True))
        return {name: (np.asarray(a), np.asarray(b)) for name, (a, b) in zip(DETECTOR_OUTPUTS, pairs)}

    return _write_checked(detector_onnx(weights), "detector", weights, write, check)


def export_detector_int8(weights: Path, calibration: Path | None = None,
                         drift: Callable[[Any, list[Any]], Drift] | None = None) -> Exported:
    """Write ``best.int8.onnx`` beside the detector's fp32 ``best.onnx`` (exported first): its int8 version,
    calibrated and checked on real images (:mod:`hybridcxr.export.quantize`) within :data:`INT8_TOLERANCE`;
    with ``drift`` (a classifier run's :func:`probability_drift`) the run's probabilities are measured and
    held to it too, where any attempt gets there."""
    from hybridcxr.detect.predict import Detector
    from hybridcxr.export.record import check_export
    from hybridcxr.io import read_radiograph

    fp32 = detector_onnx(weights)
    check_export(fp32, weights, "detector")
    torch_detector = Detector.load(weights, device="cpu")
    calibrate, held_out = calibration_files(torch_detector.card, weights, calibration)
    check_radiographs = [read_radiograph(p) for p in held_out]  # decoded once: the check and the drift read them
    search = _Int8Search(torch_detector, fp32, letterboxed(torch_detector, [read_radiograph(p) for p in calibrate]),
                         letterboxed(torch_detector, check_radiographs), check_radiographs, drift)

    def write(tmp: Path) -> None:  # accuracy first: the fewest fp32 layers that keep the check
        kept, fallback = tmp.with_name(tmp.name + ".detects"), None  # the first graph that only detects
        try:
            for leading in FP32_LEADING:
                measured = search.attempt(tmp, leading)
                if measured is None or INT8_TOLERANCE.failures(measured):
                    continue
                if INT8_TOLERANCE.classifies(measured):
                    return
                if fallback is None:
                    fallback = dict(search.tried)
                    shutil.copyfile(tmp, kept)
            if fallback is None:
                raise OutputError(detector_onnx(weights, int8=True), _int8_refusal(search.tried, len(held_out)))
            os.replace(kept, tmp)
            search.tried = fallback
        finally:
            kept.unlink(missing_ok=True)

    def judge(tmp: Path) -> tuple[dict[str, float], list[str]]:
        return search.tried["measured"], INT8_TOLERANCE.failures(search.tried["measured"])

    where = f"{len(held_out)} held-out images ({held_out[0].parent}); calibrated on {len(calibrate)} " \
            f"({calibrate[0].parent})"
    done = _write_judged(detector_onnx(weights, int8=True), "detector", weights, write, judge,
                         INT8_TOLERANCE.as_dict(), where, search.record_fields)
    return Exported(done.model, done.path, done.max_abs_diff, int8=True, extra=search.record_fields())


class _Int8Search:
    """One int8 attempt after another (:meth:`attempt`: quantise with the first ``leading`` layers in fp32,
    correct the features' shift, measure); ``tried`` holds the last one's outcome."""

    def __init__(self, torch_detector: Any, fp32: Path, images: np.ndarray, check_images: np.ndarray,
                 check_radiographs: list[Any], drift: Callable[[Any, list[Any]], Drift] | None) -> None:
        self.torch_detector, self.fp32, self.images, self.drift = torch_detector, fp32, images, drift
        self.check_images, self.check_radiographs = check_images, check_radiographs
        self.expected = torch_detector.forward(check_images, True)
        self.reference = np.concatenate([torch_detector.forward(images[i:i + 8], True)[1]
                                         for i in range(0, len(images), 8)])
        self.tried: dict[str, Any] = {}

    def attempt(self, tmp: Path, leading: int) -> dict[str, float] | None:
        """Write one int8 graph to ``tmp`` and measure it; None (the error kept in ``tried``) where the
        quantiser failed."""
        detector = self.torch_detector
        try:
            quantize_detector(self.fp32, tmp, self.images, len(detector.model.model) - 1, DETECTOR_INPUT, leading)
            shift = correct_features(tmp, self.images, self.reference)
            onnx_detector = OnnxDetector(detector, open_session(tmp), {})
        except Exception as err:  # noqa: BLE001 - the quantiser's own errors: this attempt failed, try the next
            self.tried = {"leading": leading, "error": f"{type(err).__name__}: {str(err)[:200]}"}
            return None
        measured = INT8_TOLERANCE.measure(onnx_detector.forward(self.check_images, True), self.expected,
                                          detector.imgsz)
        drift = None if self.drift is None else self.drift(onnx_detector, self.check_radiographs)
        if drift is not None:
            measured["probabilities"] = drift.largest
        scale = max(float(np.abs(self.reference).max()), 1e-12)
        self.tried = {"leading": leading, "measured": measured, "error": None,
                      "shift": float(np.abs(shift).max()) / scale, "drift": drift}
        return measured

    def record_fields(self) -> dict[str, Any]:
        """What the record adds: the fp32 layers, the features' shift correction, whether it classifies and
        how many of the run's decisions flipped on the check images."""
        tried, drift = self.tried, self.tried["drift"]
        flips = {} if drift is None else {"decisions_flipped": {"flipped": drift.flipped, "of": drift.decisions}}
        return {**flips, "fp32_layers": list(range(tried["leading"])),
                "features_shift_corrected": {"calibration_images": len(self.images),
                                             "largest_relative": round(tried["shift"], 6)},
                "classifies": (INT8_TOLERANCE.classifies(tried["measured"])  # None: no classifier measured
                               if "probabilities" in tried["measured"] else None)}


def _int8_refusal(tried: Mapping[str, Any], n_images: int) -> str:
    """Why no int8 graph was written: the last attempt's error, or what was beyond the tolerance."""
    leading = tried.get("leading", 0)
    if tried.get("error"):
        return f"not written: quantising with the first {leading} layers in fp32 failed ({tried['error']})"
    beyond = ", ".join(f"{k} {tried['measured'][k]:.3g} > {getattr(INT8_TOLERANCE, k):g}"
                       for k in INT8_TOLERANCE.failures(tried["measured"]))
    return (f"not written: beyond the int8 tolerance on {n_images} held-out images even with the first {leading} "
            f"layers in fp32 ({beyond}); this detector keeps to fp32 (--runtime onnx)")


class Drift(NamedTuple):
    """How far a candidate detector moves a classifier run's outputs on the check images: the largest absolute
    probability difference, and how many of the run's yes/no decisions (at its thresholds) flip, of how many."""

    largest: float
    flipped: int
    decisions: int


def probability_drift(run: Path) -> Callable[[Any, list[Any]], Drift]:
    """For a classifier run: how far a candidate detector moves the run's probabilities and decisions on given
    radiographs (always the same ones) from its PyTorch path (the same CNN, head, lung model, calibration and
    thresholds), whose outputs are computed on the first call only."""
    from hybridcxr.analyzer import Analyzer

    analyzer, expected = Analyzer(run, device="cpu"), []

    def outputs(detector: Any, radiographs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        analyses = analyzer.analyze(detector.predict(radiographs, features=True))
        decisions = [[np.nan if d is None else float(d) for d in a.decisions.values()] for a in analyses]
        return np.array([list(a.probabilities.values()) for a in analyses], dtype=float), np.array(decisions)

    def drift(detector: Any, radiographs: list[Any]) -> Drift:
        if not expected:
            expected.append(outputs(analyzer.detector, radiographs))
        (ours, our_calls), (theirs, their_calls) = outputs(detector, radiographs), expected[0]
        moved = np.abs(ours - theirs)
        moved[np.isnan(ours) != np.isnan(theirs)] = np.inf  # a number on one side only: as far as it gets
        made = ~np.isnan(their_calls)  # decisions the run makes (none for findings it never learned)
        return Drift(float(np.nanmax(moved)), int((our_calls[made] != their_calls[made]).sum()), int(made.sum()))

    return drift


def export_backbone(layout: ClassifierLayout) -> Exported:
    """Write the CNN of a classifier run as ``model/backbone.onnx``: prepared pixels in, the embedding out."""
    from hybridcxr.classify.backbone import build_backbone
    info = read_model_card(layout.card, "hybridcxr fusion head", "fusion head")["backbone"]
    backbone = build_backbone(info["name"], layout.backbone, input_size=int(info["size"])).eval()
    if backbone.fingerprint() != info["fingerprint"]:
        raise InputError(layout.backbone, "the CNN weights differ from those the head was trained on")
    images = [np.random.default_rng(SEED + i).random((backbone.input_size, backbone.input_size - 7 * i),
                                                     dtype=np.float32) for i in range(SAMPLES)]

    with torch.inference_mode():
        expected = np.stack([backbone(backbone.prepare(image))[0].numpy() for image in images])

    def write(tmp: Path) -> None:
        _torch_export(backbone, (backbone.prepare(images[0]),), tmp, [BACKBONE_INPUT], [BACKBONE_OUTPUT])

    def check(tmp: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {BACKBONE_OUTPUT: (OnnxBackbone(backbone, open_session(tmp)).embed(images), expected)}

    return _write_checked(layout.onnx_backbone, "backbone", layout.backbone, write, check)


def export_head(layout: ClassifierLayout) -> Exported:
    """Write the fusion head of a classifier run as ``model/head.onnx``: one input per feature group, logits out."""
    from hybridcxr.classify.fusion import assemble_inputs, checkpoint_paths, load_checkpoint

    head, config, _ = load_checkpoint(layout.model)
    rng = np.random.default_rng(SEED)
    features = {g: np.asarray(config.feature_mean[g]) + np.asarray(config.feature_std[g])
                * rng.standard_normal((SAMPLES, config.dims[g])) for g in config.feature_mean}
    inputs = assemble_inputs(config, **features, age_years=[63.0, None, 31.5][:SAMPLES],
                             sex=["F", None, "M"][:SAMPLES])
    groups = list(config.groups)
    graph = _HeadGraph(head, groups)

    def write(tmp: Path) -> None:
        _torch_export(graph, tuple(inputs[g][:1] for g in groups), tmp, groups, [HEAD_OUTPUT])

    def check(tmp: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        with torch.inference_mode():
            expected = head(inputs).numpy()
        return {HEAD_OUTPUT: (OnnxHead(groups, open_session(tmp)).logits(inputs), expected)}

    return _write_checked(layout.onnx_head, "head", checkpoint_paths(layout.model)[0], write, check)


class _HeadGraph(torch.nn.Module):
    """The fusion head with one positional input per feature group (ONNX graphs take no dicts)."""

    def __init__(self, head: torch.nn.Module, groups: list[str]) -> None:
        super().__init__()
        self.head, self.groups = head, list(groups)

    def forward(self, *blocks: torch.Tensor) -> torch.Tensor:
        return self.head(dict(zip(self.groups, blocks)))


@functools.cache
def _pooled_class(base: type) -> type:
    """A subclass of the detection model class ``base`` whose forward also returns the pooled features."""

    class PooledFeatures(base):  # type: ignore[misc, valid-type]
        pooled_layers: list[int]

        def forward(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
            with pooled_outputs(self, self.pooled_layers) as pooled:
                out = super().forward(x, *args, **kwargs)
            return out, torch.cat(pooled(), dim=1)

    return PooledFeatures


def _with_pooled_output(model: Any, layers: list[int]) -> Any:
    """A copy of a detection model whose forward returns ``(its output, (N, D) pooled features)``: still the
    exporter's kind of model (its class is a subclass), so ultralytics' exporter takes it as it takes a YOLO's."""
    twin = copy.deepcopy(model).float().eval()
    twin.__class__ = _pooled_class(type(model))
    twin.pooled_layers = [int(i) for i in layers]
    return twin


def _sample_images(size: int) -> np.ndarray:
    """:data:`SAMPLES` letterboxed-like ``(size, size)`` uint8 images: noise, a gradient with a bright disc,
    the letterbox grey with a dark block (seeded: the same every export)."""
    rng = np.random.default_rng(SEED)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    gradient = 40 + 150 * yy + 60 * ((xx - 0.4) ** 2 + (yy - 0.5) ** 2 < 0.05)
    grey = np.full((size, size), 114.0)
    grey[size // 4: size // 2, size // 3: 2 * size // 3] = 20
    images = [rng.integers(0, 256, (size, size)), gradient, grey]
    return np.stack([np.clip(im, 0, 255).astype(np.uint8) for im in images[:SAMPLES]])


def _torch_export(module: torch.nn.Module, args: tuple, tmp: Path, inputs: list[str], outputs: list[str]) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (offline, deterministic), dynamic batch, fp32."""
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with guarded_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy TorchScript-based export"
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module.eval(), args, str(tmp), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)


def _tidy(path: Path, outputs: tuple[str, ...]) -> None:
    """Name the graph's outputs ``outputs`` (the exporter names only its first) and drop the exporter's
    wall-clock ``date``, so one model exports to one file."""
    import onnx

    model = onnx.load(str(path))
    renames = {o.name: new for o, new in zip(model.graph.output, outputs) if o.name != new}
    for node in model.graph.node:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    for output in model.graph.output:
        output.name = renames.get(output.name, output.name)
    kept = [p for p in model.metadata_props if p.key != "date"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))


def _write_checked(dest: Path, name: str, source: Path, write: Callable[[Path], None],
                   check: Callable[[Path], Mapping[str, tuple[np.ndarray, np.ndarray]]]) -> Exported:
    """Write an ONNX file with ``write(tmp)``, compare it with ``check(tmp)``'s (onnx, torch) output pairs,
    and put it and its record in place only when every pair is equal within :data:`TOLERANCE` (else the
    previous export, if any, stays as it was)."""

    def judge(tmp: Path) -> tuple[dict[str, float], list[str]]:
        pairs = check(tmp)
        diffs = {k: float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0 for k, (a, b) in pairs.items()}
        return diffs, [k for k, (a, b) in pairs.items() if not TOLERANCE.allclose(a, b)]

    checked_on = f"{SAMPLES} seeded sample inputs, one batch, onnxruntime on the CPU"
    return _write_judged(dest, name, source, write, judge, TOLERANCE.as_dict(), checked_on)


def _write_judged(dest: Path, name: str, source: Path, write: Callable[[Path], None],
                  judge: Callable[[Path], tuple[dict[str, float], list[str]]], tolerance: dict[str, Any],
                  checked_on: str, extra: Callable[[], Mapping[str, Any]] | None = None) -> Exported:
    """Write an ONNX file with ``write(tmp)``; ``judge(tmp)`` gives its measured differences from PyTorch and
    the names of those beyond ``tolerance``. Only a file with none beyond goes in place, with its record
    (``extra()``, called after the write: more fields for it)."""
    import onnx

    with atomic_path(dest) as tmp:
        write(tmp)
        diffs, bad = judge(tmp)
        if bad:
            limits = ", ".join(f"{k} {v:g}" for k, v in tolerance.items() if k != "kind")
            raise OutputError(dest, f"not written: onnxruntime's {', '.join(bad)} differ from PyTorch's (largest "
                                    f"difference {max(diffs[k] for k in bad):.3g}; tolerance {limits})")
        graph = onnx.load(str(tmp)).graph
        record = {
            "kind": KIND, "record_version": RECORD_VERSION, "model": name, "file": dest.name,
            "sha256": file_sha256(tmp), "source": {"file": source.name, "sha256": file_sha256(source)},
            "inputs": [i.name for i in graph.input], "outputs": [o.name for o in graph.output], "opset": OPSET,
            "tolerance": tolerance, "max_abs_diff": diffs, "checked_on": checked_on,
            "versions": {p: version(p) for p in ("hybridcxr", "torch", "ultralytics", "onnx", "onnxruntime")},
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra() if extra else {}),
        }
        record_path(dest).unlink(missing_ok=True)  # just before the new file goes in: no old record vouches for it
    write_json(record_path(dest), record)
    return Exported(name, dest, diffs)
