"""Fixtures for the detector tests: the session's tiny detector (tests/conftest.py) seen as its phantom and its run.

The detector is trained once per session (1 epoch, 128 px) with every network connection forbidden; what it
predicts is not the point here (tools/bench_detector.py measures accuracy), the plumbing is.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def phantom(tiny_detector) -> Path:
    return tiny_detector[0]


@pytest.fixture(scope="module")
def run(tiny_detector):
    _, out, result = tiny_detector
    return out, result
