"""Benchmark the lung segmenter on real masks: train with the default config, score a patient-grouped hold-out.

    python tools/bench_lungs.py [--data ../shared/data/lung-masks] [--out runs/bench_lungs] [--holdout 0.15]
                                [key=value ...]

Holds out whole patients (at least 50 images) of the mask dataset, trains `train lungs` on the other patients
(its own patient-grouped validation split inside), then segments each held-out radiograph at its stored size
and prints the mean, median and worst Dice and IoU against the hand-drawn masks, the share of held-out images
whose quality flag is raised, the training wall time and the load average. Targets (issue 12): mean Dice at
least 0.93, training within 15 minutes on 2 CPU cores. A re-run with the same settings reuses the trained run
(delete --out to retrain); a killed run resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hybridcxr.config import load_config, parse_overrides  # noqa: E402
from hybridcxr.io import read_radiograph  # noqa: E402
from hybridcxr.lungs.data import read_mask, read_mask_dataset, split_by_patient  # noqa: E402
from hybridcxr.lungs.measures import measure_lungs  # noqa: E402
from hybridcxr.lungs.metrics import dice_iou  # noqa: E402
from hybridcxr.lungs.predict import Segmenter  # noqa: E402
from hybridcxr.lungs.train import train_lungs  # noqa: E402

HOLDOUT_SEED = 2026
MIN_HOLDOUT = 50


def main(argv: list[str] | None = None) -> int:
    """Train, score the hold-out, print the result lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "lung-masks")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_lungs")
    parser.add_argument("--holdout", type=float, default=0.15, help="share of images held out (whole patients)")
    parser.add_argument("--nih", action="store_true", help="also score each lung measure against the NIH labels")
    parser.add_argument("overrides", nargs="*", help="key=value settings of configs/lungs.yaml")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no lung mask dataset at {args.data}: nothing to benchmark")
        return 0
    config = load_config("lungs", overrides=parse_overrides(args.overrides))
    dataset = read_mask_dataset(args.data)
    held = split_by_patient(dataset.table["patient_id"], args.holdout, HOLDOUT_SEED, minimum=MIN_HOLDOUT)
    train_set, test_set = dataset.subset(np.flatnonzero(~held)), dataset.subset(np.flatnonzero(held))
    start = time.perf_counter()
    run = train_lungs(train_set, args.out, config, progress=sys.stderr.isatty())
    wall = time.perf_counter() - start
    segmenter = Segmenter.load(args.out, config=config)
    scores, flagged = [], 0
    for row in test_set.table.itertuples(index=False):
        radiograph = read_radiograph(row.image)
        predicted = segmenter.predict(radiograph)
        scores.append(dice_iou(predicted, read_mask(row.mask)))
        flagged += not measure_lungs(predicted, min_area=config.min_area, min_lung_share=config.min_lung_share).ok
    dice, iou = np.array(scores).T
    t = run.card["training"]
    print(f"data: {args.data} ({len(dataset)} images, {dataset.table['patient_id'].nunique()} patients)")
    print(f"split: train {t['train_images']} + val {t['val_images']} images; hold-out {len(test_set)} images of "
          f"{test_set.table['patient_id'].nunique()} patients (none in training)")
    print(f"model: MONAI UNet channels {config.channels}, imgsz {config.imgsz}, best epoch {t['best_epoch']} of "
          f"{t['epochs_run']}, validation Dice {t['val_dice']:.4f}")
    print(f"hold-out Dice: mean {dice.mean():.4f}, median {np.median(dice):.4f}, worst {dice.min():.4f}")
    print(f"hold-out IoU:  mean {iou.mean():.4f}, median {np.median(iou):.4f}, worst {iou.min():.4f}")
    print(f"hold-out quality flag raised: {flagged} of {len(test_set)}")
    print(f"training: {t['seconds']:.0f} s in the epochs, this invocation {wall:.0f} s wall on {os.cpu_count()} "
          f"cores ({t['device']}); load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    target = dice.mean() >= 0.93 and t["seconds"] <= 900
    print(f"RESULT {'PASS' if target else 'MISS'} (targets: mean Dice >= 0.93, training <= 15 min)")
    if args.nih:
        nih_measures(segmenter, args.out)
    return 0


NIH = REPO.parent / "shared" / "data" / "nih"
MEASURES = ("ctr_estimate", "ctr_profile", "left_right_area_ratio", "right_lower_mean", "left_lower_mean")
FINDINGS = ("Cardiomegaly", "Effusion", "Emphysema", "Atelectasis")


def nih_measures(segmenter: Segmenter, out: Path) -> None:
    """AUROC of each lung measure, alone and untrained, for NIH findings, on every NIH image whose lungs pass
    the quality flag (the images are those of ../shared/data/nih; per-image values stay in ``out``)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    labels = pd.read_csv(NIH / "nih_labels.csv").set_index("Image Index")["Finding Labels"]
    paths = sorted((NIH / "images").glob("*.png")) + sorted((NIH / "images-512").glob("*.png"))
    rows = []
    for radiograph, mask in segmenter.predict_paths(paths):
        m = measure_lungs(mask, radiograph.pixels, min_area=segmenter.config.min_area,
                          min_lung_share=segmenter.config.min_lung_share)
        rows.append({"image": radiograph.image_id + ".png", "ok": m.ok, **{k: m.values.get(k) for k in MEASURES}})
    table = pd.DataFrame(rows).set_index("image")
    table.to_csv(out / "nih_measures.csv")
    ok = table[table["ok"]]
    print(f"\nNIH: {len(table)} images, {len(ok)} pass the quality flag; AUROC of each measure alone (higher "
          "value = finding), missing values at the median:")
    print("| measure | " + " | ".join(f"{f} ({labels.loc[ok.index].str.contains(f).sum()} pos)" for f in FINDINGS)
          + " |")
    print("|---|" + "---|" * len(FINDINGS))
    for measure in MEASURES:
        x = ok[measure].astype(float).fillna(ok[measure].astype(float).median())
        cells = [f"{roc_auc_score(labels.loc[ok.index].str.contains(f), x):.3f}" for f in FINDINGS]
        print(f"| {measure} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
