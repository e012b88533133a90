"""What a detector card may say: an allow-list of architectures, layers, arguments and activations.

A run folder is something users exchange. Ultralytics builds a network from its yaml by looking layer names up in
its module globals and, for ``activation``, by ``eval`` of a string: a card that names ``torch_safe_load`` as a
layer or carries ``"activation": "__import__('os').system(...)"`` would run code while the model is built.
:func:`check_model_yaml` refuses anything but the plain YOLO detection layers with literal arguments of a sane
size, so loading a card never runs code and never allocates more than a real YOLOv8/YOLO11 could need.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from hybridcxr.errors import InputError

#: Layers of the detection architectures ultralytics ships (YOLOv3-v12, YOLO11, YOLO26 detect yamls).
LAYERS = frozenset({
    "Conv", "Concat", "Detect", "C2f", "C3k2", "C3", "C2", "C3Ghost", "GhostConv", "Bottleneck", "SPP", "SPPF",
    "SPPELAN", "RepNCSPELAN4", "AConv", "ADown", "ELAN1", "CBLinear", "CBFuse", "C2PSA", "A2C2f", "DWConv",
    "nn.Upsample", "nn.MaxPool2d", "nn.ConvTranspose2d", "nn.Identity", "nn.ZeroPad2d",
})
#: Top-level keys of a detection yaml (as ultralytics writes ``model.yaml`` into a trained model).
YAML_KEYS = frozenset({
    "nc", "scales", "scale", "backbone", "head", "activation", "depth_multiple", "width_multiple", "reg_max",
    "end2end", "yaml_file", "ch", "channels", "kpt_shape",
})
#: Activations a yaml may set, as ``nn.Name()`` or ``torch.nn.Name()`` with at most one literal argument.
ACTIVATIONS = frozenset({"SiLU", "ReLU", "ReLU6", "LeakyReLU", "GELU", "Hardswish", "Mish", "Sigmoid", "Tanh"})
_ACTIVATION = re.compile(r"^(?:torch\.)?nn\.([A-Za-z0-9]+)\(\s*(?:True|False|[0-9.eE+-]+)?\s*\)$")
#: String arguments a layer may carry (ultralytics resolves "nc" to the class count).
STRING_ARGS = frozenset({"None", "nearest", "nc", "bilinear"})
MAX_CHANNELS = 4096  # YOLOv8x tops out at 640 output channels after width scaling; 1024 before
MAX_REPEATS = 64
MAX_LAYERS = 400
MAX_CLASSES = 10_000


def check_model_yaml(spec: Any, where: str | Path) -> None:
    """Raise InputError naming ``where`` unless ``spec`` is a detection yaml made only of allowed parts."""
    if not isinstance(spec, dict):
        raise InputError(where, "model_yaml must be a mapping")
    unknown = sorted(set(spec) - YAML_KEYS)
    if unknown:
        raise InputError(where, f"model_yaml has keys no YOLO detection model has: {unknown}")
    _check_number(spec.get("nc", 1), where, "nc", MAX_CLASSES)
    _check_activation(spec.get("activation"), where)
    _check_scales(spec.get("scales"), where)
    for key in ("depth_multiple", "width_multiple"):
        if key in spec:
            _check_number(spec[key], where, key, 4.0)
    layers = spec.get("backbone", []) + spec.get("head", []) if all(
        isinstance(spec.get(k, []), list) for k in ("backbone", "head")) else None
    if not layers or len(layers) > MAX_LAYERS:
        raise InputError(where, "model_yaml needs backbone and head lists of layers")
    for i, layer in enumerate(layers):
        _check_layer(layer, i, where)
    if not any(isinstance(layer, list) and layer[2] == "Detect" for layer in layers):
        raise InputError(where, "model_yaml has no Detect layer: not a detection model")


def _check_activation(act: Any, where: str | Path) -> None:
    if act is None:
        return
    match = _ACTIVATION.match(act) if isinstance(act, str) else None
    if not match or match.group(1) not in ACTIVATIONS:
        raise InputError(where, f"model_yaml activation {str(act)[:80]!r} is not one of "
                                f"nn.{{{', '.join(sorted(ACTIVATIONS))}}}(); refused (it would be evaluated as code)")


def _check_scales(scales: Any, where: str | Path) -> None:
    if scales is None:
        return
    if not isinstance(scales, dict) or len(scales) > 10:
        raise InputError(where, "model_yaml scales must map a few scale letters to [depth, width, max_channels]")
    for name, values in scales.items():
        if not isinstance(values, list) or len(values) != 3:
            raise InputError(where, f"model_yaml scale {name!r} must be [depth, width, max_channels]")
        _check_number(values[0], where, f"scales.{name} depth", 4.0)
        _check_number(values[1], where, f"scales.{name} width", 4.0)
        _check_number(values[2], where, f"scales.{name} max_channels", MAX_CHANNELS)


def _check_layer(layer: Any, index: int, where: str | Path) -> None:
    if not (isinstance(layer, list) and len(layer) == 4):
        raise InputError(where, f"model_yaml layer {index} must be [from, repeats, module, args]")
    source, repeats, module, args = layer
    if not isinstance(module, str) or module not in LAYERS:
        raise InputError(where, f"model_yaml layer {index} names {str(module)[:80]!r}, which is not a YOLO "
                                "detection layer; refused (only known layers are built)")
    sources = source if isinstance(source, list) else [source]
    if not sources or not all(isinstance(s, int) and not isinstance(s, bool) and -MAX_LAYERS < s < MAX_LAYERS
                              for s in sources):
        raise InputError(where, f"model_yaml layer {index} has an invalid 'from' {str(source)[:80]!r}")
    _check_number(repeats, where, f"layer {index} repeats", MAX_REPEATS)
    if not isinstance(args, list) or len(args) > 8:
        raise InputError(where, f"model_yaml layer {index} args must be a short list")
    for arg in args:
        _check_arg(arg, index, where)


def _check_arg(arg: Any, index: int, where: str | Path) -> None:
    if arg is None or isinstance(arg, bool):
        return
    if isinstance(arg, str):
        if arg not in STRING_ARGS:
            raise InputError(where, f"model_yaml layer {index} has a string argument {arg[:80]!r} that is not "
                                    f"one of {sorted(STRING_ARGS)}; refused")
        return
    if isinstance(arg, list):
        if len(arg) > 8:
            raise InputError(where, f"model_yaml layer {index} has an over-long list argument")
        for item in arg:
            _check_arg(item, index, where)
        return
    _check_number(arg, where, f"layer {index} argument", MAX_CHANNELS)


def _check_number(value: Any, where: str | Path, name: str, limit: float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not -limit <= value <= limit:
        raise InputError(where, f"model_yaml {name} must be a number within ±{limit:g}, got {str(value)[:40]!r}")

