"""What tests that need an outside service share: the skip-or-fail rule and how Chromium is started."""

from __future__ import annotations

import os

import pytest

#: Debian's chromium, headless, with nothing that reaches out to the network; a fresh profile is appended.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def missing_service(reason: str) -> None:
    """Skip with ``reason``; under CI (``CI=true``) fail instead, so a CI run cannot pass without the test."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} [CI={os.environ['CI']}: a missing service fails the run]", pytrace=False)
    pytest.skip(reason)
