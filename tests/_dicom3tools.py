"""dciodvfy (Debian's dicom3tools), the DICOM validator every object we write must pass with no errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from _services import missing_service

_ERROR = re.compile(r"^\s*Error\b")


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The "Error" lines dciodvfy prints for ``path`` (warnings are not counted); skips, or fails under CI,
    where dciodvfy is not installed (``apt-get install dicom3tools``)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        missing_service("dciodvfy not found: install Debian's dicom3tools (apt-get install dicom3tools)")
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if _ERROR.match(line)]
