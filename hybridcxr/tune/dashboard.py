"""optuna-dashboard on a study's storage: its command line, starting it, and waiting until it answers.

The dashboard reads the storage live, so it shows a running study as its workers fill it.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from hybridcxr.errors import HybridCXRError


def dashboard_command(storage: str, host: str = "127.0.0.1", port: int = 8080) -> list[str]:
    """The optuna-dashboard command line: its console script beside this Python, else its module."""
    script = Path(sys.executable).parent / "optuna-dashboard"
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "optuna_dashboard._cli"]
    return [*launcher, storage, "--host", host, "--port", str(int(port))]


def start_dashboard(storage: str, host: str = "127.0.0.1", port: int = 8080) -> subprocess.Popen:
    """Launch optuna-dashboard on ``storage`` (it reads the study live); stop it with ``.terminate()``."""
    return subprocess.Popen(dashboard_command(storage, host, port))


def dashboard_url(host: str = "127.0.0.1", port: int = 8080) -> str:
    """The dashboard's address (IPv6 hosts bracketed)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{int(port)}/"


def wait_until_up(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers HTTP 200; raise TimeoutError after ``timeout`` s, or HybridCXRError at
    once if ``process`` (the server) exits. Proxies are bypassed: the server is local."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise HybridCXRError(f"the server for {url} exited with code {process.returncode}")
        try:
            with opener.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer HTTP 200 within {timeout:.0f} s")
        time.sleep(0.2)
