"""The README's walkthrough works: every code block marked ``<!-- runnable -->`` runs, in order, in one folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- runnable -->"


def runnable_blocks(text: str) -> list[str]:
    """The bodies of the fenced code blocks that directly follow a runnable marker."""
    return [m.group(1) for m in re.finditer(re.escape(MARK) + r"\s*\n```[a-z]*\n(.*?)\n```", text, re.S)]


def test_marker_finds_only_marked_blocks():
    text = f"```bash\necho no\n```\n{MARK}\n```bash\necho yes\n```\n"
    assert runnable_blocks(text) == ["echo yes"]


@pytest.mark.slow
def test_readme_walkthrough_runs_in_order(tmp_path):
    blocks = runnable_blocks(README.read_text())
    assert len(blocks) >= 4, "the README's walkthrough lost its runnable blocks"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HYBRIDCXR_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    for i, block in enumerate(blocks, 1):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"README block {i} failed:\n{block}\n--- output ---\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
