"""Edit a detector's safetensors weights and re-sign its card, as a tamperer who knows the format would."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch


def edit_detector_weights(folder: Path, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Apply ``change`` to the first float tensor of ``folder/best.safetensors`` and update the card's sha256,
    so only a check deeper than the hash (NaN, fingerprint) can tell."""
    from safetensors.torch import load_file, save_file

    from hybridcxr.files import file_sha256

    weights = folder / "best.safetensors"
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = change(state[name].clone())
    save_file(state, str(weights))
    card_file = folder / "best.json"
    card = json.loads(card_file.read_text())
    card["weights_sha256"] = file_sha256(weights)
    card_file.write_text(json.dumps(card))
