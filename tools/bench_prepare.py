"""Benchmark: images/s of `prepare` on phantom DICOMs with 1 and 2 worker processes (same run, same files).

    python tools/bench_prepare.py [--n 160] [--size 512] [--matrix 2048]

Prints the rate of each and the ratio of 2 workers to 1; the ratio is the number to watch (the absolute
rate depends on the machine). Each configuration prepares into a fresh folder, so nothing is reused.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from hybridcxr.data.phantom import make_phantom_dataset
from hybridcxr.data.prepare import PrepareOptions, prepare
from hybridcxr.data.sources import load_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=160, help="phantom DICOMs to prepare")
    parser.add_argument("--size", type=int, default=512, help="long side of the cached PNGs")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (best is kept)")
    parser.add_argument("--matrix", type=int, default=2048,
                        help="rows and columns of each phantom DICOM (real chest radiographs: 2000-3000) [2048]; "
                             "0 = the phantoms' own smaller sizes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "phantom"
        size = (args.matrix, args.matrix) if args.matrix else None
        make_phantom_dataset(root, n=args.n, seed=0, size=size, workers=len(os.sched_getaffinity(0)))
        tables = load_source("vindr-cxr", root)
        rates: dict[int, float] = {}
        for workers in (1, 2):
            best = float("inf")
            for repeat in range(args.repeats):
                out = Path(tmp) / f"out-{workers}-{repeat}"
                start = time.perf_counter()
                result = prepare(tables, out, PrepareOptions(size=args.size, workers=workers, progress=False))
                best = min(best, time.perf_counter() - start)
                assert result.decoded == args.n and not result.skipped
            rates[workers] = args.n / best
            print(f"workers={workers}: {rates[workers]:.1f} images/s ({args.n} phantom DICOMs, best of {args.repeats})")
    print(f"cores available: {len(os.sched_getaffinity(0))}")
    print(f"ratio 2 workers / 1 worker: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
