"""Run a benchmark's baseline script in a fresh process, set up as a plain ultralytics user's would be.

The baseline must import ultralytics itself (which sets its own thread count on import), so it runs in its
own interpreter, offline, with the fonts hybridcxr installed; it prints ``{"seconds": ...}`` last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def best_baseline_seconds(script: str, args: list[str], repeats: int) -> float:
    """Fastest of ``repeats`` runs of ``python -c script *args``, as reported by the script."""
    from hybridcxr.detect.ultralytics_env import hybridcxr_home

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update({"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(hybridcxr_home() / "ultralytics"),
                "NO_ALBUMENTATIONS_UPDATE": "1"})
    best = float("inf")
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                              check=True)
        best = min(best, json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
    return best
