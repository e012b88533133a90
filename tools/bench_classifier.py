"""Benchmark the fusion classifier: real NIH data end to end, phantom accuracy, and `classify` speed.

    python tools/bench_classifier.py [--out runs/bench_classifier] [--det-epochs 10] [--skip-nih]
                                     [--lungs-model runs/bench_lungs] [--only-lungs] [--head mlp|gcn]
                                     [--only-augment [--augment-views 2] [--oversample]]
    python tools/bench_classifier.py --only-runtime          # 4. alone (a phantom classifier, made if absent)

1. NIH (../shared/data/nih, 477 real images, patient-grouped split): prepare, train the detector on the
   boxed images (NIH + ChestX-Det10 boxes, fused), train the classifier, evaluate it on the test split with
   the ablation table. Everything is trained from scratch on the CPU (no pretrained weights exist offline):
   the numbers show the pipeline on real files, not what a pretrained model reaches.
1b. Lung fields on NIH (issue 12): with the same prepared data and detector, three more classifier runs that
   add the lung segmenter of tools/bench_lungs.py (trained on ../shared/data/lung-masks; made if absent): the
   ``lungs`` feature group, the CNN on the lung-field crop, and both. Each is scored on the same test split;
   the table gives test AUROC per finding for the four variants, and the macro mean.
1c. Augmentation on NIH (issue 13, ``--only-augment``): with the same prepared data and detector, the MLP and the
   label-graph (GCN) head each trained without and with ``augment_views=K`` cached augmented views per training
   image (``--oversample``: also with ``oversample=rare``); one feature cache for all, so the views are computed
   once. The table gives test macro AUROC with its patient-cluster bootstrap CI, and validation macro AUROC.
2. Phantoms: the classifier on the phantoms of tools/bench_detector.py (its prepared folder and detector, made
   if absent): validation macro AUROC, which should be at least 0.9 where findings are visible. ``--head gcn``
   trains the label-graph head instead (its own run folder, the same cached features), to compare the two.
3. Speed: images/s of `hybridcxr classify` (one decode per image, detector + CNN + head, batched) against a
   naive baseline that runs ultralytics' `YOLO.predict` on each file and a separate torchvision ResNet-18 that
   reads the file again, in its own process. Same weights and files; the ratio is the number to watch.
4. Runtimes: ``hybridcxr export --format onnx`` of a classifier run, then images/s of ``classify --runtime onnx``
   (the Analyzer on onnxruntime) against the PyTorch path and the naive baseline of 3., on the NIH PNGs, after
   checking on those files that its probabilities equal PyTorch's within the export's tolerance.
   ``--only-runtime`` runs this part alone, on the phantom classifier of 2. when trained, else on a classifier
   trained briefly on tools/bench_detector.py's one-epoch detector (speed does not depend on training).
5. Fine-tuning precision (``--only-finetune``): images/s of end-to-end training steps (forward under the
   end-to-end mode's own autocast, backward, AdamW) of ResNet-18 and DenseNet-121 at 224 px, batch 16, in
   bfloat16 autocast against fp32, on this CPU; only where the CPU computes bf16 natively (else it says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

from _baseline import best_baseline_seconds
from bench_detector import best_rate, tiny_run
from bench_int8 import exported, int8_refusal
from run_real import run_nih

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "data" / "nih"

_BASELINE = r"""
import json, sys, time
import cv2, torch, torchvision
from ultralytics import YOLO
weights, imgsz, paths = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
yolo = YOLO(weights)
cnn = torchvision.models.resnet18(weights=None).eval()
mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
def one(p):
    yolo.predict(p, imgsz=imgsz, conf=0.05, verbose=False)
    image = cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(cv2.resize(image, (224, 224))).permute(2, 0, 1).float() / 255
    with torch.inference_mode():
        cnn(((x - mean) / std)[None])
for p in paths[:2]:
    one(p)
start = time.perf_counter()
for p in paths:
    one(p)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def nih(args: argparse.Namespace) -> Path:
    """Prepare, train and evaluate on the real NIH samples (as tools/run_real.py); returns the classifier run."""
    out = Path(args.out)
    prepared, _, cls, _ = run_nih(out, args.det_epochs)
    run([sys.executable, "-m", "hybridcxr.cli", "evaluate", "classifier", "--model", str(cls), "--data",
         str(prepared), "--split", "test", "--out", str(out / "nih-report"), "--no-progress"])
    print((out / "nih-report" / "report.md").read_text())
    return cls


LUNG_VARIANTS: dict[str, list[str]] = {
    "baseline (no lungs)": [],
    "+ lungs group": ["lungs={lungs}"],
    "+ lung crop": ["lungs={lungs}", "crop=lungs", "groups=[yolo,cnn,age,sex]"],
    "+ lungs group + crop": ["lungs={lungs}", "crop=lungs"],
}


def _variant_run(out: Path, name: str, baseline: Path) -> Path:
    """The classifier run of one lung variant (the baseline is run_nih's own classifier)."""
    if not LUNG_VARIANTS[name]:
        return baseline
    return out / ("nih-classifier-" + name.strip("+ ").replace(" + ", "-").replace(" ", "-"))


def lung_variants(args: argparse.Namespace) -> None:
    """Test AUROC per finding on NIH with and without the lung group and the lung crop (one table)."""
    import pandas as pd

    out = Path(args.out)
    prepared, det, baseline, _ = run_nih(out, args.det_epochs)
    lungs = Path(args.lungs_model)
    if not (lungs / "lungs.json").is_file():
        run([sys.executable, str(REPO / "tools" / "bench_lungs.py"), "--out", str(lungs)])
    columns = {}
    for name, overrides in LUNG_VARIANTS.items():
        cls = _variant_run(out, name, baseline)
        if not (cls / "model" / "card.json").is_file():
            run([sys.executable, "-m", "hybridcxr.cli", "train", "classifier", "--data", str(prepared), "--detector",
                 str(det), "--out", str(cls), "--no-progress", *(o.format(lungs=lungs) for o in overrides)])
        report = out / f"{cls.name}-report-test"
        if not (report / "per_finding.csv").is_file():
            run([sys.executable, "-m", "hybridcxr.cli", "evaluate", "classifier", "--model", str(cls), "--data",
                 str(prepared), "--split", "test", "--out", str(report), "--no-ablation", "--no-progress"])
        table = pd.read_csv(report / "per_finding.csv").set_index("finding")
        columns[name] = table["auroc"]
        n_pos = table["n_pos"]
    frame = pd.DataFrame(columns)
    frame.loc["macro mean"] = frame.mean(skipna=True)
    frame.insert(0, "test positives", pd.array(list(n_pos) + [int(n_pos.sum())], dtype="Int64"))
    print(f"\nNIH test split ({int(len(frame) - 1)} findings), test AUROC per finding, lung model {lungs}:")
    print("| finding | " + " | ".join(frame.columns) + " |\n|---|" + "---|" * len(frame.columns))
    for finding, row in frame.iterrows():
        print(f"| {finding} | " + " | ".join("n/a" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else str(v)
                                           for v in row.tolist()) + " |")
    for name in LUNG_VARIANTS:
        card = json.loads((_variant_run(out, name, baseline) / "model" / "card.json").read_text())
        print(f"RESULT {name}: test macro AUROC {frame.at['macro mean', name]:.3f}, Cardiomegaly "
              f"{frame.at['Cardiomegaly', name]:.3f}, val macro AUROC {card['val_macro_auroc']:.3f}")


def _augment_variants(k: int, oversample: bool) -> dict[str, list[str]]:
    """The classifier runs of the augmentation table: both heads, without and with K cached views per image."""
    out = {"mlp": [], f"mlp + aug (K={k})": [f"augment_views={k}"], "gcn": ["head=gcn"],
           f"gcn + aug (K={k})": ["head=gcn", f"augment_views={k}"]}
    if oversample:
        out |= {f"mlp + aug (K={k}) + oversample": [f"augment_views={k}", "oversample=rare"],
                f"gcn + aug (K={k}) + oversample": ["head=gcn", f"augment_views={k}", "oversample=rare"]}
    return out


def _macro_ci(report: Path) -> tuple[float, float, float]:
    """(macro AUROC, CI low, CI high) from the summary line of an evaluation report.md."""
    import re

    found = re.search(r"Macro AUROC ([\d.]+)\*\* \(95% CI ([\d.]+)-([\d.]+)\)", report.read_text())
    if found is None:
        raise SystemExit(f"{report}: no macro AUROC line")
    return float(found[1]), float(found[2]), float(found[3])


def augment_variants(args: argparse.Namespace) -> None:
    """Test macro AUROC on NIH for the MLP and GCN heads, each without and with K augmented views per training
    image: same prepared data, detector, CNN (one feature cache, its views computed once) and test split."""
    out = Path(args.out)
    prepared, det, baseline, _ = run_nih(out, args.det_epochs)
    cache = out / "nih-classifier-augment-features"  # the variants' shared cache (same seed, same random CNN)
    rows = []
    for name, overrides in _augment_variants(args.augment_views, args.oversample).items():
        cls = out / ("nih-augment-" + name.replace(" + ", "-").replace(" ", "").replace("(", "").replace(")", ""))
        if not (cls / "model" / "card.json").is_file():
            start = time.perf_counter()
            run([sys.executable, "-m", "hybridcxr.cli", "train", "classifier", "--data", str(prepared), "--detector",
                 str(det), "--out", str(cls), "--no-progress", f"cache={cache}", *overrides])
            print(f"trained {name} in {time.perf_counter() - start:.0f} s", flush=True)
        report = out / f"{cls.name}-report-test"
        if not (report / "report.md").is_file():
            run([sys.executable, "-m", "hybridcxr.cli", "evaluate", "classifier", "--model", str(cls), "--data",
                 str(prepared), "--split", "test", "--out", str(report), "--no-ablation", "--no-progress"])
        card = json.loads((cls / "model" / "card.json").read_text())
        rows.append((name, *_macro_ci(report / "report.md"), card["val_macro_auroc"],
                     card["augmentation"]["training_rows"]))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nNIH test split, macro AUROC (95% patient-cluster bootstrap CI, 1000 resamples); one prepared set, "
          f"detector, CNN and split; load average now {load} on {len(os.sched_getaffinity(0))} cores:")
    print("| variant | training rows (images + views) | test macro AUROC (95% CI) | val macro AUROC |")
    print("|---|---|---|---|")
    for name, auroc, low, high, val, trained in rows:
        print(f"| {name} | {trained['images']} + {trained['views']} | {auroc:.3f} ({low:.3f}-{high:.3f}) | {val:.3f} |")
    for name, auroc, low, high, val, _ in rows:
        print(f"RESULT {name}: test macro AUROC {auroc:.3f} ({low:.3f}-{high:.3f}), val macro AUROC {val:.3f}")


def phantoms(args: argparse.Namespace) -> Path:
    """Classifier on the detector benchmark's phantoms; prints validation macro AUROC."""
    from hybridcxr.classify.train import classifier_config, train_classifier

    bench = Path(args.phantom_bench)
    if not (bench / "run" / "weights" / "best.json").is_file():
        run([sys.executable, str(REPO / "tools" / "bench_detector.py"), "--out", str(bench), "--n", "400",
             "--epochs", "60", "--imgsz", "320"])
    cls = Path(args.out) / ("phantom-classifier" if args.head == "mlp" else f"phantom-classifier-{args.head}")
    features = Path(args.out) / "phantom-classifier" / "features"  # one cache for both heads (same CNN, detector)
    if not (cls / "model" / "card.json").is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_classifier(bench / "prepared", bench / "run", cls,
                             classifier_config({"head": args.head, "cache": str(features)}), progress=False)
    card = json.loads((cls / "model" / "card.json").read_text())
    print(f"RESULT phantom validation macro AUROC ({args.head} head) = {card['val_macro_auroc']:.4f} "
          f"(best epoch {card['best_epoch']})")
    return cls


def speed(cls: Path, args: argparse.Namespace) -> None:
    """Images/s of the Analyzer against ultralytics predict + a separate ResNet-18, on the same PNGs."""
    from hybridcxr.pipeline import Analyzer

    paths = sorted(str(p) for p in (NIH / "images").glob("*.png")) * 2
    analyzer = Analyzer(cls, device="cpu")
    list(analyzer.analyze_paths([Path(p) for p in paths[:4]]))
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        n = sum(1 for _ in analyzer.analyze_paths([Path(p) for p in paths]))
        best = min(best, time.perf_counter() - start)
    weights = Path(args.detector_pt or (Path(args.out) / "nih-detector" / "weights" / "best.pt"))
    imgsz = analyzer.detector.imgsz
    base = best_baseline_seconds(_BASELINE, [str(weights), str(imgsz), json.dumps(paths)], args.repeats)
    ours, theirs = n / best, len(paths) / base
    print(f"\nspeed on {len(paths)} NIH PNGs (1024 px), detector imgsz {imgsz}, CNN 224 px, CPU, best of {args.repeats}:")
    print(f"  naive: ultralytics YOLO.predict + torchvision ResNet-18, each reading the file: {theirs:.1f} images/s")
    print(f"  hybridcxr classify (one decode, batched detector + CNN + head): {ours:.1f} images/s")
    print(f"RESULT speed ratio hybridcxr / naive = {ours / theirs:.2f}x (cores: {len(os.sched_getaffinity(0))})")


def runtime_models(args: argparse.Namespace) -> tuple[Path, Path]:
    """A classifier run to time and the detector run it was trained with (whose ``best.pt`` the baseline reads)."""
    from hybridcxr.classify.train import classifier_config, train_classifier

    bench = Path(args.phantom_bench)
    cls = Path(args.out) / "phantom-classifier"
    if (cls / "model" / "card.json").is_file() and (bench / "run" / "weights" / "best.pt").is_file():
        return cls, bench / "run"
    det = tiny_run(bench, 320)
    cls = Path(args.out) / "tiny-classifier"
    if not (cls / "model" / "card.json").is_file():
        prepared = bench / ("prepared" if det.name == "run" else "tiny-prepared")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the CNN's random initialisation
            train_classifier(prepared, det, cls, classifier_config({"epochs": 3, "patience": 3}), progress=False)
    return cls, det


def runtime_speed(args: argparse.Namespace) -> None:
    """Images/s of classify --runtime onnx and onnx-int8, the PyTorch path and the naive baseline; the
    probabilities compared first (fp32 within the export's tolerance; int8's differences printed as measured)."""
    import numpy as np

    from hybridcxr.export.quantize import INT8_TOLERANCE
    from hybridcxr.export.record import TOLERANCE
    from hybridcxr.pipeline import Analyzer

    cls, det = runtime_models(args)
    exported(cls)
    refused = int8_refusal(cls)
    if refused is not None:
        raise SystemExit(f"{cls}: its int8 detector does not classify ({refused}); time a run whose export keeps "
                         "the int8 tolerance")
    onnx, int8, eager = Analyzer(cls, runtime="onnx"), Analyzer(cls, runtime="onnx-int8"), Analyzer(cls, device="cpu")
    files = sorted(Path(p) for p in (NIH / "images").glob("*.png"))
    paths = files * 2
    runs = (("torch", eager), ("onnx", onnx), ("onnx-int8", int8))
    probs = {name: np.array([list(a.probabilities.values()) for a in an.analyze_paths(files)]) for name, an in runs}
    equal = TOLERANCE.allclose(probs["onnx"], probs["torch"])
    largest = {name: float(np.nanmax(np.abs(probs[name] - probs["torch"]))) for name in ("onnx", "onnx-int8")}
    jobs = {name: (lambda an=an: sum(1 for _ in an.analyze_paths(paths))) for name, an in runs}
    rate = best_rate(jobs, len(paths), args.repeats)
    imgsz = eager.detector.imgsz
    base = len(paths) / best_baseline_seconds(_BASELINE, [str(det / "weights" / "best.pt"), str(imgsz),
                                                          json.dumps([str(p) for p in paths])], args.repeats)
    print(f"\nruntimes of {cls} on {len(paths)} NIH PNGs (1024 px; detector at {imgsz} px, CNN at "
          f"{eager.backbone.input_size} px), CPU, best of {args.repeats} (cores: {len(os.sched_getaffinity(0))}):")
    print(f"  ONNX probabilities on the {len(files)} files equal PyTorch's within rtol {TOLERANCE.rtol:g}, atol "
          f"{TOLERANCE.atol:g}: {'yes' if equal else 'NO'} (largest difference {largest['onnx']:.2g})")
    int8_ok = largest["onnx-int8"] <= INT8_TOLERANCE.probabilities
    print(f"  onnx-int8 probabilities (the detector's int8 features) differ from PyTorch's by up to "
          f"{largest['onnx-int8']:.2g}: within the int8 tolerance ({INT8_TOLERANCE.probabilities:g}): "
          f"{'yes' if int8_ok else 'NO'}")
    print(f"  naive: ultralytics YOLO.predict + torchvision ResNet-18, each reading the file: {base:.1f} images/s")
    for name, label in (("torch", "classify, PyTorch path"), ("onnx", "classify --runtime onnx"),
                        ("onnx-int8", "classify --runtime onnx-int8")):
        print(f"  {label}: {rate[name]:.1f} images/s")
    print(f"RESULT classify --runtime onnx / PyTorch path = {rate['onnx'] / rate['torch']:.2f}x; / naive = "
          f"{rate['onnx'] / base:.2f}x; probabilities equal within tolerance: {'yes' if equal else 'NO'}")
    print(f"RESULT classify --runtime onnx-int8 / PyTorch path = {rate['onnx-int8'] / rate['torch']:.2f}x; / naive = "
          f"{rate['onnx-int8'] / base:.2f}x; largest probability difference {largest['onnx-int8']:.2g}, within the "
          f"int8 tolerance: {'yes' if int8_ok else 'NO'}")


def finetune_speed(args: argparse.Namespace) -> None:
    """Images/s of an end-to-end training step in bf16 autocast against fp32 (5.), best of ``args.repeats``."""
    import torch

    from hybridcxr.classify.backbone import build_backbone
    from hybridcxr.classify.end_to_end import _Step
    from hybridcxr.device import cpu_bf16

    if not cpu_bf16():
        print("RESULT fine-tuning: this CPU has no native bfloat16 (avx512_bf16/amx_bf16): end to end runs in fp32")
        return
    batch = 16
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print(f"\nend-to-end fine-tuning steps, batch {batch} at 224 px, CPU ({len(os.sched_getaffinity(0))} cores), "
          f"best of {args.repeats} x 2 steps; load average before {os.getloadavg()[0]:.2f}:")
    for name in ("resnet18", "densenet121"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_backbone(name, None, seed=0).train()
        optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
        rate = {}
        for bf16 in (False, True):
            step = _Step(model, None, None, optimizer, None, "cpu", False, bf16=bf16)  # type: ignore[arg-type]
            best = float("inf")
            for attempt in range(args.repeats + 1):  # pass 0 warms up
                start = time.perf_counter()
                for _ in range(2):
                    optimizer.zero_grad(set_to_none=True)
                    with step.autocast():
                        out = model(x)
                    out.float().square().mean().backward()
                    optimizer.step()
                if attempt:
                    best = min(best, time.perf_counter() - start)
            rate[bf16] = 2 * batch / best
        print(f"  {name}: fp32 {rate[False]:.1f} images/s, bf16 autocast {rate[True]:.1f} images/s")
        print(f"RESULT fine-tuning {name} bf16 / fp32 = {rate[True] / rate[False]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_classifier")
    parser.add_argument("--det-epochs", type=int, default=10)
    parser.add_argument("--phantom-bench", default="runs/bench_detector", help="tools/bench_detector.py's --out")
    parser.add_argument("--detector-pt", default=None, help="ultralytics .pt for the baseline [the NIH detector's]")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-nih", action="store_true")
    parser.add_argument("--lungs-model", default="runs/bench_lungs", help="a lung run (tools/bench_lungs.py's --out)")
    parser.add_argument("--only-lungs", action="store_true", help="only the NIH lung-field table (1b)")
    parser.add_argument("--head", choices=["mlp", "gcn"], default="mlp", help="the phantom classifier's head (2)")
    parser.add_argument("--only-augment", action="store_true",
                        help="only the NIH augmentation table (1c): mlp and gcn heads, without and with views")
    parser.add_argument("--augment-views", type=int, default=2, help="K augmented views per training image (1c)")
    parser.add_argument("--oversample", action="store_true", help="1c: also both heads with oversample=rare")
    parser.add_argument("--only-runtime", action="store_true", help="only ONNX against PyTorch and the baseline (4)")
    parser.add_argument("--only-finetune", action="store_true", help="only bf16 against fp32 fine-tuning speed (5)")
    args = parser.parse_args()
    if args.only_finetune:
        finetune_speed(args)
        return
    if args.only_runtime:
        runtime_speed(args)
        return
    if not NIH.is_dir():
        sys.exit(f"real samples not found at {NIH}")
    if args.only_augment:
        augment_variants(args)
        return
    if args.only_lungs:
        lung_variants(args)
        return
    cls = None if args.skip_nih else nih(args)
    if not args.skip_nih:
        lung_variants(args)
    phantoms(args)
    if cls is not None:
        speed(cls, args)
    runtime_speed(args)


if __name__ == "__main__":
    main()
