"""Benchmark: Optuna trials per minute on a VinDr-CXR-sized feature cache, against retraining a CNN per trial.

    python tools/bench_tune.py [--trials 100] [--workers 2] [--epochs N] [--baseline-images 512]

Builds synthetic cached features in memory the size of VinDr-CXR (15,000 images: 12,000 train and 1,500 val
used here, the 1,500 test images are not needed; detector 704-d + ResNet-18 512-d float32 vectors with a weak
signal, 14 findings at VinDr-like prevalences, ages and sexes), tunes the fusion head with :func:`run_tune`
(``configs/tune.yaml``'s search space, epochs, patience and pruner) on SQLite in a temporary folder, and
prints wall time, trials per minute and how many trials were pruned.

Then it times the alternative, a trial that retrains ResNet-18 end to end: one training epoch of a randomly
initialised ResNet-18 on 512 random 224x224 images (CPU, all cores, batch 32, 14-label BCE, AdamW; training
only, no validation pass), extrapolated linearly to the mean number of epochs a tuning trial ran. Both costs
are per trial of the whole machine (the tuning run's wall time divided by its trials, its workers sharing the
cores; the ResNet-18 epoch on all cores), and their ratio is printed. The load average is printed before and
after, since other jobs on the cores slow both.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from hybridcxr.classify.train import SplitData, classifier_config
from hybridcxr.findings import VINDR_CXR
from hybridcxr.tune import FINISHED, TuneData, run_tune, tune_settings, worker_threads

#: Image-level prevalences of VinDr-CXR's 14 findings in its training set (approximate, from the label counts).
PREVALENCE = {
    "Aortic enlargement": 0.20, "Atelectasis": 0.012, "Calcification": 0.030, "Cardiomegaly": 0.15,
    "Consolidation": 0.024, "ILD": 0.026, "Infiltration": 0.041, "Lung Opacity": 0.088, "Nodule/Mass": 0.055,
    "Other lesion": 0.076, "Pleural effusion": 0.069, "Pleural thickening": 0.13, "Pneumothorax": 0.0064,
    "Pulmonary fibrosis": 0.11,
}
#: Length of each finding's shift in each feature group, in noise sd: alone a linear AUROC of about 0.71.
SIGNAL = 0.8


def synthetic_split(n: int, rng: np.random.Generator, directions: dict[str, np.ndarray], prefix: str) -> SplitData:
    """``n`` images whose features carry a weak, finding-specific shift along a fixed random direction."""
    findings = VINDR_CXR[:14]
    labels = (rng.random((n, len(findings))) < np.array([PREVALENCE[f] for f in findings])).astype(np.float32)
    features = {}
    for group, dim in (("yolo", 704), ("cnn", 512)):
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x += labels @ directions[group]  # each finding: a shift of SIGNAL sd along its own direction
        features[group] = x
    age = np.clip(rng.normal(52, 16, n), 16, 95)
    age[rng.random(n) < 0.05] = np.nan
    sex: list = [str(s) for s in rng.choice(["M", "F"], n, p=[0.52, 0.48])]
    for i in np.flatnonzero(rng.random(n) < 0.03):
        sex[i] = None
    return SplitData([f"{prefix}{i:05d}" for i in range(n)], features, age, sex, labels.astype(float))


def vindr_sized_data(seed: int = 0, n_train: int = 12_000, n_val: int = 1_500) -> TuneData:
    """The synthetic VinDr-CXR-sized feature cache (train and val splits)."""
    rng = np.random.default_rng(seed)
    directions = {}
    for group, dim in (("yolo", 704), ("cnn", 512)):
        d = rng.standard_normal((14, dim)).astype(np.float32)
        directions[group] = SIGNAL * d / np.linalg.norm(d, axis=1, keepdims=True)
    return TuneData(synthetic_split(n_train, rng, directions, "t"), synthetic_split(n_val, rng, directions, "v"),
                    VINDR_CXR[:14])


def resnet_epoch_seconds(images: int = 512, batch: int = 32, seed: int = 0) -> float:
    """Seconds of one training epoch of a randomly initialised ResNet-18 on random grey 224x224 images.

    One untimed step first (allocations); torch uses every available core.
    """
    import torch
    import torchvision

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=14)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = torch.nn.BCEWithLogitsLoss()
    grey = torch.rand(images, 1, 224, 224)
    labels = (torch.rand(images, 14) < 0.1).float()
    model.train()

    def step(first: int) -> None:
        x = grey[first:first + batch].repeat(1, 3, 1, 1)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), labels[first:first + batch])
        loss.backward()
        optimizer.step()

    step(0)
    start = time.perf_counter()
    for first in range(0, images, batch):
        step(first)
    return time.perf_counter() - start


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="finished trials to run")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--epochs", type=int, default=None, help="max epochs per trial (default: tune.yaml's)")
    parser.add_argument("--baseline-images", type=int, default=512, help="images of the ResNet-18 epoch")
    args = parser.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cores = len(os.sched_getaffinity(0))
    print(f"cores available: {cores}; load average (1, 5, 15 min) before: {load()}")
    start = time.perf_counter()
    data = vindr_sized_data()
    print(f"synthetic cache: {len(data.train.image_ids)} train + {len(data.val.image_ids)} val images, "
          f"yolo {data.train.features['yolo'].shape[1]}-d + cnn {data.train.features['cnn'].shape[1]}-d float32, "
          f"14 findings (built in {time.perf_counter() - start:.1f} s)")
    tune_config = {} if args.epochs is None else {"epochs": args.epochs}
    settings = tune_settings(tune_config)
    print(f"tune.yaml: {len(settings['space'])} searched keys, at most {settings['epochs']} epochs per trial, "
          f"patience {settings['patience']}, {settings['pruner']} pruner from epoch {settings['warmup_epochs']} "
          f"after {settings['startup_trials']} trials, batch sizes {settings['space']['batch_size']['choices']}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        study = run_tune(data, tmp, trials=args.trials, workers=args.workers, tune_config=tune_config,
                         base_config=classifier_config({"device": "cpu"}))
        wall = time.perf_counter() - start
        trials = study.get_trials(deepcopy=False, states=FINISHED)
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
        durations = [t.duration.total_seconds() for t in trials if t.duration is not None]
        epochs = [len(t.intermediate_values) for t in trials]
    per_trial = wall / len(trials)
    print(f"tuning: {len(trials)} finished trials with {args.workers} workers in {wall:.1f} s wall "
          f"= {wall / 60:.1f} min ({len(trials) / (wall / 60):.1f} trials/min, worker start-up included); "
          f"within 10 min: {'yes' if wall <= 600 else 'NO'}")
    print(f"pruned: {pruned} of {len(trials)}; epochs per trial: mean {np.mean(epochs):.1f}, max {max(epochs)}")
    threads = worker_threads(args.workers) if args.workers > 1 else torch_threads()
    print(f"one tuning trial: {per_trial:.2f} s of the machine (wall / trials); in its worker "
          f"({'one torch thread' if threads == 1 else f'{threads} torch threads'}): "
          f"mean {np.mean(durations):.2f} s, median {np.median(durations):.2f} s")
    print(f"best validation macro AUROC: {study.best_value:.4f} (trial {study.best_trial.number})")
    print(f"load average after tuning: {load()}")
    baseline = resnet_epoch_seconds(args.baseline_images)
    e2e_trial = baseline * float(np.mean(epochs))
    print(f"baseline: one ResNet-18 training epoch on {args.baseline_images} images (224x224, batch 32, CPU, "
          f"{cores} threads): {baseline:.1f} s; a trial of {np.mean(epochs):.1f} such epochs (the tuning trials' "
          f"mean, extrapolated): {e2e_trial:.0f} s = {e2e_trial / 60:.1f} min")
    print(f"ratio: one end-to-end ResNet-18 trial on {args.baseline_images} images / one tuning trial on "
          f"{len(data.train.image_ids)} cached images = {e2e_trial / per_trial:.0f}x")
    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    main()
