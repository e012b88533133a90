"""Recipes 3 and 4 of docs/recipes.md on the real NIH sample; their reports go to docs/recipes/.

    python tools/run_recipes.py [--out runs/recipes] [--detector RUN] [--epochs 12] [--docs docs/recipes]

Each recipe runs as its documented command sequence (one ``hybridcxr`` process per command) on
``../shared/data/nih`` (477 real ChestX-ray14 images):

3. NIH ChestX-ray14 with DenseNet-121: ``prepare nih`` (patient-grouped split: the sample has no
   ``train_val_list.txt``/``test_list.txt``, so the official split cannot be honoured and the note says so),
   ``train classifier --config configs/recipes/nih-densenet121.classifier.yaml`` end to end, ``evaluate``.
4. ChestX-ray8 with your own split files: course-style tables (``Image``, one column per finding,
   ``PatientId``) written from recipe 3's prepared split, so that recipe 4's test images are recipe 3's; a copy
   with one test patient planted in the training table is refused by ``check-leakage`` and by ``prepare
   --split-tables`` (exit 1, the patient named); the clean tables are prepared and the classifier is trained
   from a local weights file: recipe 3's fine-tuned DenseNet-121 (``RUN/backbone.safetensors``), since no
   ImageNet weights exist offline; ``evaluate``.

``--detector RUN``: the detector run ``train classifier`` requires (the recipes leave its features out); by
default a 1-epoch detector on 60 phantoms is made, as docs/recipes.md suggests. Each stage is skipped when its
output exists. Only tables and text go to docs/: the ROC curves and other figures stay in the run folders.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "data" / "nih"
CLI = [sys.executable, "-m", "hybridcxr.cli"]
RECIPES = REPO / "configs" / "recipes"


def run(cmd: list[str], log: list[str], code: int = 0, made: Path | None = None) -> str:
    """Run one CLI command (echoed and logged with its exit status); its output, or SystemExit on a wrong code.
    When ``made`` (the command's output) exists, the command is logged as skipped and not run."""
    shown = "hybridcxr " + " ".join(cmd[len(CLI):])
    if made is not None and made.exists():
        log.append(f"$ {shown}   # skipped: its output {made} existed (made by an earlier run)")
        return ""
    print("$", shown, flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(done.stdout, end="", flush=True)
    log.append(f"$ {shown}   # exit {done.returncode}, {time.perf_counter() - start:.0f} s")
    if done.returncode != code:
        sys.exit(f"exit {done.returncode} (expected {code}) from: {shown}")
    return done.stdout


def phantom_detector(out: Path, log: list[str]) -> Path:
    """A 1-epoch detector on 60 phantoms: the stand-in docs/recipes.md suggests for recipes without boxes."""
    det = out / "phantom-detector"
    if not (det / "weights" / "best.json").is_file():
        run([*CLI, "demo-data", str(out / "phantoms"), "--n", "60"], log)
        run([*CLI, "prepare", "vindr-cxr", "--root", str(out / "phantoms"), "--out", str(out / "phantoms-prepared"),
             "--no-progress"], log)
        run([*CLI, "train", "detector", "--data", str(out / "phantoms-prepared"), "--out", str(det), "--epochs", "1",
             "--imgsz", "128"], log)
    return det


def prepare_nih(prepared: Path, log: list[str], *extra: str, code: int = 0) -> str:
    """``prepare nih`` on the shared sample (NIH and ChestX-Det10 boxes, 512 px), unless already prepared."""
    said = run([*CLI, "prepare", "nih", "--root", str(NIH), "--out", str(prepared), "--size", "512", "--labels",
                str(NIH / "nih_labels.csv"), "--boxes", str(NIH / "nih_bbox_list.csv"), "--extra-boxes",
                str(NIH / "chestx_det10_boxes.json"), "--no-progress", *extra], log, code=code,
               made=prepared / "manifest.csv" if code == 0 else None)
    said_file = prepared / "prepare.log"  # what prepare printed, for a re-run that skips it
    if code == 0 and said:
        said_file.write_text(said)
    return said or (said_file.read_text() if said_file.is_file() else "")


def train_and_evaluate(prepared: Path, det: Path, cls: Path, recipe: str, log: list[str], *words: str) -> Path:
    """``train classifier --config`` the recipe's file, then ``evaluate classifier`` on test; the report folder."""
    run([*CLI, "train", "classifier", "--data", str(prepared), "--detector", str(det), "--out", str(cls),
         "--config", str(RECIPES / f"{recipe}.classifier.yaml"), "--no-progress", *words], log,
        made=cls / "model" / "card.json")
    report = cls / "report-test"
    run([*CLI, "evaluate", "classifier", "--model", str(cls), "--data", str(prepared), "--split", "test",
         "--out", str(report), "--no-progress"], log, made=report / "report.md")
    return report


def course_tables(prepared: Path, folder: Path, leak: bool = False) -> tuple[list[Path], str | None]:
    """train-small.csv, valid-small.csv, test.csv from ``prepared``'s split (Image, the findings, PatientId);
    with ``leak``, the first test patient also gets a row in the training table. Returns the paths and that
    patient."""
    import pandas as pd

    manifest = pd.read_csv(prepared / "manifest.csv", dtype={"image_id": str, "patient_id": str})
    findings = list(json.loads((prepared / "summary.json").read_text())["positives_per_finding"])
    table = pd.DataFrame({"Image": manifest["image_id"] + ".png", **{f: manifest[f] for f in findings},
                          "PatientId": manifest["patient_id"], "split": manifest["split"]})
    parts = [table[table["split"] == s].drop(columns="split") for s in ("train", "val", "test")]
    patient = None
    if leak:
        patient = str(parts[2]["PatientId"].iloc[0])
        parts[0] = pd.concat([parts[0], parts[2][parts[2]["PatientId"] == patient].head(1)])
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / n for n in ("train-small.csv", "valid-small.csv", "test.csv")]
    for part, path in zip(parts, paths):
        part.to_csv(path, index=False)
    return paths, patient


def recipe_4(out: Path, prepared3: Path, det: Path, weights: Path, log: list[str]) -> tuple[Path, dict[str, str]]:
    """The leak refused twice, the clean tables prepared and trained on from ``weights``; report, outputs."""
    leaky, patient = course_tables(prepared3, out / "course-leaky", leak=True)
    said = {"leak": run([*CLI, "check-leakage", *map(str, leaky)], log, code=1), "planted": str(patient)}
    said["prepare_leak"] = prepare_nih(out / "course-refused", log, "--split-tables", ",".join(map(str, leaky)),
                                       code=1)
    clean, _ = course_tables(prepared3, out / "course")
    said["clean"] = run([*CLI, "check-leakage", *map(str, clean)], log)
    prepared = out / "nih-course"
    said["prepare"] = prepare_nih(prepared, log, "--split-tables", ",".join(map(str, clean)))
    report = train_and_evaluate(prepared, det, out / "nih-course-densenet", "chestxray8-split-tables", log,
                                f"backbone_weights={weights}")
    return report, said


def write_report(docs: Path, title: str, intro: list[str], report: Path, log: list[str]) -> None:
    """docs/recipes/<name>/report.md (intro, the commands with exit codes and times, the evaluation report without
    its figures) and per_finding.csv / subgroups.csv."""
    from hybridcxr.files import write_text

    from run_real import report_body

    body = report_body(report / "report.md")
    text = [f"# {title}", "", *intro, "", "## Commands run", "", "```bash", *log, "```", "",
            "## Evaluation on the test split", "",
            f"(Figures — ROC curves, reliability, training curves — stay in `{report}`: nothing drawn from real "
            "data is committed.)", "", body]
    write_text(docs / "report.md", "\n".join(text) + "\n")
    for name in ("per_finding.csv", "subgroups.csv"):
        if (report / name).is_file():
            write_text(docs / name, (report / name).read_text())
    print(f"report: {docs / 'report.md'}")


def _setting(cls: Path) -> str:
    """One line on what the run was: backbone, its weights, epochs, best validation AUROC."""
    card = json.loads((cls / "model" / "card.json").read_text())
    weights = card["backbone"].get("weights")
    asked = card["backbone"].get("weights_requested")
    return (f"{card['backbone']['name']} (started from: {weights}{f'; asked: {asked}' if asked else ''}), "
            f"{'end to end' if card['backbone'].get('fine_tuned') else 'frozen features'}, best validation macro "
            f"AUROC {card['val_macro_auroc']:.3f} at epoch {card['best_epoch']}; findings {', '.join(card['findings'])}")


def _machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{date.today().isoformat()}, {len(os.sched_getaffinity(0))} CPU cores, no GPU, load average {load} at the end"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/recipes", help="run folder")
    parser.add_argument("--detector", help="a detector run for train classifier (default: a phantom one)")
    parser.add_argument("--epochs", type=int, default=12, help="recipe 3's end-to-end epochs")
    parser.add_argument("--docs", default=str(REPO / "docs" / "recipes"), help="where the reports go")
    args = parser.parse_args()
    if not NIH.is_dir():
        sys.exit(f"{NIH}: the NIH sample is not here (see ../shared/data/README.md)")
    out, docs = Path(args.out), Path(args.docs)
    setup: list[str] = []
    det = Path(args.detector) if args.detector else phantom_detector(out, setup)
    log3: list[str] = []
    prepared = out / "nih-prepared"
    notes = [line for line in prepare_nih(prepared, log3).splitlines() if line.startswith(("note:", "images per"))]
    report3 = train_and_evaluate(prepared, det, out / "nih-densenet", "nih-densenet121", log3, f"epochs={args.epochs}")
    common = [f"Made by `python tools/run_recipes.py` ({_machine()}) on `../shared/data/nih`: 477 real NIH "
              "ChestX-ray14 images, not the 112,120 of the dataset, and **no pretrained weights** (none exist "
              "offline): the numbers show the recipe's commands on real files, not what the published workflow "
              "reaches. The detector run given to `train classifier` is a stand-in whose features these recipes "
              f"leave out (`{det}`)."]
    write_report(docs / "nih-densenet121", "Recipe 3 on the NIH sample: DenseNet-121 end to end", [
        *common, "", f"- Run: {_setting(out / 'nih-densenet')}.",
        "- Split and notes, as `prepare` printed them:", *[f"  - {line}" for line in notes]], report3, log3)
    log4: list[str] = []
    report4, said = recipe_4(out, prepared, det, out / "nih-densenet" / "backbone.safetensors", log4)
    refused = [line for line in said["leak"].splitlines() if said["planted"] in line][:2]
    write_report(docs / "chestxray8-split-tables", "Recipe 4 on the NIH sample: your own split tables", [
        *common, "", "- Tables: `train-small.csv`, `valid-small.csv`, `test.csv` (Image, the 14 findings, "
        "PatientId) written from recipe 3's patient-grouped split, so recipe 4 tests on recipe 3's test images.",
        f"- A planted leak (test patient {said['planted']} also in the training table) was refused by "
        "`check-leakage` and by `prepare --split-tables` (exit 1, nothing prepared): " + " / ".join(refused),
        "- Transfer learning from a local weights file: recipe 3's fine-tuned DenseNet-121 "
        "(`backbone_weights=runs/recipes/nih-densenet/backbone.safetensors`), trained on the same training "
        "patients; no ImageNet file exists here.",
        f"- Run: {_setting(out / 'nih-course-densenet')}."], report4, log4)


if __name__ == "__main__":
    main()
