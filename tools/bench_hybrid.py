"""Benchmark the hybrid: test mAP@0.4 of the detector alone and gated by the classifier, and calibration.

    python tools/bench_hybrid.py [--out runs/bench_hybrid] [--n 240] [--epochs 12] [--imgsz 192] [--skip-nih]
                                 [--reuse demo-out] [--nih-from runs/bench_classifier]

1. Phantoms (about 30% normal images): phantom DICOMs, prepared, a YOLOv8n trained from scratch with the demo's
   CPU recipe (SGD, lr 0.01, nbs 16) for 12 epochs at 192 px -- a detector part-way, as detectors on VinDr-CXR
   are (its mAP@0.4 near 0.2), where the demo's 20 epochs make one whose own "No finding" is already perfect
   on these phantoms (then gating has nothing to add: ``--reuse`` a demo to see it) -- the fusion
   classifier trained on its features (the gating rule chosen on the validation split as `train classifier`
   always does), then `detect` on the test split's DICOMs with and without `--classifier` and
   `evaluate detector` on both: test mAP@0.4 ungated and gated, in one run.
2. NIH (../shared/data/nih, 477 real images; the models of tools/run_real.py's layout, made if absent): the
   same comparison on the test split, reported whatever it shows.
3. Calibration: validation and test macro ECE and Brier of each classifier with and without its temperatures.

Each stage is skipped when its output exists, so a re-run only prints. ``--reuse DEMO_OUT`` takes the phantom
models of a finished ``hybridcxr demo`` (its prepared/, detector/ and classifier/) instead of training new
ones; ``--nih-from`` a folder with tools/run_real.py's NIH runs (nih-prepared/, nih-detector/, nih-classifier/).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "data" / "nih"


def phantom_runs(out: Path, n: int, epochs: int, imgsz: int) -> tuple[Path, Path, Path]:
    """The phantom dataset, detector and classifier (each made once)."""
    from hybridcxr.classify.train import classifier_config, train_classifier
    from hybridcxr.data.phantom import make_phantom_dataset
    from hybridcxr.demo import DETECTOR_DEMO
    from hybridcxr.data.prepare import PrepareOptions, prepare
    from hybridcxr.data.sources import load_source
    from hybridcxr.detect.train import detector_config, train_detector
    from hybridcxr.layout import ClassifierLayout, DetectorLayout, PreparedLayout

    phantom, prepared, det, cls = out / "phantom", out / "prepared", out / "detector", out / "classifier"
    if not (phantom / "annotations" / "image_labels_test.csv").is_file():
        make_phantom_dataset(phantom, n=n, seed=0)
    if not PreparedLayout(prepared).manifest.is_file():
        prepare(load_source("vindr-cxr", phantom), prepared, PrepareOptions(size=320, seed=0))
    if not DetectorLayout(det).card.is_file():
        train_detector(prepared, det, detector_config({**DETECTOR_DEMO, "epochs": epochs, "imgsz": imgsz, "seed": 0}))
    if not ClassifierLayout(cls).card.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the randomly initialised CNN
            train_classifier(prepared, det, cls, classifier_config({"seed": 0}))
    return prepared, det, cls


def test_inputs(prepared: Path) -> list[Path]:
    """The test split's original files."""
    import pandas as pd

    manifest = pd.read_csv(prepared / "manifest.csv", dtype={"image_id": str})
    return [Path(p) for p in manifest.loc[manifest["split"] == "test", "path"]]


def gated_vs_ungated(name: str, prepared: Path, cls: Path, out: Path) -> dict[str, float]:
    """Detect the test split gated by ``cls`` (detections_ungated.csv holds the detector alone); print and
    return both test mAPs."""
    from hybridcxr.analyzer import Analyzer
    from hybridcxr.detect.evaluate import comparison_markdown, evaluate_gating
    from hybridcxr.pipeline import detect_files

    folder = out / f"{name}-detect-test"
    if not (folder / "gating.json").is_file():
        analyzer = Analyzer(cls)
        detect_files(test_inputs(prepared), analyzer.detector, folder, analyzer=analyzer, progress=False)
    reports = evaluate_gating(folder, prepared, split="test")
    card = json.loads((cls / "model" / "card.json").read_text())
    gating = card.get("gating") or {}
    print(f"\n## {name}: test split, {reports['gated'].n_images} images\n")
    from hybridcxr.detect.gating import gating_summary

    print(gating_summary(gating))
    print(comparison_markdown(reports))
    result = {"ungated": reports["ungated"].map, "gated": reports["gated"].map}
    print(f"RESULT {name} test mAP@0.4: detector alone {result['ungated']:.4f}, gated by the classifier "
          f"{result['gated']:.4f} ({result['gated'] - result['ungated']:+.4f})")
    return result


def calibration_lines(name: str, prepared: Path, cls: Path) -> None:
    """Validation and test macro ECE / Brier of the run's head uncalibrated, with temperatures and with Platt
    scaling (temperature and bias), both fitted on the validation logits as `train classifier` fits them."""
    import numpy as np

    from hybridcxr.classify.cache import run_lung_side
    from hybridcxr.classify.calibration import apply_calibration, calibrated, fit_calibration
    from hybridcxr.classify.fusion import load_checkpoint
    from hybridcxr.classify.train import cache_features, classifier_config, head_logits, load_split_data, open_models
    from hybridcxr.layout import ClassifierLayout
    from hybridcxr.report.calibration import calibration_table

    layout = ClassifierLayout(cls)
    head, fusion, card = load_checkpoint(layout.model)
    findings = tuple(fusion.findings)
    config = classifier_config({k: v for k, v in card["train_config"].items() if k != "cache"})
    detector, backbone = open_models(layout.detector, config, layout.backbone)
    cache = cache_features(prepared, detector, backbone, layout.features, False,
                           run_lung_side(layout.lungs, card.get("lungs")))
    known = [c for c, f in enumerate(findings) if f not in (card.get("unlearned") or {})]
    data = {split: load_split_data(prepared, cache, findings, split) for split in ("val", "test")}
    logits = {split: head_logits(head, d) for split, d in data.items()}
    fitted = {m: fit_calibration(logits["val"], data["val"].labels, findings, m) for m in ("temperature", "platt")}
    for split in ("val", "test"):
        raw = calibrated(logits[split], np.ones(len(findings)))
        means = {}
        for method, entry in fitted.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = calibration_table(data[split].labels[:, known], raw[:, known],
                                          apply_calibration(logits[split], entry, findings)[:, known],
                                          [findings[c] for c in known])
            means[method] = table.iloc[-1]
        t, p = means["temperature"], means["platt"]
        print(f"RESULT {name} {split} macro ECE: uncalibrated {t['ece_before']:.4f}, temperature "
              f"{t['ece_after']:.4f}, platt {p['ece_after']:.4f}; Brier {t['brier_before']:.4f} -> "
              f"{t['brier_after']:.4f} (temperature), {p['brier_after']:.4f} (platt) ({len(known)} learned findings)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_hybrid", help="run folder")
    parser.add_argument("--n", type=int, default=240, help="phantom images")
    parser.add_argument("--epochs", type=int, default=12, help="detector epochs on the phantoms")
    parser.add_argument("--imgsz", type=int, default=192, help="detector input size on the phantoms")
    parser.add_argument("--nih-det-epochs", type=int, default=10, help="detector epochs on NIH")
    parser.add_argument("--skip-nih", action="store_true", help="phantoms only")
    parser.add_argument("--only-nih", action="store_true", help="NIH only")
    parser.add_argument("--reuse", help="a finished demo's output folder: its phantom models")
    parser.add_argument("--nih-from", help="a folder holding tools/run_real.py's NIH runs")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.only_nih:
        if args.reuse:
            prepared, cls = Path(args.reuse) / "prepared", Path(args.reuse) / "classifier"
        else:
            prepared, _, cls = phantom_runs(out / "phantoms", args.n, args.epochs, args.imgsz)
        gated_vs_ungated("phantoms", prepared, cls, out)
        calibration_lines("phantoms", prepared, cls)
    if args.skip_nih:
        return
    if not NIH.is_dir():
        sys.exit(f"{NIH}: the NIH sample is not here (see ../shared/data/README.md); use --skip-nih")
    sys.path.insert(0, str(REPO / "tools"))
    from run_real import run_nih

    nih_prepared, nih_det, nih_cls, _ = run_nih(Path(args.nih_from) if args.nih_from else out / "nih",
                                                args.nih_det_epochs)
    if "gating" not in json.loads((nih_cls / "model" / "card.json").read_text()):  # made before gating existed
        from hybridcxr.classify.train import classifier_config, train_classifier

        nih_cls = out / "nih-classifier"
        if not (nih_cls / "model" / "card.json").is_file():
            train_classifier(nih_prepared, nih_det, nih_cls, classifier_config({"seed": 0}), progress=False)
    gated_vs_ungated("NIH", nih_prepared, nih_cls, out)
    calibration_lines("NIH", nih_prepared, nih_cls)


if __name__ == "__main__":
    main()
