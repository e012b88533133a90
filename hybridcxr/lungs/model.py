"""The lung segmentation network: MONAI's 2-D ``UNet``, from scratch, one grey channel in, one lung logit out.

Why MONAI's UNet and not segmentation-models-pytorch: both are well kept, but smp's U-Nets hang a decoder on an
ImageNet-style encoder (the lightest, ResNet-18 or MobileNetV2, made a training step about 1 s per 256 px image
on 2 CPU cores, measured), and its encoders are built for pretrained weights we may not download. MONAI's UNet
is sized by its channel list alone: ``[16, 32, 64, 128, 256]`` (0.66 M parameters) trained at about 0.1 s per
256 px image on the same cores, which is what lets ``train lungs`` finish in minutes on a CPU. MONAI is a
medical-imaging library with torch and numpy as its only dependencies, and has no weight-download path at all.

The architecture a card may describe is checked against an allow-list (:func:`check_architecture`) before any
network is built, so a tampered card can neither run code nor allocate an absurd network.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from hybridcxr.config import LungsConfig
from hybridcxr.errors import InputError

NAME = "monai.networks.nets.UNet"
_KEYS = {"name", "spatial_dims", "in_channels", "out_channels", "channels", "strides", "num_res_units", "norm"}
_NORMS = ("batch", "instance")


def architecture(config: LungsConfig) -> dict[str, Any]:
    """The network's description for the card: MONAI UNet keyword arguments and its name."""
    return {"name": NAME, "spatial_dims": 2, "in_channels": 1, "out_channels": 1,
            "channels": list(config.channels), "strides": [2] * (len(config.channels) - 1),
            "num_res_units": config.res_units, "norm": "batch"}


def check_architecture(spec: Any, where: str | Path) -> dict[str, Any]:
    """``spec`` if it is a UNet description this package builds; InputError naming ``where`` otherwise."""
    if not isinstance(spec, dict) or set(spec) != _KEYS:
        raise InputError(where, f"architecture must be a mapping with exactly the keys {sorted(_KEYS)}")
    if spec["name"] != NAME or spec["spatial_dims"] != 2 or spec["in_channels"] != 1 or spec["out_channels"] != 1:
        raise InputError(where, f"architecture must be a 2-D, 1-channel {NAME}")
    channels, strides = spec["channels"], spec["strides"]
    if not (isinstance(channels, list) and 2 <= len(channels) <= 7
            and all(type(c) is int and 4 <= c <= 1024 for c in channels)):
        raise InputError(where, "architecture channels must be 2 to 7 integers between 4 and 1024")
    if strides != [2] * (len(channels) - 1):
        raise InputError(where, "architecture strides must be 2 for every level but the first")
    if type(spec["num_res_units"]) is not int or not 0 <= spec["num_res_units"] <= 4:
        raise InputError(where, "architecture num_res_units must be an integer between 0 and 4")
    if spec["norm"] not in _NORMS:
        raise InputError(where, f"architecture norm must be one of {', '.join(_NORMS)}")
    return spec


def build_network(spec: dict[str, Any]):
    """The ``torch.nn.Module`` a checked architecture describes, with random weights (nothing is downloaded)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(spec["channels"]),
                strides=tuple(spec["strides"]), num_res_units=spec["num_res_units"], norm=spec["norm"])


def normalise(image: np.ndarray) -> np.ndarray:
    """The network's input from a grey image (uint8 or [0, 1] floats): float32, zero mean and unit variance per
    image, so exposure and bit depth of the source do not matter."""
    x = image.astype(np.float32)
    return (x - x.mean()) / max(float(x.std()), 1e-8)


def free_cores() -> int:
    """The cores this process may use that the 1-minute load average leaves idle (at least 1)."""
    from hybridcxr.device import cpu_threads as cores_of_this_process

    cores = cores_of_this_process()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this system
        return cores
    return max(1, min(cores, cores - int(round(load))))


@contextmanager
def cpu_threads(setting: int) -> Iterator[int]:
    """Run the block with torch using ``setting`` CPU threads (0: :func:`free_cores`), then restore the count.

    Why: on cores shared with other jobs, torch's default of one thread per core made a training step of this
    network 3x (256 px) to 50x (64 px) slower than one thread, each parallel region waiting for a core.
    """
    import torch

    before = torch.get_num_threads()
    threads = setting or free_cores()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
