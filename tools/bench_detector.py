"""Benchmark the detector: accuracy on phantoms, and `detect` speed against ultralytics' default predict.

    python tools/bench_detector.py [--n 400] [--epochs 80] [--imgsz 320] [--out runs/bench_detector]
    python tools/bench_detector.py --only-runtime [--imgsz 320]      # 3. alone, on a detector trained 1 epoch
    python tools/bench_detector.py --only-runtime --run RUN         # 3. alone, on a trained detector run
    python tools/bench_detector.py --only-train-speed [--n 240 --imgsz 192 --train-epochs 5]   # 4. alone

1. Accuracy: writes phantom DICOMs, prepares them, trains YOLOv8n from scratch on the train split, runs
   ``hybridcxr detect`` on the validation split's original DICOMs and prints VinDr mAP@0.4 on it.
2. Speed: images/s of hybridcxr's batched detector against ultralytics' default ``YOLO(best.pt).predict``
   (run in its own process, as ultralytics sets itself up on import) with the same weights, on the same
   PNG files (the NIH samples in ../shared/data when present, else the prepared phantom PNGs). Both time the
   loop over files after a warm-up, each reads every file itself once. The ratio is the number to watch.
3. Runtimes: ``hybridcxr export --format onnx`` of the run, then images/s of ``detect --runtime onnx`` against
   the PyTorch path and ultralytics' default predict, end to end over the same files (decode included) and for
   the network alone (NMS included, on decoded images), after checking on those files that the ONNX graph's
   outputs equal PyTorch's within the export's tolerance. ``--only-runtime`` runs this part alone; it reuses
   ``--out``'s trained run, or trains one epoch on 48 phantoms (speed does not depend on training).
4. Training speed: training images/s of ``hybridcxr train detector`` (its defaults: bfloat16 autocast where
   the CPU has native bf16, data loaders beside the network, images cached in RAM) against ultralytics' own
   ``YOLO("yolov8n.yaml").train`` with its defaults (run in its own process), on the same prepared phantoms
   with the same epochs, image size and batch. Images/s = training images x epochs / the seconds spent in
   the training epochs (measured by callbacks from each epoch's start to its end: validation and checkpoint
   writing are left out on both sides, as are start-up and the dataset scan).
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


_TRAIN_BASELINE = r"""
import json, sys, time
from ultralytics import YOLO
data, epochs, imgsz, project = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = YOLO("yolov8n.yaml")
spans, start = [], {}
model.add_callback("on_train_epoch_start", lambda t: start.update(t=time.perf_counter()))
model.add_callback("on_train_epoch_end", lambda t: spans.append(time.perf_counter() - start["t"]))
model.train(data=data, epochs=epochs, imgsz=imgsz, batch=16, device="cpu", project=project, name="ultralytics",
            exist_ok=True, verbose=False, plots=False)
print(json.dumps({"seconds": sum(spans), "epochs": len(spans)}))
"""


def training_speed(args: argparse.Namespace) -> None:
    """4.: training images/s of hybridcxr's trainer against ultralytics' defaults, same data and epochs."""
    import subprocess
    import sys

    import pandas as pd

    from hybridcxr.data.phantom import make_phantom_dataset
    from hybridcxr.data.prepare import PrepareOptions, prepare
    from hybridcxr.data.sources import load_source
    from hybridcxr.detect.train import detector_config, train_detector
    from hybridcxr.detect.ultralytics_env import import_ultralytics

    out = Path(args.out) / "train-speed"
    phantom, prepared = out / "phantom", out / "prepared"
    if not (phantom / "annotations").is_dir():
        make_phantom_dataset(phantom, n=args.n, seed=args.seed, workers=2)
    prepare(load_source("vindr-cxr", phantom), prepared, PrepareOptions(size=args.imgsz, progress=False))
    n_train = int((pd.read_csv(prepared / "manifest.csv")["split"] == "train").sum())
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"}
    base = subprocess.run([sys.executable, "-c", _TRAIN_BASELINE, str(prepared / "data.yaml"), str(args.train_epochs),
                           str(args.imgsz), str(out / "runs")], check=True, capture_output=True, text=True, env=env)
    base_s = json.loads(base.stdout.strip().splitlines()[-1])["seconds"]
    import_ultralytics()
    spans, start = [], {}
    from ultralytics.utils import callbacks

    callbacks.default_callbacks["on_train_epoch_start"].append(lambda t: start.update(t=time.perf_counter()))
    callbacks.default_callbacks["on_train_epoch_end"].append(lambda t: spans.append(time.perf_counter() - start["t"]))
    run = train_detector(prepared, out / "runs" / f"hybridcxr-{time.time_ns()}", detector_config(
        {"epochs": args.train_epochs, "imgsz": args.imgsz, "batch": 16, "patience": args.train_epochs}))
    ours_s = sum(spans)
    images = n_train * args.train_epochs
    print(f"\ntraining speed: {n_train} training phantoms x {args.train_epochs} epochs at {args.imgsz} px, batch 16, "
          f"CPU ({len(os.sched_getaffinity(0))} cores), precision {run.card['amp'] or 'fp32'}:")
    print(f"  ultralytics YOLO.train (defaults): {images / base_s:.1f} images/s ({base_s:.1f} s in epochs)")
    print(f"  hybridcxr train detector:          {images / ours_s:.1f} images/s ({ours_s:.1f} s in epochs)")
    print(f"RESULT training speed ratio hybridcxr / ultralytics = {base_s / ours_s:.2f}x")


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

    paths, where = speed_files(Path(args.out))
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


def tiny_run(out: Path, imgsz: int, n: int = 48) -> Path:
    """A detector run good enough to time: ``out/run`` when trained, else YOLOv8n trained 1 epoch on ``n`` phantoms."""
    from hybridcxr.data.phantom import make_phantom_dataset
    from hybridcxr.data.prepare import PrepareOptions, prepare
    from hybridcxr.data.sources import load_source
    from hybridcxr.detect.train import detector_config, train_detector

    for run in (out / "run", out / "tiny-run"):
        if (run / "weights" / "best.json").is_file():
            return run
    phantom, prepared = out / "tiny-phantom", out / "tiny-prepared"
    if not (phantom / "annotations").is_dir():
        make_phantom_dataset(phantom, n=n, seed=0)
    prepare(load_source("vindr-cxr", phantom), prepared, PrepareOptions(size=imgsz, progress=False))
    train_detector(prepared, out / "tiny-run", detector_config({"epochs": 1, "imgsz": imgsz, "batch": 16,
                                                                "patience": 1}))
    return out / "tiny-run"


def speed_files(out: Path) -> tuple[list[str], str]:
    """The PNGs every speed comparison reads: the NIH samples (1024 px) when present, else prepared phantoms."""
    if NIH.is_dir():
        paths = sorted(str(p) for p in NIH.glob("*.png"))
        where = f"{len(paths)} NIH PNGs (1024 px) from {NIH}"
    else:
        paths = sorted(str(p) for p in out.rglob("images/**/*.png"))[:64]
        where = f"{len(paths)} phantom PNGs"
    return paths * max(1, 64 // len(paths)), where


def best_rate(jobs: dict[str, object], images: int, repeats: int) -> dict[str, float]:
    """Images/s of each ``jobs`` callable, best of ``repeats`` passes, the jobs interleaved within each pass
    (so a change in the machine's load hits them alike)."""
    best = dict.fromkeys(jobs, float("inf"))
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: images / seconds for name, seconds in best.items()}


def exported(run: Path) -> None:
    """Export ``run`` to ONNX, fp32 and int8, unless both exports are there and current."""
    from hybridcxr.errors import InputError
    from hybridcxr.export.onnx import export_run
    from hybridcxr.export.runtime import OnnxDetector

    try:
        OnnxDetector.load(run)
        OnnxDetector.load(run, int8=True)
    except InputError:
        print(export_run(run, int8=True))


def runtime_speed(run: Path, args: argparse.Namespace) -> None:
    """Images/s of detect --runtime onnx and onnx-int8, the PyTorch path and ultralytics' predict; ONNX outputs
    checked first on the timed files (fp32 within the export's tolerance, int8 within the int8 tolerance)."""
    import numpy as np

    from hybridcxr.detect.predict import Detector
    from hybridcxr.export.quantize import INT8_TOLERANCE
    from hybridcxr.export.record import TOLERANCE
    from hybridcxr.export.runtime import OnnxDetector
    from hybridcxr.io import read_radiograph

    exported(run)
    paths, where = speed_files(Path(args.out))
    torch_det = Detector.load(run, device="cpu")
    onnx_det, int8_det = OnnxDetector.load(run), OnnxDetector.load(run, int8=True)
    prepared = [torch_det.prepare(read_radiograph(p)) for p in dict.fromkeys(paths)]
    images = np.stack([p.image for p in prepared])
    expected = torch_det.forward(images, True)
    pairs = list(zip(onnx_det.forward(images, True), expected))
    equal = all(TOLERANCE.allclose(a, np.asarray(b)) for a, b in pairs)
    largest = max(float(np.abs(a - np.asarray(b)).max()) for a, b in pairs)
    int8_diff = INT8_TOLERANCE.measure(int8_det.forward(images, True), expected, torch_det.imgsz)
    int8_ok = not INT8_TOLERANCE.failures(int8_diff)
    conf, size = 0.05, torch_det.config["batch_predict"]
    dets = (("torch", torch_det), ("onnx", onnx_det), ("onnx-int8", int8_det))
    files = {name: (lambda d=d: sum(1 for _ in d.predict_paths(paths, conf=conf))) for name, d in dets}
    network = {name: (lambda d=d: [d.run(prepared[i:i + size], conf=conf) for i in range(0, len(prepared), size)])
               for name, d in dets}
    for job in (*files.values(), *network.values()):
        job()  # warm-up: first-call allocations, onnxruntime's arena
    rate = best_rate(files, len(paths), args.repeats)
    net = best_rate(network, len(prepared), args.repeats)
    base = len(paths) / best_baseline_seconds(_BASELINE, [str(run / "weights" / "best.pt"), str(torch_det.imgsz),
                                                          str(conf), json.dumps(paths)], args.repeats)
    print(f"\nruntimes on {where}, {len(paths)} files per pass, imgsz {torch_det.imgsz}, CPU, best of "
          f"{args.repeats} (cores: {len(os.sched_getaffinity(0))}):")
    print(f"  ONNX outputs (output0, pooled features) on the {len(prepared)} files equal PyTorch's within rtol "
          f"{TOLERANCE.rtol:g}, atol {TOLERANCE.atol:g}: {'yes' if equal else 'NO'} (largest difference {largest:.2g})")
    print(f"  int8 ONNX outputs on the same files within the int8 tolerance (scores {INT8_TOLERANCE.scores:g}, "
          f"boxes {INT8_TOLERANCE.boxes:g} of the image, features {INT8_TOLERANCE.features:g} of the largest): "
          f"{'yes' if int8_ok else 'NO'} (" + ", ".join(f"{k} {v:.2g}" for k, v in int8_diff.items()) + ")")
    print(f"  ultralytics YOLO.predict (default settings): {base:.1f} images/s")
    for name, label in (("torch", "detect, PyTorch path"), ("onnx", "detect --runtime onnx"),
                        ("onnx-int8", "detect --runtime onnx-int8")):
        print(f"  {label}: {rate[name]:.1f} images/s; network + NMS alone {net[name]:.1f} images/s")
    for name, ok in (("onnx", equal), ("onnx-int8", int8_ok)):
        print(f"RESULT detect --runtime {name} / PyTorch path = {rate[name] / rate['torch']:.2f}x end to end, "
              f"{net[name] / net['torch']:.2f}x network alone; / ultralytics predict = {rate[name] / base:.2f}x; "
              f"outputs within {'the int8' if name == 'onnx-int8' else 'the'} tolerance: {'yes' if ok else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="phantom radiographs")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per side (best is kept)")
    parser.add_argument("--out", default="runs/bench_detector", help="work folder (reused: a trained run is kept)")
    parser.add_argument("--skip-accuracy", action="store_true", help="only time an already trained run")
    parser.add_argument("--only-runtime", action="store_true",
                        help="only 3.: ONNX against PyTorch and ultralytics (reuses --out's run, else trains 1 epoch)")
    parser.add_argument("--only-train-speed", action="store_true", help="only 4.: training images/s against ultralytics")
    parser.add_argument("--train-epochs", type=int, default=5, help="epochs each side trains in 4.")
    parser.add_argument("--run", type=Path, help="with --only-runtime: time this trained detector run instead")
    args = parser.parse_args()
    if args.only_train_speed:
        training_speed(args)
        return
    if args.only_runtime:
        runtime_speed(args.run or tiny_run(Path(args.out), args.imgsz), args)
        return
    run = Path(args.out) / "run" if args.skip_accuracy else accuracy(args)
    speed(run, args)
    runtime_speed(run, args)
    training_speed(args)


if __name__ == "__main__":
    main()
