"""What int8 costs in accuracy: test mAP@0.4 and macro AUROC of a classifier run on ``torch``, ``onnx`` and
``onnx-int8``, in one run, with how far the int8 probabilities and decisions move.

    python tools/bench_int8.py --demo demo-out            # a finished `hybridcxr demo`: its classifier, test phantoms
    python tools/bench_int8.py --run RUN --prepared PREPARED [--split test] [--out runs/bench_int8]

Exports the run (fp32 and ``--int8``, calibrated on the detector's training images) unless its exports are
current, then, for each runtime, runs ``detect --classifier`` and ``classify`` on the split's original files
(the prepared manifest's ``path`` of each image of ``--split``, never trained on) as a user would, scores the
detections against the prepared boxes of ``--split`` (VinDr mAP@0.4, gated and ungated) and the probabilities
against its labels (per-class AUROC, macro mean over the findings with both labels present). Speed is `bench_detector.py`'s and
`bench_classifier.py`'s business; this prints accuracy only.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

RUNTIMES = ("torch", "onnx", "onnx-int8")


def exported(run: Path) -> None:
    """Export ``run`` (fp32 and int8) unless both exports are current."""
    from hybridcxr.errors import InputError
    from hybridcxr.export.onnx import export_run
    from hybridcxr.export.runtime import OnnxDetector
    from hybridcxr.pipeline import Analyzer

    try:
        Analyzer(run, runtime="onnx")  # both exports current (each checks its own files)
        OnnxDetector.load(run / "detector", int8=True)
    except InputError:
        print(export_run(run, int8=True))


def int8_refusal(run: Path) -> str | None:
    """Why the run's int8 detector may not feed its classifier (its record), or None when it may."""
    from hybridcxr.export.record import classification_refusal
    from hybridcxr.export.runtime import OnnxDetector

    return classification_refusal(OnnxDetector.load(run / "detector", int8=True).record)


def split_files(prepared: Path, split: str) -> list[Path]:
    """The original files of the images of ``split`` (the prepared manifest's ``path`` column)."""
    from hybridcxr.classify.train import read_manifest

    manifest = read_manifest(prepared)
    return [Path(p) for p in manifest.loc[manifest["split"] == split, "path"]]


def run_runtime(run: Path, images: list[Path], out: Path, runtime: str, prepared: Path, split: str) -> dict:
    """detect (gated) and classify ``images`` with ``runtime``; mAP@0.4 and the predictions table."""
    import pandas as pd

    from hybridcxr.detect.evaluate import evaluate_gating
    from hybridcxr.pipeline import Analyzer, classify_files, detect_files

    analyzer = Analyzer(run, runtime=runtime)
    detect_files(images, analyzer.detector, out / "detect", progress=False, analyzer=analyzer)
    reports = evaluate_gating(out / "detect", prepared, split=split)
    classify_files(images, analyzer, out / "classify", progress=False)
    table = pd.read_csv(out / "classify" / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    return {"gated": reports["gated"].map, "ungated": reports["ungated"].map, "table": table,
            "findings": list(analyzer.findings)}


def macro_auroc(table, findings: list[str], prepared: Path, split: str) -> tuple[float, int]:
    """Macro AUROC of ``table``'s probabilities against the prepared manifest's labels of ``split``."""
    from hybridcxr.classify.train import read_manifest
    from hybridcxr.report.metrics import macro_auroc as macro

    manifest = read_manifest(prepared)
    manifest = manifest[manifest["split"] == split]
    manifest = manifest.set_index(manifest["image_id"].astype(str))
    ids = [i for i in table.index if i in manifest.index]
    labelled = [f for f in findings if f in manifest.columns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = macro(manifest.loc[ids, labelled].to_numpy(float), table.loc[ids, labelled].to_numpy(float), labelled)
    return float(value), len(ids)


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, help="A `hybridcxr demo` output folder (sets the two below).")
    parser.add_argument("--run", type=Path, help="The classifier run.")
    parser.add_argument("--prepared", type=Path, help="Its prepared dataset (files, boxes and labels of --split).")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_int8"))
    args = parser.parse_args()
    if args.demo is not None:
        args.run, args.prepared = args.demo / "classifier", args.demo / "prepared"
    if None in (args.run, args.prepared):
        parser.error("give --demo, or --run and --prepared")
    exported(args.run)
    images = split_files(args.prepared, args.split)
    refused = int8_refusal(args.run)
    runtimes = RUNTIMES if refused is None else RUNTIMES[:-1]
    results = {rt: run_runtime(args.run, images, args.out / rt, rt, args.prepared, args.split) for rt in runtimes}
    ref = results["torch"]
    findings = ref["findings"]
    print(f"\n{args.run} on split '{args.split}' of {args.prepared} ({len(images)} original files):")
    print("| runtime | mAP@0.4 gated | mAP@0.4 ungated | macro AUROC | largest probability difference from torch "
          "| decisions unlike torch |")
    print("|---|---|---|---|---|---|")
    for rt, res in results.items():
        table = res["table"].loc[ref["table"].index]
        auroc, n = macro_auroc(table, findings, args.prepared, args.split)
        diff = float(np.nanmax(np.abs(table[findings].to_numpy(float) - ref["table"][findings].to_numpy(float))))
        decisions = [f"{f} positive" for f in findings if f"{f} positive" in table.columns]
        ours, theirs = (t[decisions].to_numpy(float) for t in (table, ref["table"]))  # NaN: a finding not learned
        changed = int((np.nan_to_num(ours, nan=-1) != np.nan_to_num(theirs, nan=-1)).sum())
        print(f"| {rt} | {res['gated']:.4f} | {res['ungated']:.4f} | {auroc:.4f} ({n} images) | {diff:.3g} | "
              f"{changed} of {table[decisions].size} |")
    if refused is not None:
        print(f"RESULT onnx-int8 refused for this run: {refused}")
        return
    int8 = results["onnx-int8"]
    print(f"RESULT onnx-int8 - torch: mAP@0.4 gated {int8['gated'] - ref['gated']:+.4f}, ungated "
          f"{int8['ungated'] - ref['ungated']:+.4f}")


if __name__ == "__main__":
    main()
