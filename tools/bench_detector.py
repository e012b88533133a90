"""Benchmark the detector: accuracy on phantoms, and `detect` speed against ultralytics' default predict.

    python tools/bench_detector.py [--n 400] [--epochs 80] [--imgsz 320] [--out runs/bench_detector]

1. Accuracy: writes phantom DICOMs, prepares them, trains YOLOv8n from scratch on the train split, runs
   ``hybridcxr detect`` on the validation split's original DICOMs and prints VinDr mAP@0.4 on it.
2. Speed: images/s of hybridcxr's batched detector against ultralytics' default ``YOLO(best.pt).predict``
   (run in its own process, as ultralytics sets itself up on import) with the same weights, on the same
   PNG files (the NIH samples in ../shared/data when present, else the prepared phantom PNGs). Both time the
   loop over files after a warm-up, each reads every file itself once. The ratio is the number to watch.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _baseline import best_baseline_seconds

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "data" / "nih" / "images"

_BASELINE = r"""
import json, sys, time
from ultralytics import YOLO
weights, imgsz, conf, paths = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
model = YOLO(weights)
for p in paths[:2]:
    model.predict(p, imgsz=imgsz, conf=conf, verbose=False)
start = time.perf_counter()
n = 0
for result in model.predict(paths, imgsz=imgsz, conf=conf, verbose=False, stream=True):
    n += 1
print(json.dumps({"images": n, "seconds": time.perf_counter() - start}))
"""


def accuracy(args: argparse.Namespace) -> Path:
    """Train on phantoms and print mAP@0.4 on the validation split; returns the run folder."""
    import pandas as pd

    from hybridcxr.data.phantom import make_phantom_dataset
    from hybridcxr.data.prepare import PrepareOptions, prepare
    from hybridcxr.data.sources import load_source
    from hybridcxr.detect.evaluate import evaluate_detector
    from hybridcxr.detect.predict import Detector
    from hybridcxr.detect.train import detector_config, train_detector
    from hybridcxr.pipeline import detect_files

    out = Path(args.out)
    phantom, prepared, run = out / "phantom", out / "prepared", out / "run"
    if not (phantom / "annotations").is_dir():
        make_phantom_dataset(phantom, n=args.n, seed=args.seed)
    prepare(load_source("vindr-cxr", phantom), prepared, PrepareOptions(size=args.imgsz, progress=False))
    start = time.perf_counter()
    if not (run / "weights" / "best.json").is_file():
        train_detector(prepared, run, detector_config({"epochs": args.epochs, "imgsz": args.imgsz,
                                                       "batch": 16, "patience": args.epochs}))
    train_s = time.perf_counter() - start
    manifest = pd.read_csv(prepared / "manifest.csv", dtype={"image_id": str})
    val = manifest[manifest["split"] == "val"]["path"].tolist()
    detector = Detector.load(run)
    detect_files(val, detector, out / "detect-val", conf=0.001, progress=False)
    report = evaluate_detector(out / "detect-val", prepared, split="val")
    print(report)
    print(f"\nphantoms: {args.n} ({(manifest['split'] == 'train').sum()} train, {len(val)} val), "
          f"imgsz {args.imgsz}, {args.epochs} epochs from scratch, training took {train_s / 60:.1f} min "
          f"on {detector.card['device']}")
    print(f"RESULT mAP@0.4 (val, VOC2010, 15 classes incl. No finding) = {report.map:.4f}; "
          f"findings only = {report.map_without_no_finding:.4f}")
    return run


def speed(run: Path, args: argparse.Namespace) -> None:
    """Images/s of our detector and of ultralytics' default predict on the same PNGs."""
    from hybridcxr.detect.predict import Detector

    if NIH.is_dir():
        paths = sorted(str(p) for p in NIH.glob("*.png"))
        where = f"{len(paths)} NIH PNGs (1024 px) from {NIH}"
    else:
        paths = sorted(str(p) for p in (Path(args.out) / "prepared" / "images").rglob("*.png"))[:64]
        where = f"{len(paths)} phantom PNGs"
    paths = paths * max(1, 64 // len(paths))
    detector = Detector.load(run, device="cpu")
    imgsz, conf = detector.imgsz, 0.05
    list(detector.predict_paths(paths[:2], conf=conf))
    best_ours = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        n = sum(1 for _ in detector.predict_paths(paths, conf=conf))
        best_ours = min(best_ours, time.perf_counter() - start)
    best_base = best_baseline_seconds(_BASELINE, [str(run / "weights" / "best.pt"), str(imgsz), str(conf),
                                                  json.dumps(paths)], args.repeats)
    ours, base = n / best_ours, len(paths) / best_base
    print(f"\nspeed on {where}, {len(paths)} files per pass, imgsz {imgsz}, CPU, best of {args.repeats}:")
    print(f"  ultralytics YOLO.predict (default settings): {base:.1f} images/s")
    print(f"  hybridcxr detector (batched, threaded decode): {ours:.1f} images/s")
    print(f"RESULT speed ratio hybridcxr / ultralytics = {ours / base:.2f}x (cores: {len(os.sched_getaffinity(0))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="phantom radiographs")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per side (best is kept)")
    parser.add_argument("--out", default="runs/bench_detector", help="work folder (reused: a trained run is kept)")
    parser.add_argument("--skip-accuracy", action="store_true", help="only time an already trained run")
    args = parser.parse_args()
    run = Path(args.out) / "run" if args.skip_accuracy else accuracy(args)
    speed(run, args)


if __name__ == "__main__":
    main()
