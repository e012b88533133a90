"""A guard that fails any network access outside loopback (tests and CI run offline; nothing may download).

A module of its own (not in a conftest) so that any test folder can import it unambiguously.
"""

from __future__ import annotations

import pytest


def forbid_network(mp: pytest.MonkeyPatch) -> list[str]:
    """Make every socket connection outside loopback (and DNS look-ups of other hosts) fail, and record it.

    Returns the list of attempts; the patch is inherited by processes forked while it holds.
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

    mp.setattr(socket.socket, "connect", guard(socket.socket.connect))
    mp.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex))
    mp.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts
