"""A lung segmenter run on disk: ``lungs.safetensors`` (weights, no pickle) beside ``lungs.json`` (the card).

The card says what the weights are: the architecture (checked by :func:`~hybridcxr.lungs.model.check_architecture`),
the input size and normalisation, the library versions, the weights' SHA-256 and what the run was trained on.
:func:`read_card` refuses, with an :class:`InputError` naming the file and the problem, a card that is not
valid JSON or not a lung card, an architecture outside the allow-list, absent weights, weights whose SHA-256
differs from the card's and weights that do not fit the architecture or hold NaN.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hybridcxr.errors import InputError
from hybridcxr.files import file_sha256, read_model_card, write_json
from hybridcxr.lungs.model import build_network, check_architecture

KIND = "hybridcxr-lungs"
FORMAT = 1
CARD = "lungs.json"
WEIGHTS = "lungs.safetensors"
NORMALISATION = "per image: zero mean, unit variance (of the grey image resized to imgsz x imgsz)"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def versions() -> dict[str, str]:
    """The versions of what made (or reads) the weights."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("hybridcxr", "torch", "monai", "albumentations", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def card_path(run: str | Path) -> Path:
    """The card of ``run``: the folder's ``lungs.json``, or the file given (the card or the weights beside it)."""
    run = Path(run)
    if run.is_dir():
        return run / CARD
    return run.with_name(CARD) if run.suffix == ".safetensors" else run


def save_run(folder: Path, state: dict[str, Any], spec: dict[str, Any], imgsz: int, training: dict[str, Any]) -> dict:
    """Write the weights (safetensors, atomically) and then the card that names their SHA-256; return the card."""
    from safetensors.torch import save_file

    from hybridcxr.files import atomic_path

    with atomic_path(folder / WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    card = {"kind": KIND, "format": FORMAT, "architecture": spec, "imgsz": imgsz, "normalisation": NORMALISATION,
            "weights": WEIGHTS, "weights_sha256": file_sha256(folder / WEIGHTS), "versions": versions(),
            "training": training}
    write_json(folder / CARD, card)
    return card


def read_card(run: str | Path) -> dict[str, Any]:
    """The checked card of a run (folder, card or weights path); InputError naming the file otherwise."""
    path = card_path(run)
    if not path.is_file():
        raise InputError(path, "no lung segmenter card here (train one with `hybridcxr train lungs`)")
    card = read_model_card(path, KIND, "lung segmenter")
    if card.get("format") != FORMAT:
        raise InputError(path, f"card format {card.get('format')!r} is not {FORMAT}: made by another version")
    spec = check_architecture(card.get("architecture"), path)
    imgsz = card.get("imgsz")
    if type(imgsz) is not int or not 32 <= imgsz <= 2048 or imgsz % 2 ** len(spec["strides"]):
        raise InputError(path, f"imgsz {imgsz!r} must be an integer in [32, 2048] divisible by "
                               f"{2 ** len(spec['strides'])}")
    name = card.get("weights")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise InputError(path, "weights must be the name of a .safetensors file beside the card")
    if not isinstance(card.get("weights_sha256"), str) or not _SHA256.match(card["weights_sha256"]):
        raise InputError(path, "weights_sha256 must be 64 lower-case hex digits")
    weights = path.with_name(name)
    if not weights.is_file():
        raise InputError(weights, "the weights file the card names is missing")
    if file_sha256(weights) != card["weights_sha256"]:
        raise InputError(weights, "the weights' SHA-256 differs from the card's: changed or corrupt")
    return card


def load_network(run: str | Path):
    """The network of a run with its weights, in eval mode, and its checked card: ``(module, card)``."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card = read_card(run)
    weights = card_path(run).with_name(card["weights"])
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(weights, f"not a readable safetensors file ({str(err)[:200]})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(weights, f"weights hold NaN or infinite values ({bad[0]})")
    network = build_network(card["architecture"])
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(weights, f"the weights do not fit the card's architecture ({str(err)[:200]})") from None
    return network.eval(), card
