"""Which device a job runs on: one rule for every trainer and loader.

``auto`` means CUDA when torch sees a GPU, else the CPU; anything else ("cpu", "cuda", "cuda:1", "0,1") is the
user's explicit choice and is passed on as it is.
"""

from __future__ import annotations


def choose_device(setting: str | int = "auto") -> str:
    """The torch device for one process: ``cuda`` when asked for or (``auto``) available, else ``cpu``."""
    import torch

    if str(setting) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(setting)


def detector_devices(setting: str | int = "auto") -> tuple[str, bool]:
    """Ultralytics' device string and whether AMP may be used: ``auto`` takes every CUDA GPU (DDP), else the CPU."""
    import torch

    if str(setting) != "auto":
        device = str(setting)
        return device, device != "cpu" and torch.cuda.is_available()
    if choose_device("auto") == "cpu":
        return "cpu", False
    return ",".join(str(i) for i in range(torch.cuda.device_count())), True
