"""The real-data run: prepare, train and evaluate both models on ../shared/data/nih; the report goes to docs/.

    python tools/run_real.py [--out runs/real-nih] [--det-epochs 10] [--docs docs/real-nih]

The NIH sample (477 real ChestX-ray14 images with the NIH and ChestX-Det10 boxes) is prepared with a
patient-grouped split, the detector is trained on the boxed images (readers fused), the fusion classifier on
its features plus a ResNet-18 embedding and age/sex, and both are evaluated on the test split. Everything is
trained from scratch on the CPU (no pretrained weights exist offline): the numbers show the pipeline on real
files, not what pretrained models on the full dataset reach. Each stage is skipped when its output exists.

Only tables and text go to docs/ (report.md, per_finding.csv, subgroups.csv): no picture drawn from the real
images and no per-image rows leave the run folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "data" / "nih"
CLI = [sys.executable, "-m", "hybridcxr.cli"]


def run(cmd: list[str]) -> str:
    """Run one CLI command, echoing it, and return what it printed."""
    print("$", " ".join(cmd[2:]), flush=True)
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    print(done.stdout, end="", flush=True)
    return done.stdout


def report_body(report_md: Path) -> str:
    """An evaluation report.md for docs/: without its title line and its figures (nothing drawn from real data
    is committed)."""
    text = "\n".join(line for line in report_md.read_text().splitlines() if not line.lstrip().startswith("!["))
    return text.split("\n", 1)[1] if text.startswith("# ") else text


def run_nih(out: Path, det_epochs: int = 10) -> tuple[Path, Path, Path, dict[str, float]]:
    """Prepare NIH, train the detector and the classifier (each only once); return their folders and timings."""
    prepared, det, cls = out / "nih-prepared", out / "nih-detector", out / "nih-classifier"
    stages = [
        ("prepare", prepared / "manifest.csv",
         ["prepare", "nih", "--root", str(NIH), "--out", str(prepared), "--size", "512", "--labels",
          str(NIH / "nih_labels.csv"), "--boxes", str(NIH / "nih_bbox_list.csv"), "--extra-boxes",
          str(NIH / "chestx_det10_boxes.json"), "--no-progress"]),
        ("train detector", det / "weights" / "best.json",
         ["train", "detector", "--data", str(prepared), "--out", str(det), "--epochs", str(det_epochs),
          "--imgsz", "320", "batch=16"]),
        ("train classifier", cls / "model" / "card.json",
         ["train", "classifier", "--data", str(prepared), "--detector", str(det), "--out", str(cls),
          "--no-progress"]),
    ]
    record = out / "timings.json"  # stage times survive re-runs that skip the stage
    seconds = json.loads(record.read_text()) if record.is_file() else {}
    for name, marker, args in stages:
        if not marker.is_file():
            start = time.perf_counter()
            run([*CLI, *args])
            seconds[name] = time.perf_counter() - start
            record.write_text(json.dumps(seconds))
    return prepared, det, cls, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/real-nih", help="run folder (models, predictions, full report)")
    parser.add_argument("--det-epochs", type=int, default=10, help="detector training epochs")
    parser.add_argument("--docs", default=str(REPO / "docs" / "real-nih"), help="where the report's tables go")
    args = parser.parse_args()
    if not NIH.is_dir():
        sys.exit(f"{NIH}: the NIH sample is not here (see ../shared/data/README.md)")
    out, docs = Path(args.out), Path(args.docs)
    prepared, det, cls, seconds = run_nih(out, args.det_epochs)
    detections = out / "nih-detections"
    manifest = prepared / "manifest.csv"
    import pandas as pd

    table = pd.read_csv(manifest, dtype={"image_id": str})
    test = table[table["split"] == "test"]
    test_paths = [str(p) for p in test["path"]]
    start = time.perf_counter()
    run([*CLI, "detect", *test_paths, "--weights", str(det), "--out", str(detections), "--conf", "0.001",
         "--no-progress"])
    det_report = run([*CLI, "evaluate", "detector", "--pred", str(detections), "--truth", str(prepared),
                      "--split", "test", "--report", str(out / "detector-report.md")])
    seconds["detect + evaluate detector"] = time.perf_counter() - start
    start = time.perf_counter()
    run([*CLI, "evaluate", "classifier", "--model", str(cls), "--data", str(prepared), "--split", "test",
         "--out", str(out / "nih-report"), "--no-progress"])
    seconds["evaluate classifier"] = time.perf_counter() - start

    from hybridcxr.files import write_text

    summary = json.loads((prepared / "summary.json").read_text())
    card = json.loads((cls / "model" / "card.json").read_text())
    det_card = json.loads((det / "weights" / "best.json").read_text())
    header = [
        "# Real-data run: NIH ChestX-ray14 sample (from-scratch training on 477 images)",
        "",
        f"Made by `python tools/run_real.py` on {date.today().isoformat()} on a 2-core CPU without a GPU. "
        f"**Every model here is trained from scratch** (no pretrained weights exist offline) on the "
        f"{len(table)} images of `../shared/data/nih` ({summary.get('grouped_by', '?')}-grouped split: "
        f"{summary.get('images_per_split')}), so these numbers show the pipeline on real files, "
        "not what pretrained models trained on the full 112,120 images reach.",
        "",
        f"- Detector: YOLOv8n, {det_card.get('epochs_trained', '?')} epochs at 320 px, on the boxed images "
        "(NIH BBox_List and ChestX-Det10 boxes, fused by WBF).",
        f"- Classifier: {card['backbone']['name']} (random initialisation) + detector features + age/sex; best "
        f"validation macro AUROC {card['val_macro_auroc']:.3f} at epoch {card['best_epoch']}.",
        "- Time per stage (s, on 2 CPU cores): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".",
        "",
        "## Detector on the test split",
        "",
        "```",
        det_report.strip(),
        "```",
        "",
        "## Classifier on the test split",
        "",
        f"(The figures, ROC/PR and training curves, stay in the run folder `{out / 'nih-report'}`: nothing drawn "
        "from real data is committed.)",
        "",
    ]
    body = report_body(out / "nih-report" / "report.md")
    write_text(docs / "report.md", "\n".join(header) + body)
    for name in ("per_finding.csv", "subgroups.csv"):
        write_text(docs / name, (out / "nih-report" / name).read_text())
    print(f"report: {docs / 'report.md'}")


if __name__ == "__main__":
    main()
