"""Where things live in hybridcxr's folders: one small object per folder kind, so no path is spelled twice.

- :class:`PreparedLayout`: what ``hybridcxr prepare`` writes (manifest, fused boxes, summary, YOLO data.yaml).
- :class:`DetectorLayout`: a detector run (ultralytics' checkpoints, our safetensors weights and card).
- :class:`ClassifierLayout`: a classifier run, self-contained (the fusion head, the detector and the CNN it was
  trained with, the feature cache, the training history).

>>> ClassifierLayout("runs/cls").card.as_posix()
'runs/cls/model/card.json'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hybridcxr.errors import InputError


@dataclass(frozen=True)
class PreparedLayout:
    """A prepared dataset folder."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def manifest(self) -> Path:
        """One row per image: split, labels, demographics, the cached PNG."""
        return self.root / "manifest.csv"

    def images(self, split: str) -> Path:
        """The prepared 8-bit PNGs of one split (``train``, ``val``, ``test``)."""
        return self.root / "images" / split

    def labels(self, split: str) -> Path:
        """The YOLO box labels of one split, one ``<image_id>.txt`` per image (empty: no box)."""
        return self.root / "labels" / split

    @property
    def boxes(self) -> Path:
        """The readers' boxes after fusion, in original pixels."""
        return self.root / "boxes.csv"

    @property
    def summary(self) -> Path:
        """Counts per split, the source, how the split was grouped."""
        return self.root / "summary.json"

    @property
    def data_yaml(self) -> Path:
        """Ultralytics' dataset description (finding names in class order)."""
        return self.root / "data.yaml"


@dataclass(frozen=True)
class DetectorLayout:
    """A detector run folder (``hybridcxr train detector --out``)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def weights_dir(self) -> Path:
        return self.root / "weights"

    @property
    def weights(self) -> Path:
        """The exported detector, loaded without unpickling."""
        return self.weights_dir / "best.safetensors"

    @property
    def card(self) -> Path:
        """The weights' JSON card (architecture, findings, image size, sha256)."""
        return self.weights_dir / "best.json"

    @property
    def last_pt(self) -> Path:
        """Ultralytics' last checkpoint (a pickle: kept for resume only)."""
        return self.weights_dir / "last.pt"

    @property
    def best_pt(self) -> Path:
        return self.weights_dir / "best.pt"

    @property
    def results(self) -> Path:
        """Ultralytics' per-epoch metrics."""
        return self.root / "results.csv"

    @property
    def done_marker(self) -> Path:
        """Left after the epoch that ends training, so a run killed before its export finishes on re-run."""
        return self.weights_dir / "training-done.json"

    @property
    def curves(self) -> Path:
        return self.root / "training_curves.png"


@dataclass(frozen=True)
class ClassifierLayout:
    """A classifier run folder (``hybridcxr train classifier --out``)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def model(self) -> Path:
        """The fusion head: ``model.safetensors`` and ``card.json``."""
        return self.root / "model"

    @property
    def card(self) -> Path:
        return self.model / "card.json"

    @property
    def detector(self) -> Path:
        """The detector the head was trained with: its ``best.safetensors`` and ``best.json``, copied in."""
        return self.root / "detector"

    @property
    def backbone(self) -> Path:
        """The CNN whose embeddings the head was trained on."""
        return self.root / "backbone.safetensors"

    @property
    def onnx_backbone(self) -> Path:
        """The CNN as ONNX (``hybridcxr export RUN --format onnx``), beside the head's card."""
        return self.model / "backbone.onnx"

    @property
    def onnx_head(self) -> Path:
        """The fusion head as ONNX, beside its card (the detector's export sits beside the detector's card)."""
        return self.model / "head.onnx"

    @property
    def lungs(self) -> Path:
        """The lung segmenter the head's ``lungs`` group (or the CNN's lung crop) came from, copied in."""
        return self.root / "lungs"

    @property
    def features(self) -> Path:
        """The feature cache of the run's final models."""
        return self.root / "features"

    @property
    def checkpoint(self) -> Path:
        """Per-epoch training state (resume)."""
        return self.root / "checkpoint"

    @property
    def gating(self) -> Path:
        """Every candidate gating rule's validation mAP (the chosen one is in the card)."""
        return self.root / "gating.csv"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def curves(self) -> Path:
        return self.root / "training_curves.png"

    def require(self) -> ClassifierLayout:
        """Itself, or InputError naming the folder when it holds no trained classifier."""
        if not self.card.is_file():
            raise InputError(self.root, "not a classifier run folder (no model/card.json); make one with "
                                        "`hybridcxr train classifier`")
        return self
