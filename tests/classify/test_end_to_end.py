"""End-to-end fine-tuning's mixed precision (hybridcxr/classify/end_to_end.py); its training runs are tested in
tests/classify/test_train.py and tests/test_recipes.py."""

from __future__ import annotations

import pytest
import torch

from hybridcxr.classify.end_to_end import _Step


def _step(device: str, bf16: bool) -> _Step:
    return _Step(model=None, fusion=None, criterion=None, optimizer=None, scaler=None, device=device,  # type: ignore[arg-type]
                 progress=False, bf16=bf16)


@pytest.mark.parametrize(("bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float32)])
def test_the_cpu_forward_pass_runs_in_bf16_only_where_the_cpu_has_it(bf16, dtype):
    layer = torch.nn.Linear(8, 4)
    with _step("cpu", bf16).autocast():
        out = layer(torch.randn(2, 8))
    assert out.dtype == dtype
