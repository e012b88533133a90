"""The train and validation SplitData of a classifier run's feature cache (for tests that retrain heads on it)."""

from __future__ import annotations

import json
from pathlib import Path

from hybridcxr.classify.cache import FeatureCache
from hybridcxr.classify.train import SplitData, dataset_findings, load_split_data


def run_splits(folder: Path, cache_dir: Path) -> tuple[SplitData, SplitData, tuple[str, ...]]:
    """``(train, val, findings)`` of ``folder/prepared`` with the features cached in ``cache_dir``."""
    meta = json.loads((cache_dir / "meta.json").read_text())
    cache = FeatureCache(cache_dir, meta["fingerprints"])
    findings = dataset_findings(folder / "prepared")
    return (load_split_data(folder / "prepared", cache, findings, "train"),
            load_split_data(folder / "prepared", cache, findings, "val"), findings)
