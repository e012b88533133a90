"""Which device a job runs on: one rule for every trainer and loader.

``auto`` means CUDA when torch sees a GPU, else the CPU; anything else ("cpu", "cuda", "cuda:1", "0,1") is the
user's explicit choice and is passed on as it is. Mixed precision: fp16 on CUDA; on the CPU bfloat16 where the
CPU computes it natively (AVX512-BF16 or AMX: a YOLOv8n training step then takes about half its fp32 time),
never elsewhere (emulated bfloat16 is slower than fp32).
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_threads() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count): the one count
    every thread pool, torch's threads and data-loading workers of hybridcxr start from."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def choose_device(setting: str | int = "auto") -> str:
    """The torch device for one process: ``cuda`` when asked for or (``auto``) available, else ``cpu``."""
    import torch

    if str(setting) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(setting)


def cpu_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag); False where
    the flags cannot be read (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def detector_devices(setting: str | int = "auto") -> tuple[str, bool | str]:
    """Ultralytics' device string and the mixed precision it may use (its ``amp`` argument): ``True`` (fp16)
    on CUDA, ``"bf16"`` on a CPU with native bfloat16, else ``False``. ``auto`` takes every CUDA GPU (DDP),
    else the CPU."""
    import torch

    if str(setting) == "auto":
        if choose_device("auto") == "cpu":
            setting = "cpu"
        else:
            return ",".join(str(i) for i in range(torch.cuda.device_count())), True
    device = str(setting)
    if device == "cpu":
        return device, "bf16" if cpu_bf16() else False
    return device, torch.cuda.is_available()
