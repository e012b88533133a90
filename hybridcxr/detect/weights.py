"""Detector weights that load without unpickling: safetensors tensors plus a JSON card.

Ultralytics saves ``.pt`` checkpoints, which are pickles: loading one runs whatever code it names. Training
keeps them (resume needs them), but every trained detector is also exported as ``best.safetensors`` with
``best.json`` beside it (the model's architecture yaml, finding names, image size, feature dimension,
versions); :func:`load_detector` rebuilds the network from the yaml and fills in the tensors, so
``hybridcxr detect``, ``classify`` and ``serve`` never unpickle anything.
"""

from __future__ import annotations

import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

from hybridcxr.detect.card import check_model_yaml
from hybridcxr.detect.ultralytics_env import import_ultralytics
from hybridcxr.errors import DataWarning, InputError
from hybridcxr.files import atomic_path, file_sha256, read_model_card, write_json

CARD_VERSION = 1


def card_path(weights: str | Path) -> Path:
    """The JSON card that belongs to a ``.safetensors`` file."""
    return Path(weights).with_suffix(".json")


def resolve_weights(path: str | Path) -> Path:
    """``.safetensors`` weights from a run folder (``weights/best.safetensors``), a card or the file itself."""
    path = Path(path)
    candidates = [path]
    if path.is_dir():
        candidates = [path / "weights" / "best.safetensors", path / "best.safetensors", path / "detector.safetensors"]
    elif path.suffix in (".json", ".pt"):
        candidates = [path.with_suffix(".safetensors")]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".safetensors":
            return candidate
    hint = (" (ultralytics .pt files are pickles and are not loaded for inference; a run of "
            "`hybridcxr train detector` holds weights/best.safetensors)") if path.suffix == ".pt" else ""
    raise InputError(path, f"no detector weights (.safetensors with its .json card) found{hint}")


def export_detector(pt: str | Path, dest: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Export a trained ultralytics ``.pt`` (ours, from training) as safetensors + JSON card at ``dest``."""
    from safetensors.torch import save_file

    ultralytics = import_ultralytics()
    from hybridcxr.detect.features import feature_layers

    model = ultralytics.YOLO(str(pt)).model.float().eval()
    args = dict(getattr(model, "args", {}) or {})
    layers, dims = feature_layers(model)
    card = {
        "card_version": CARD_VERSION,
        "kind": "hybridcxr detector",
        "findings": [model.names[i] for i in sorted(model.names)],
        "imgsz": int(args.get("imgsz") or 640),
        "stride": [float(s) for s in model.stride],
        "model_yaml": model.yaml,
        "feature_layers": layers,
        "feature_dims": dims,
        "feature_dim": int(sum(dims)),
        "source_checkpoint": Path(pt).name,
        "versions": {p: version(p) for p in ("hybridcxr", "ultralytics", "torch")},
        **(extra or {}),
    }
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "kind": "hybridcxr detector"})
    card["weights_sha256"] = file_sha256(dest)
    write_json(card_path(dest), card)
    return dest


def load_detector(weights: str | Path, device: str | None = None, fuse: bool = True):
    """Rebuild a detector from its card's yaml and load its safetensors; returns ``(model, card)``.

    The model is in eval mode on ``device`` (default: CUDA if available, else CPU), Conv+BN fused for speed.
    Raises InputError naming the file when the weights or card are missing, corrupt or do not fit.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    path = resolve_weights(weights)
    card = read_model_card(card_path(path), "hybridcxr detector", "hybridcxr detector")
    _check_card(card, path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise InputError(path, f"unreadable safetensors file ({err})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(path, f"{len(bad)} weight tensors hold NaN or infinite values (first: {bad[0]})")
    try:
        model = DetectionModel(cfg=card["model_yaml"], nc=len(card["findings"]), verbose=False)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as err:
        raise InputError(card_path(path), f"the card's model_yaml does not build a detector ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(path, f"weights do not fit the model in its card: {str(err)[:300]}") from None
    model.names = dict(enumerate(card["findings"]))
    model.stride = torch.tensor(card["stride"])
    model = model.eval()
    if fuse:
        model = model.fuse(verbose=False)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), card


def _check_card(card: Any, weights: Path) -> None:
    """Refuse a card that is not ours, names layers or code we do not build, or belongs to other weights."""
    where = card_path(weights)
    if not isinstance(card, dict) or card.get("kind") != "hybridcxr detector" or "model_yaml" not in card:
        raise InputError(where, "not a hybridcxr detector card")
    findings = card.get("findings")
    if not (isinstance(findings, list) and findings and all(isinstance(f, str) for f in findings)):
        raise InputError(where, "the card's findings must be a non-empty list of names")
    stride = card.get("stride")
    if not (isinstance(stride, list) and stride and all(isinstance(s, (int, float)) and 0 < s <= 256 for s in stride)):
        raise InputError(where, "the card's stride must be a list of positive numbers")
    check_model_yaml(card["model_yaml"], where)
    expected = card.get("weights_sha256")
    if expected is None:
        warnings.warn(f"{where}: the card carries no weights_sha256 (made before hybridcxr checked it); "
                      "re-export the run to have its weights checked on load", DataWarning, stacklevel=3)
    elif expected != file_sha256(weights):
        raise InputError(weights, f"does not belong to {where.name} (sha256 differs): the weights were changed "
                                  "or come from another run")
