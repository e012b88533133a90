"""One device rule for every job: auto means CUDA where torch sees it, an explicit choice passes through."""

from __future__ import annotations

import torch

from hybridcxr.device import choose_device, cpu_bf16, cpu_threads, detector_devices


def test_auto_follows_what_torch_sees_and_explicit_choices_pass_through():
    assert choose_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_device("cpu") == "cpu" and choose_device("cuda:1") == "cuda:1" and choose_device(0) == "0"


def test_detector_devices_give_ultralytics_strings_and_the_precision_amp_may_use():
    cpu_amp = "bf16" if cpu_bf16() else False
    assert detector_devices("cpu") == ("cpu", cpu_amp)
    assert detector_devices(0) == ("0", torch.cuda.is_available())
    device, amp = detector_devices("auto")
    if torch.cuda.is_available():
        assert device == ",".join(str(i) for i in range(torch.cuda.device_count())) and amp is True
    else:
        assert (device, amp) == ("cpu", cpu_amp)


def test_bf16_only_where_the_cpu_flags_say_it_is_native(tmp_path):
    def cpuinfo(flags: str):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        return path

    assert cpu_bf16(cpuinfo("fpu sse2 avx2 avx512f avx512bw avx512_bf16"))
    assert cpu_bf16(cpuinfo("fpu avx2 amx_tile amx_bf16"))
    assert not cpu_bf16(cpuinfo("fpu sse2 avx2 avx512f avx512bw"))  # emulated bf16 is slower than fp32
    assert not cpu_bf16(tmp_path / "absent")


def test_cpu_threads_is_the_affinity_count():
    import os

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cpu_threads() == expected
