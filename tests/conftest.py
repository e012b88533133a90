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
    os.environ.setdefault("HYBRIDCXR_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real chest X-ray samples beside the repository (``../shared/data``); skips where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real samples not found at {SHARED_DATA} (they live beside the repository, not in it)")
    return SHARED_DATA


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any socket connection outside loopback (and on DNS look-ups of other hosts).

    Yields the list of attempts; the patch is inherited by processes forked during the test.
    """
    import ipaddress
    import socket

    attempts: list[str] = []

    def loopback(host: object) -> bool:
        if isinstance(host, str) and host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(str(host)).is_loopback
        except ValueError:
            return False

    def guard(original):
        def connect(self, address, *args, **kwargs):
            host = address[0] if isinstance(address, tuple) else address
            if self.family in (socket.AF_INET, socket.AF_INET6) and not loopback(host):
                attempts.append(f"connect {address}")
                raise OSError(f"network access attempted during a test: {address}")
            return original(self, address, *args, **kwargs)
        return connect

    original_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not loopback(host):
            attempts.append(f"resolve {host}")
            raise socket.gaierror(f"network access attempted during a test: resolve {host}")
        return original_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"
