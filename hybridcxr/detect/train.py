"""Train the YOLOv8 finding detector on a prepared dataset (``hybridcxr prepare``), through ultralytics.

A run folder holds what ultralytics writes (``weights/last.pt``, ``weights/best.pt``, ``results.csv``,
``args.yaml``) plus what is ours: ``weights/best.safetensors`` with its card ``weights/best.json`` (the
weights ``hybridcxr detect`` loads without unpickling anything), and ``training_curves.png``.

>>> config = detector_config({"epochs": 3, "fliplr": 0.5})
>>> config["epochs"], config["augment"]["fliplr"]
(3, 0.5)
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hybridcxr.config import detector_config as detector_config  # re-exported: the job's config
from hybridcxr.config import ensure_config
from hybridcxr.device import cpu_threads, detector_devices
from hybridcxr.detect.ultralytics_env import import_ultralytics
from hybridcxr.detect.weights import export_detector
from hybridcxr.errors import DataWarning, DatasetError, InputError
from hybridcxr.layout import DetectorLayout, PreparedLayout
from hybridcxr.files import read_json_or_none, write_json

log = logging.getLogger(__name__)


@dataclass
class DetectorRun:
    """What :func:`train_detector` left in its run folder."""

    out: Path
    weights: Path  # best.safetensors (card beside it)
    card: dict[str, Any]
    resumed: bool

    def __str__(self) -> str:
        m = self.card.get("metrics", {})
        scores = ", ".join(f"{k} {v:.4f}" for k, v in m.items()) or "no validation metrics"
        return (f"Detector trained for {self.card['epochs_trained']} epochs"
                f"{' (resumed)' if self.resumed else ''} on {self.card['device']}: {scores}\n"
                f"weights: {self.weights}\ncurves:  {DetectorLayout(self.out).curves}")


def resolve_data_yaml(data: str | Path) -> Path:
    """``data.yaml`` of a prepared folder (or the yaml itself); raises DatasetError where there is none."""
    path = Path(data)
    path = PreparedLayout(path).data_yaml if path.is_dir() else path
    if not path.is_file():
        raise DatasetError(path, "no data.yaml here; make one with `hybridcxr prepare`")
    return path


def train_detector(data: str | Path, out: str | Path, config: dict[str, Any] | None = None) -> DetectorRun:
    """Train (or resume) a YOLOv8 detector on a prepared dataset; export safetensors + card and curves.

    Args:
        data: The prepared folder (or its ``data.yaml``).
        out: The run folder. If it holds an unfinished run's ``weights/last.pt`` and ``config["resume"]``,
            training continues from there; a finished run is refused rather than overwritten.
        config: :func:`detector_config` output (defaults when None).

    Raises:
        DatasetError: No ``data.yaml``; InputError: ``out`` already holds a finished detector.
    """
    config = ensure_config("detector", config)
    data_yaml = resolve_data_yaml(data)
    out = Path(out).resolve()
    layout = DetectorLayout(out)
    if layout.card.is_file():
        raise InputError(out, "already holds a trained detector (weights/best.json); choose another --out")
    last = layout.last_pt
    resumed = config["resume"] and last.is_file()

    ultralytics = import_ultralytics()
    device, amp = detector_devices(config["device"])
    amp = amp if config["amp"] else False
    workers = config["workers"]
    if workers == "auto":
        workers = 8 if device != "cpu" else cpu_threads()
    if resumed and layout.done_marker.is_file():
        # killed after the last epoch but before the export (ultralytics has stripped last.pt by then and
        # would refuse to resume it): only the export is left
        log.info("training in %s had finished; exporting its weights", out)
    elif resumed:
        log.info("resuming the unfinished run in %s", out)
        model = ultralytics.YOLO(str(last))
        model.add_callback("on_fit_epoch_end", _mark_training_done)
        model.train(resume=True, device=device, workers=int(workers))
    else:
        model = ultralytics.YOLO(_model_source(config["model"]))
        args = {
            "data": str(data_yaml), "epochs": config["epochs"], "imgsz": config["imgsz"],
            "batch": config["batch"], "device": device, "amp": amp,
            "workers": int(workers), "patience": config["patience"], "seed": config["seed"],
            "deterministic": True, "project": str(out.parent), "name": out.name, "exist_ok": True,
            "verbose": False, **config["augment"], **config["ultralytics"],
        }
        model.add_callback("on_fit_epoch_end", _mark_training_done)
        from hybridcxr.detect.trainer import AtomicDetectionTrainer

        model.train(**args, trainer=AtomicDetectionTrainer)
    best = layout.best_pt if layout.best_pt.is_file() else last
    results = _read_results(layout.results)
    summary = read_json_or_none(PreparedLayout(data_yaml.parent).summary) or {}
    card = {
        "epochs_trained": int(len(results)),
        "device": device,
        "amp": amp,
        "data": str(data_yaml),
        "data_summary": {k: summary.get(k) for k in ("source", "images_per_split", "patients_per_split",
                                                     "grouped_by") if k in summary},
        "metrics": _final_metrics(results),
        "config": {k: v for k, v in config.to_dict().items() if k not in ("resume",)},
    }
    weights = export_detector(best, layout.weights, card)
    if len(results):
        plot_training_curves(results, layout.curves)
    return DetectorRun(out, weights, read_json_or_none(layout.card) or card, resumed)




def _mark_training_done(trainer) -> None:
    """Ultralytics callback: after the epoch that ends training (last or early-stopped), leave a marker."""
    if trainer.stop:
        write_json(DetectorLayout(trainer.save_dir).done_marker, {"epochs": int(trainer.epoch) + 1})


def _model_source(model: str) -> str:
    """A model yaml of ultralytics' (built from scratch, nothing downloaded) or a local .pt file."""
    if model.endswith((".yaml", ".yml")):
        return model
    path = Path(model)
    if not path.is_file():
        raise InputError(path, "starting weights not found; give a local .pt or a model yaml such as yolov8n.yaml "
                               "(no weights are downloaded)")
    warnings.warn(f"{path}: a .pt file is a pickle; it is loaded with ultralytics' restricted (weights_only) "
                  "unpickler, but take starting weights only from a source you trust", DataWarning, stacklevel=2)
    return str(path)


def _read_results(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    results = pd.read_csv(path)
    results.columns = [c.strip() for c in results.columns]
    return results


def _final_metrics(results: pd.DataFrame) -> dict[str, float]:
    """Ultralytics' validation metrics of the best epoch (its mAP50 is COCO-style, not VinDr's mAP@0.4)."""
    cols = {"metrics/mAP50(B)": "ultralytics_mAP50", "metrics/mAP50-95(B)": "ultralytics_mAP50-95",
            "metrics/precision(B)": "precision", "metrics/recall(B)": "recall"}
    if results.empty or "metrics/mAP50(B)" not in results:
        return {}
    best = results.loc[results["metrics/mAP50(B)"].idxmax()]
    return {name: float(best[col]) for col, name in cols.items() if col in results}


def plot_training_curves(results: pd.DataFrame, path: str | Path) -> Path:
    """Draw losses (train and val) and validation metrics per epoch from ultralytics' results.csv as a PNG."""
    from hybridcxr.report.plots import pyplot, save_figure

    plt = pyplot()
    epochs = results["epoch"] if "epoch" in results else pd.Series(range(1, len(results) + 1))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for ax, kind in zip(axes[:2], ("train", "val")):
        for loss in ("box_loss", "cls_loss", "dfl_loss"):
            col = f"{kind}/{loss}"
            if col in results:
                ax.plot(epochs, results[col], marker="o", ms=3, label=loss.replace("_loss", ""))
        ax.set(title=f"{kind} loss", xlabel="epoch")
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
    for col, label in (("metrics/mAP50(B)", "mAP@0.5"), ("metrics/mAP50-95(B)", "mAP@0.5:0.95"),
                       ("metrics/precision(B)", "precision"), ("metrics/recall(B)", "recall")):
        if col in results:
            axes[2].plot(epochs, results[col], marker="o", ms=3, label=label)
    axes[2].set(title="validation (ultralytics' metrics)", xlabel="epoch", ylim=(0, 1))
    axes[2].legend(frameon=False)
    axes[2].grid(alpha=0.3)
    fig.suptitle("hybridcxr detector training")
    return save_figure(fig, path)


def data_names(data_yaml: str | Path) -> list[str]:
    """Class names of a YOLO ``data.yaml`` in index order."""
    names = yaml.safe_load(Path(data_yaml).read_text())["names"]
    return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)


__all__ = ["DetectorRun", "data_names", "detector_config", "plot_training_curves",
           "resolve_data_yaml", "train_detector"]
