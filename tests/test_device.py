"""One device rule for every job: auto means CUDA where torch sees it, an explicit choice passes through."""

from __future__ import annotations

import torch

from hybridcxr.device import choose_device, detector_devices


def test_auto_follows_what_torch_sees_and_explicit_choices_pass_through():
    assert choose_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_device("cpu") == "cpu" and choose_device("cuda:1") == "cuda:1" and choose_device(0) == "0"


def test_detector_devices_give_ultralytics_strings_and_whether_amp_may_run():
    assert detector_devices("cpu") == ("cpu", False)
    assert detector_devices(0) == ("0", torch.cuda.is_available())
    device, amp = detector_devices("auto")
    if torch.cuda.is_available():
        assert device == ",".join(str(i) for i in range(torch.cuda.device_count())) and amp
    else:
        assert (device, amp) == ("cpu", False)
