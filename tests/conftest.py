"""Shared fixtures: where the real samples live, and an isolated hybridcxr home for every test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # Keep ultralytics' config dir and fonts out of the user's home, and never let it go online.
    home = Path(config.rootpath) / ".pytest-home" if not os.environ.get("HYBRIDCXR_HOME") else None
    if home is not None:
        os.environ["HYBRIDCXR_HOME"] = str(home)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real chest X-ray samples beside the repository (``../shared/data``); skips where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real samples not found at {SHARED_DATA} (they live beside the repository, not in it)")
    return SHARED_DATA
