"""Time the README's first command as a new user meets it, and the machine it ran on.

    python3 tools/time_demo.py [--keep] [--size small]

Clones this repository's committed HEAD into a temporary folder, runs ``/usr/bin/time -v bash tools/dev.sh demo``
there (venv set-up included: nothing is reused), then measures the machine's fp32 matmul rate on two threads
with the new venv's torch (2048 x 2048 matrices, best of 5 seconds of repeats). Prints the wall time, the
venv's share of it, peak RSS, the load average before and after, and the rate: the numbers the README quotes.
Only the standard library is needed to start it (the system ``python3`` will do). Run it on an idle machine:
the load average it prints says whether it was.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from hybridcxr.device import cpu_threads  # noqa: E402  (the standard library alone: no venv needed)


def _cores() -> str:
    """The cores the demo may use (``cpu_threads``, what its trainers start from), and the machine's when fewer
    (``taskset -c 0`` emulates a slower box)."""
    usable = cpu_threads()
    return f"{usable} cores" if usable == os.cpu_count() else f"{usable} of {os.cpu_count()} cores usable"


_RATE = r"""
import time, torch
torch.set_num_threads(2)
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
for _ in range(3):
    a @ b
best, start = 0.0, time.perf_counter()
while time.perf_counter() - start < 5:
    t = time.perf_counter(); a @ b; dt = time.perf_counter() - t
    best = max(best, 2 * 2048 ** 3 / dt / 1e9)
print(f"{best:.1f}")
"""


def clone(into: Path) -> Path:
    """A clean clone of HEAD: what a new user gets."""
    target = into / "hybridcxr"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True)
    return target


def timed_demo(checkout: Path, size: str) -> tuple[float, float, str]:
    """Run the demo under /usr/bin/time -v; returns (wall seconds, seconds until the venv was ready, time's report)."""
    start = time.perf_counter()
    venv_ready = None
    process = subprocess.Popen(["/usr/bin/time", "-v", "bash", "tools/dev.sh", "demo", "demo-out", "--size", size],
                               cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if venv_ready is None and line.startswith("[1/"):  # the demo's first stage: the venv is done
            venv_ready = time.perf_counter() - start
        print(line, end="", flush=True)
    if process.wait() != 0:
        sys.exit(f"the demo failed (exit {process.returncode})")
    return time.perf_counter() - start, venv_ready or float("nan"), "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="demo size")
    parser.add_argument("--keep", action="store_true", help="keep the clone (and its venv) afterwards")
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="time-demo-", dir=REPO.parent))
    try:
        checkout = clone(work)
        wall, venv, report = timed_demo(checkout, args.size)
        rate = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c", _RATE], check=True,
                              capture_output=True, text=True).stdout.strip()
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
        print(f"\nRESULT demo ({args.size}) from a clean clone: {int(wall // 60)} min {int(wall % 60):02d} s wall "
              f"({venv:.0f} s venv set-up, {wall - venv:.0f} s demo), peak RSS "
              f"{int(rss.group(1)) / 1e6 if rss else float('nan'):.1f} GB; machine: {_cores()}, "
              f"{rate} GFLOP/s fp32 matmul on 2 threads; load average before {load_before[0]:.2f}, "
              f"after {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
