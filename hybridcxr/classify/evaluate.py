"""``hybridcxr evaluate classifier``: score a classifier run on one split of a prepared dataset, with ablations
(and, for a one-finding run such as pneumonia, the binary report: :func:`binary_section`).

Scores come from the run's own models (its detector, CNN and head) on cached features of the prepared
images. The ablation table retrains the head on the same cached features with feature groups left out (no
demographics, no detector features, no CNN embedding, no lung features), with the run's own training settings, and scores
each variant on the same split: what each input is worth, measured rather than claimed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from hybridcxr.classify.cache import run_lung_side
from hybridcxr.classify.calibration import apply_calibration, calibrated
from hybridcxr.classify.fusion import load_checkpoint
from hybridcxr.classify.train import (
    cache_features,
    classifier_config,
    head_logits,
    load_split_data,
    open_models,
    predict_head,
    read_manifest,
    train_head,
    training_split,
)
from hybridcxr.layout import ClassifierLayout, PreparedLayout
from hybridcxr.report.metrics import macro_auroc, micro_auroc

ABLATIONS: dict[str, tuple[str, ...]] = {
    "without demographics": ("age", "sex"),
    "without detector features": ("yolo",),
    "without CNN embedding": ("cnn",),
    "without lung features": ("lungs",),
}


def evaluate_classifier(run: str | Path, prepared: str | Path, *, split: str = "test", out: str | Path | None = None,
                        ablation: bool = True, n_boot: int = 1000, progress: bool = True) -> Path:
    """Write the evaluation report of ``run`` on ``split`` of ``prepared``; returns the report's path."""
    from hybridcxr.report.classifier_report import write_classifier_report

    run, prepared = Path(run), Path(prepared)
    layout = ClassifierLayout(run).require()
    head, fusion, card = load_checkpoint(layout.model)
    findings = tuple(fusion.findings)
    config = classifier_config({k: v for k, v in card["train_config"].items() if k != "cache"})
    detector, backbone = open_models(layout.detector, config, layout.backbone)
    lungs = run_lung_side(layout.lungs, card.get("lungs"))
    cache = cache_features(prepared, detector, backbone, layout.features, progress, lungs)
    data = load_split_data(prepared, cache, findings, split)
    logits = head_logits(head, data)  # once: the raw and the calibrated scores both come from it
    raw = calibrated(logits, np.ones(len(findings)))
    scores = apply_calibration(logits, card.get("calibration"), findings)
    table = None
    if ablation:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = ablation_table(prepared, cache, findings, config, data, scores, split,
                                   models=(detector, backbone, lungs))
    history = pd.read_csv(layout.history) if layout.history.is_file() else None
    summary_file = PreparedLayout(prepared).summary
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    notes = [
        f"Scores of split '{split}' of {prepared} ({summary.get('source', 'unknown source')}, patients grouped: "
        f"{summary.get('grouped_by', 'unknown')}); thresholds were chosen on 'val' ({card['threshold_rule']}).",
        f"Backbone: {card['backbone']['name']} with weights {card['backbone']['weights']}; "
        f"the head's best validation macro AUROC was {card['val_macro_auroc']:.3f} at epoch {card['best_epoch']}.",
    ]
    out = Path(out) if out is not None else run / f"report-{split}"
    binary = binary_section(out, findings, data.labels, scores, card["thresholds"], split, history)
    manifest = read_manifest(prepared).set_index("image_id")
    patients = manifest["patient_id"].astype(str) if "patient_id" in manifest else None
    return write_classifier_report(
        out, y_true=data.labels, y_score=scores, findings=list(findings), image_ids=data.image_ids, split=split,
        thresholds=card["thresholds"], sex=np.array(data.sex, dtype=object), age_years=data.age_years,
        history=history, ablation=table, notes=notes, n_boot=n_boot,
        uncalibrated=raw if card.get("calibration") else None, no_claim=card.get("unlearned") or {},
        patient_ids=None if patients is None else patients.loc[data.image_ids].tolist(), extra=binary)


def binary_section(out: Path, findings: tuple[str, ...], labels: np.ndarray, scores: np.ndarray,
                   thresholds: dict[str, float], split: str, history: pd.DataFrame | None) -> list[str]:
    """For a run with exactly one finding besides "No finding" (a binary task such as pneumonia): write the
    binary report into ``out`` (:mod:`hybridcxr.report.binary`) and return its ``report.md`` section; else
    write nothing and return no lines."""
    from hybridcxr.report.binary import binary_finding, write_binary_report

    finding = binary_finding(findings)
    if finding is None:
        return []
    c = findings.index(finding)
    return write_binary_report(out, y_true=labels[:, c], y_score=scores[:, c], finding=finding,
                               threshold=thresholds[finding], split=split, history=history)


def ablation_table(prepared: Path, cache, findings: tuple[str, ...], config: dict, data, scores: np.ndarray,
                   split: str, models=None) -> pd.DataFrame:
    """Macro/micro AUROC on ``split`` of the full head and of heads retrained without some feature groups (on
    the run's training rows: its augmented views too, computed by ``models`` where not cached)."""
    train = training_split(prepared, cache, findings, config, models, progress=False)
    val = load_split_data(prepared, cache, findings, "val")
    rows = [{"variant": "full model (" + ", ".join(config["groups"]) + ")",
             f"macro AUROC ({split})": macro_auroc(data.labels, scores, findings),
             f"micro AUROC ({split})": micro_auroc(data.labels, scores)}]
    for name, dropped in ABLATIONS.items():
        groups = [g for g in config["groups"] if g not in dropped]
        if not groups or len(groups) == len(config["groups"]):
            continue
        result = train_head(train, val, findings, {**config, "groups": groups})
        variant = predict_head(result.head, data)
        rows.append({"variant": f"{name} ({', '.join(groups)})",
                     f"macro AUROC ({split})": macro_auroc(data.labels, variant, findings),
                     f"micro AUROC ({split})": micro_auroc(data.labels, variant)})
    return pd.DataFrame(rows)
