"""The main job on built-in phantom data: every stage of the product, end to end, with nothing downloaded.

``hybridcxr demo`` writes phantom DICOMs, prepares them (patient-grouped split, reader fusion), trains the
detector, a lung segmenter (on the phantoms' true lung fields) and the fusion classifier (with the lung
measurements and the CNN on the lung-field crop) briefly, runs a few Optuna trials on SQLite, runs ``detect`` and
``classify`` on the held-back test phantoms (overlays included), evaluates both models on that split and
prints a summary: the headline numbers, the time per stage and where each output is.

Each stage leaves its outputs under ``OUT`` and is skipped when they are already there, so a re-run after an
interruption goes on where it stopped (the detector resumes its last epoch; the study continues).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from hybridcxr.device import cpu_threads
from hybridcxr.layout import ClassifierLayout, DetectorLayout, PreparedLayout

Size = Literal["small", "medium"]

#: What each size runs. ``small`` is the README's first command: within 5 minutes on 2 CPU cores, venv included.
#: The detector steps its SGD optimiser on every batch of 16 (``nbs=16``; ultralytics' default sums four
#: batches per step, leaving a 170-image phantom set a few steps per epoch): 20 epochs at 192 px then reach
#: the mAP that 30 epochs at 256 px did not. 16 epochs saved 15-25 s but sit on the steep part of the curve:
#: test mAP@0.4 0.71-0.76 on two cores, 0.43 on one (other thread counts, other rounding); 20 gave 0.75-0.79 on both.
DETECTOR_DEMO = {"ultralytics.optimizer": "SGD", "ultralytics.lr0": 0.01, "ultralytics.nbs": 16}
SIZES: dict[str, dict[str, Any]] = {
    "small": {"images": 240, "prepare_size": 320, "det_epochs": 20, "det_imgsz": 192, "trials": 8,
              "n_boot": 500, "lungs": {"imgsz": 128, "channels": [8, 16, 32, 64], "epochs": 8, "patience": 3}},
    "medium": {"images": 600, "prepare_size": 384, "det_epochs": 60, "det_imgsz": 320, "trials": 30,
               "n_boot": 1000, "lungs": {"imgsz": 192, "channels": [8, 16, 32, 64], "epochs": 12, "patience": 4}},
}


@dataclass
class Stage:
    """One timed stage of the demo."""

    name: str
    seconds: float
    skipped: bool = False  # its outputs were already there


@dataclass
class DemoResult:
    """What the demo did and where it put everything."""

    out: Path
    size: str
    stages: list[Stage] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


#: Runs one stage: ``(name, done, job)`` logs the stage, calls ``job`` unless ``done``, times it and
#: returns what ``job`` returned (None when skipped).
_StageRunner = Callable[[str, bool, Callable[[], Any]], Any]
STAGES = 10


@dataclass(frozen=True)
class _DemoPaths:
    """Where each stage keeps its outputs under ``out`` (a stage whose outputs are there is skipped)."""

    out: Path
    phantom: Path
    prepared: Path
    detector: Path
    classifier: Path
    tune: Path
    lungs: Path

    @classmethod
    def under(cls, out: Path) -> _DemoPaths:
        """The demo's folders under ``out``."""
        return cls(out, out / "phantom", out / "prepared", out / "detector", out / "classifier", out / "tune",
                   out / "lungs")


def run_demo(out: str | Path = "demo-out", size: Size = "small", *, seed: int = 0, progress: bool = True,
             log: Callable[[str], None] = print, plan: Mapping[str, Any] | None = None) -> DemoResult:
    """Run every stage on phantom data under ``out``; return the timings, metrics and output paths.

    ``plan`` overrides entries of ``SIZES[size]`` (the tests use toy sizes).
    """
    import optuna

    from hybridcxr.files import write_text

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per stage, not one per trial
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    plan = {**SIZES[size], **(plan or {})}
    paths = _DemoPaths.under(Path(out))
    result = DemoResult(paths.out, size)
    stage = _stage_runner(result, log)
    _make_data(stage, paths, plan, seed, progress)
    _train_models(stage, paths, plan, seed, progress)
    detections, classified = _run_on_held_back(stage, paths, progress)
    report, cls_report = _evaluate(stage, paths, plan, progress)
    result.metrics = _headline_metrics(paths, report, cls_report)
    result.outputs = _output_paths(paths, detections, classified, cls_report)
    write_text(paths.out / "summary.md", summary_markdown(result) + "\n")
    return result


def _stage_runner(result: DemoResult, log: Callable[[str], None]) -> _StageRunner:
    """A :data:`_StageRunner` that logs ``[k/10] name`` and appends each stage's :class:`Stage` to ``result``."""

    def stage(name: str, done: bool, job: Callable[[], Any]) -> Any:
        log(f"[{len(result.stages) + 1}/{STAGES}] {name}" + (": already done, skipped" if done else ""))
        start = time.perf_counter()
        value = None if done else job()
        result.stages.append(Stage(name, time.perf_counter() - start, done))
        return value

    return stage


def _make_data(stage: _StageRunner, paths: _DemoPaths, plan: Mapping[str, Any], seed: int,
               progress: bool) -> None:
    """Stages 1-2: write the phantom DICOMs, then prepare them (split, reader fusion, cached PNGs)."""
    from hybridcxr.data.phantom import make_phantom_dataset
    from hybridcxr.data.prepare import PrepareOptions, prepare
    from hybridcxr.data.sources import load_source

    phantom, prepared = paths.phantom, paths.prepared
    stage(f"phantom data: {plan['images']} synthetic DICOMs", (phantom / "annotations" / "image_labels_test.csv").is_file(),
          lambda: make_phantom_dataset(phantom, n=plan["images"], seed=seed, progress=progress, lung_masks=True,
                                       workers=cpu_threads()))
    stage("prepare: patient-grouped split, reader fusion, cached PNGs", PreparedLayout(prepared).manifest.is_file(),
          lambda: prepare(load_source("vindr-cxr", phantom), prepared,
                          PrepareOptions(size=plan["prepare_size"], seed=seed, progress=progress)))


def _train_models(stage: _StageRunner, paths: _DemoPaths, plan: Mapping[str, Any], seed: int,
                  progress: bool) -> None:
    """Stages 3-6: train the detector and the lung segmenter, then the fusion classifier on their features (and
    the CNN on the lung-field crop), then the Optuna study."""
    from hybridcxr.classify.train import classifier_config, train_classifier
    from hybridcxr.config import load_config
    from hybridcxr.detect.train import detector_config, train_detector
    from hybridcxr.lungs.card import card_path
    from hybridcxr.lungs.train import train_lungs
    from hybridcxr.tune import tune_fusion

    prepared, det_run, cls_run = paths.prepared, paths.detector, paths.classifier
    stage(f"train detector: YOLOv8n, {plan['det_epochs']} epochs at {plan['det_imgsz']} px",
          DetectorLayout(det_run).card.is_file(),
          lambda: train_detector(prepared, det_run, detector_config(
              {**DETECTOR_DEMO, "epochs": plan["det_epochs"], "imgsz": plan["det_imgsz"], "seed": seed})))
    lungs = {"imgsz": 128, **plan.get("lungs", {}), "seed": seed}
    stage(f"train lungs: U-Net at {lungs['imgsz']} px on the phantoms' true lung fields",
          card_path(paths.lungs).is_file(),
          lambda: train_lungs(paths.phantom / "lungs", paths.lungs, load_config("lungs", overrides=lungs),
                              progress=progress))
    hybrid = {"seed": seed, "lungs": str(paths.lungs), "crop": "lungs"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the randomly initialised CNN: said once in the summary
        stage("train classifier: detector features + ResNet-18 on the lung fields + lung measures + age/sex",
              ClassifierLayout(cls_run).card.is_file(),
              lambda: train_classifier(prepared, det_run, cls_run, classifier_config(hybrid), progress=progress))
        stage(f"tune: {plan['trials']} Optuna trials on SQLite", False,
              lambda: tune_fusion(prepared, det_run, paths.tune, trials=plan["trials"],
                                  overrides=hybrid, progress=progress, features_from=cls_run))


def _run_on_held_back(stage: _StageRunner, paths: _DemoPaths, progress: bool) -> tuple[Any, Any]:
    """Stages 7-8: ``detect`` and ``classify`` on the held-back test phantoms, with overlays, as a user
    would run them; returns both runs' results."""
    from hybridcxr.pipeline import Analyzer, classify_files, detect_files

    held_back = paths.phantom / "test"  # the official-test folder: the prepared test split, never trained on

    def gated_detect() -> Any:
        analyzer = Analyzer(paths.classifier)  # its detector is paths.detector's, copied into the run
        return detect_files([held_back], analyzer.detector, paths.out / "detect", overlay=True, progress=progress,
                            analyzer=analyzer)

    detections = stage("detect: held-back test phantoms, gated by the classifier, with overlays", False, gated_detect)
    classified = stage("classify: held-back test phantoms, with overlays", False,
                       lambda: classify_files([held_back], Analyzer(paths.classifier), paths.out / "classify",
                                              overlay=True, progress=progress))
    return detections, classified


def _evaluate(stage: _StageRunner, paths: _DemoPaths, plan: Mapping[str, Any], progress: bool
              ) -> tuple[Any, Path]:
    """Stages 9-10: score the detections gated and ungated (reports also written as ``detect/evaluation.md``)
    and evaluate the classifier on the test split; returns the detector reports and the classifier report's
    path."""
    from hybridcxr.classify.evaluate import evaluate_classifier
    from hybridcxr.detect.evaluate import comparison_markdown, evaluate_gating
    from hybridcxr.files import write_text

    report = stage("evaluate detector: VinDr mAP@0.4 on the test split, gated and ungated", False,
                   lambda: evaluate_gating(paths.out / "detect", paths.prepared, split="test"))
    parts = [f"## {name}\n\n{r.to_markdown()}" for name, r in report.items()]
    write_text(paths.out / "detect" / "evaluation.md",
               "\n\n".join([*parts, "## side by side\n\n" + comparison_markdown(report)]) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls_report = stage("evaluate classifier: AUROC with CIs, ROC/PR, subgroups, ablations", False,
                           lambda: evaluate_classifier(paths.classifier, paths.prepared, split="test",
                                                       n_boot=plan["n_boot"], progress=progress))
    return report, cls_report


def _headline_metrics(paths: _DemoPaths, report: Any, cls_report: Path) -> dict[str, float]:
    """The summary's numbers: detector test mAP, classifier test and val macro AUROC, best tuning trial."""
    gated = report.get("gated", report.get("detections"))
    return {"detector test mAP@0.4 (ungated)": float(report.get("ungated", gated).map),
            "detector test mAP@0.4 (gated by the classifier)": float(gated.map),
            "classifier test macro AUROC": _macro_auroc(cls_report.parent / "predictions.csv"),
            "classifier val macro AUROC": _card_value(paths.classifier, "val_macro_auroc"),
            "best tuning trial val macro AUROC": _best_trial(paths.tune)}


def _output_paths(paths: _DemoPaths, detections: Any, classified: Any, cls_report: Path) -> dict[str, Path]:
    """Where the summary points the user: tables, overlays, reports and the tuned config."""
    return {
        "detections": detections.out / "detections.csv",
        "detection overlays": detections.outputs.get("overlays", detections.out),
        "detector evaluation": paths.out / "detect" / "evaluation.md",
        "predictions": classified.out / "predictions.csv",
        "classifier overlays": classified.outputs.get("overlays", classified.out),
        "classifier report (ROC curves)": cls_report,
        "study report": paths.tune / "study-report",
        "best tuned config": paths.tune / "best_config.yaml",
        "detector training curves": paths.detector / "training_curves.png",
    }


def summary_markdown(result: DemoResult) -> str:
    """The demo's summary as Markdown: metrics, time per stage, outputs."""
    lines = [f"# hybridcxr demo ({result.size}, phantom data)", "", "| metric (phantom data) | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result.metrics.items()]
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s.name} | {'skipped (done before)' if s.skipped else f'{s.seconds:.1f}'} |" for s in result.stages]
    lines += [f"| **total** | {result.seconds:.1f} |", "", "| output | path |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in result.outputs.items()]
    lines += ["", "The CNN starts from random weights (nothing is downloaded) and both models train for minutes "
                  "on synthetic phantoms: these numbers show the pipeline works, not what it reaches on real data."]
    return "\n".join(lines)


def _macro_auroc(predictions: Path) -> float:
    from hybridcxr.report.metrics import macro_auroc

    table = pd.read_csv(predictions)
    findings = [c[len("label_"):] for c in table.columns if c.startswith("label_")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(macro_auroc(table[[f"label_{f}" for f in findings]].to_numpy(float),
                                 table[findings].to_numpy(float), findings))


def _card_value(run: Path, key: str) -> float:
    import json

    return float(json.loads(ClassifierLayout(run).card.read_text())[key])


def _best_trial(tune_run: Path) -> float:
    import optuna

    storage = f"sqlite:///{(tune_run / 'study.db').resolve()}"
    values = [s.best_trial.value for s in optuna.get_all_study_summaries(storage) if s.best_trial is not None]
    return float(max(values)) if values else float(np.nan)
