"""The loaded models of a classifier run, shared by ``classify``, the service and Grad-CAM.

:class:`Analyzer` holds the detector, the CNN, the lung segmenter (when the run has one) and the fusion head,
loaded once and checked against each other (each fingerprint must be the one the head was trained on); :class:`Analysis` is what it says about one
radiograph. The batch jobs over files live in :mod:`hybridcxr.pipeline`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hybridcxr.detect.predict import Detection, Detector
from hybridcxr.errors import InputError
from hybridcxr.io.radiograph import Radiograph
from hybridcxr.layout import ClassifierLayout
from hybridcxr.lungs.measures import LungMeasures


@dataclass
class Analysis:
    """Everything the product says about one radiograph."""

    detection: Detection
    probabilities: dict[str, float]
    decisions: dict[str, bool | None]
    """Positive at the run's threshold; None for a finding the model never learned (see ``Analyzer.unlearned``)."""
    age_years: float | None
    sex: str | None
    lungs: LungMeasures | None = None
    """The lung-field measurements, when the run has a lung model."""
    detector_boxes: pd.DataFrame | None = None
    """The detector's own boxes where the run gates them (``detection.boxes`` then holds the gated ones)."""
    gated_rows: pd.DataFrame | None = None
    """Where the run gates: the gated boxes and the "No finding" row as a submission holds them
    (:func:`hybridcxr.detect.gating.gate`)."""

    @property
    def image_id(self) -> str:
        return self.detection.radiograph.image_id

    def lung_record(self) -> dict[str, object] | None:
        """The lung-field measurements as JSON outputs give them (quality flag first; values None when it is
        raised), or None when the run has no lung model."""
        if self.lungs is None:
            return None
        return {"quality": self.lungs.quality, **self.lungs.record()}


class Analyzer:
    """The detector, the CNN and the fusion head of a classifier run, loaded once; one decode per image.

    The CLI (``classify``) and the service call this same object, so they can never disagree. With
    ``runtime="onnx"`` the detector, the CNN and the head run in onnxruntime on the run's checked ONNX export
    (:mod:`hybridcxr.export.runtime`; ``"onnx-int8"``: the detector's int8 graph); the lung model, calibration
    and thresholds are the same either way.
    """

    def __init__(self, run: str | Path, device: str | None = None, runtime: str = "torch") -> None:
        from hybridcxr.classify.backbone import build_backbone
        from hybridcxr.classify.fusion import load_checkpoint
        from hybridcxr.dicom_out.identity import model_version
        from hybridcxr.export.runtime import open_classifier, open_detector

        layout = ClassifierLayout(run).require()
        self.run = layout.root
        self.model_version: str = model_version(layout.card)
        """The first 16 hex digits of the card's SHA-256: what our DICOM objects cite as the model version."""
        self.head, self.config, self.card = load_checkpoint(layout.model)
        self.runtime = runtime
        self.detector: Detector = open_detector(layout.detector, device=device, runtime=runtime)
        if runtime == "onnx-int8":
            _check_int8_classifies(self.detector)
        info = self.card["backbone"]
        self.backbone = build_backbone(info["name"], layout.backbone, input_size=int(info["size"]))
        self.backbone = self.backbone.to(self.detector.device).eval()
        if self.backbone.fingerprint() != info["fingerprint"]:
            raise InputError(layout.backbone, "the CNN weights differ from those the head was trained on")
        self._check_detector(layout.detector)
        self.onnx = open_classifier(layout, self.backbone, self.config.groups) if runtime != "torch" else None
        """The CNN and head graphs on an onnx runtime (fp32 on ``onnx-int8`` too), else None."""
        from hybridcxr.classify.cache import run_lung_side

        self.lungs = run_lung_side(layout.lungs, self.card.get("lungs"), device=self.detector.device)
        self.findings: list[str] = list(self.config.findings)
        self.thresholds: dict[str, float] = {f: float(self.card["thresholds"].get(f, 0.5)) for f in self.findings}
        from hybridcxr.classify.calibration import biases_of, temperatures_of

        self.temperatures = temperatures_of(self.card.get("calibration"), self.findings)
        self.biases = biases_of(self.card.get("calibration"), self.findings)
        self.unlearned: dict[str, str] = dict(self.card.get("unlearned") or {})
        """``{finding: reason}``: findings without a positive training image carry no decision."""
        self.gating = run_gating(self.card, layout.card)
        """The run's classifier-gated detection rule (:mod:`hybridcxr.detect.gating`), or None (boxes as detected)."""

    def _check_detector(self, folder: Path) -> None:
        """The detector must be the one whose pooled features the head was trained on (cards made before the
        fingerprint was recorded are checked by feature width only)."""
        from hybridcxr.classify.cache import detector_fingerprint

        expected = self.card.get("detector", {})
        if expected.get("feature_dim") not in (None, self.detector.feature_dim):
            raise InputError(folder, f"the detector gives {self.detector.feature_dim} features; the head "
                                               f"was trained on {expected['feature_dim']}")
        if expected.get("fingerprint") not in (None, detector_fingerprint(self.detector)):
            raise InputError(folder, "the detector weights differ from those the head was trained on")

    def analyze(self, detections: Sequence[Detection], ages: Sequence[float | None] | None = None,
                sexes: Sequence[str | None] | None = None) -> list[Analysis]:
        """Classify detected radiographs (with their pooled features); demographics from the headers unless given."""
        from hybridcxr.classify.backbone import embed
        from hybridcxr.classify.fusion import assemble_inputs

        if not detections:
            return []
        metas = [d.radiograph.meta for d in detections]
        ages = [m.age_years for m in metas] if ages is None else list(ages)
        sexes = [m.sex for m in metas] if sexes is None else list(sexes)
        pixels = [d.radiograph.pixels for d in detections]
        lungs, measures = None, [None] * len(detections)
        if self.lungs is not None:
            lungs, pixels, measures = self.lungs.inputs(pixels)
        cnn = (embed(self.backbone, pixels, device=self.detector.device) if self.onnx is None
               else self.onnx.backbone.embed(pixels))
        yolo = np.stack([d.features for d in detections])
        groups = self.config.groups
        inputs = assemble_inputs(self.config, yolo=yolo if "yolo" in groups else None,
                                 cnn=cnn if "cnn" in groups else None, lungs=lungs if "lungs" in groups else None,
                                 age_years=[np.nan if a is None else a for a in ages], sex=sexes)
        import torch

        from hybridcxr.classify.calibration import calibrated

        if self.onnx is not None:
            probs = calibrated(self.onnx.head.logits(inputs), self.temperatures, self.biases)
        else:
            with torch.inference_mode():
                probs = calibrated(self.head(inputs).numpy(), self.temperatures, self.biases)
        out = []
        gated = self._gated(detections, probs)
        for p, age, sex, m, (g, raw, rows) in zip(probs, ages, sexes, measures, gated):
            scores = {f: float(v) for f, v in zip(self.findings, p)}
            decisions = {f: None if f in self.unlearned else scores[f] >= self.thresholds[f] for f in self.findings}
            out.append(Analysis(g, scores, decisions, age, sex, m, raw, rows))
        return out

    def _gated(self, detections: Sequence[Detection], probs: np.ndarray
               ) -> list[tuple[Detection, pd.DataFrame | None, pd.DataFrame | None]]:
        """Per detection: it with its boxes after the run's gating rule, the detector's own boxes and the gated
        submission rows (both None when the run does not gate). One gating pass for the batch (pandas costs
        per call, not per row: per image it took a fifth of ``classify``'s time); per image where ids repeat."""
        if self.gating is None:
            return [(d, None, None) for d in detections]
        ids = [d.radiograph.image_id for d in detections]
        if len(set(ids)) < len(ids):
            return [self._gated([d], p[None])[0] for d, p in zip(detections, probs)]
        from hybridcxr.classify.gate import probability_table
        from hybridcxr.detect.gating import gate
        from hybridcxr.detect.predict import PREDICTION_COLUMNS
        from hybridcxr.findings import NO_FINDING

        table = probability_table(ids, probs, self.findings, self.unlearned)
        rows = gate(pd.concat([d.boxes for d in detections], ignore_index=True), table, self.gating, ids)
        order = rows["image_id"].map({i: k for k, i in enumerate(ids)}).to_numpy(dtype=int)  # gate keeps ids' order
        lesions = (rows["finding"] != NO_FINDING).to_numpy()
        ranked = np.lexsort((-rows["score"].to_numpy(dtype=float)[lesions], order[lesions]))  # stable: ties keep order
        boxes = rows.loc[lesions, PREDICTION_COLUMNS].iloc[ranked]
        row_ends, box_ends = (np.searchsorted(o, np.arange(len(ids) + 1)) for o in (order, order[lesions][ranked]))
        return [(Detection(d.radiograph, boxes.iloc[box_ends[k]:box_ends[k + 1]].reset_index(drop=True), d.features),
                 d.boxes, rows.iloc[row_ends[k]:row_ends[k + 1]].reset_index(drop=True))
                for k, d in enumerate(detections)]

    def submission_rows(self, analysis: Analysis) -> pd.DataFrame:
        """One image's boxes as a submission holds them under the run's gating rule (ungated without one): its
        boxes and a "No finding" row (box ``0 0 1 1``), with ``detector_score``, the score before gating."""
        from hybridcxr.detect.gating import UNGATED, gate

        if analysis.gated_rows is not None:
            return analysis.gated_rows
        return gate(analysis.detection.boxes, pd.DataFrame(), UNGATED, [analysis.image_id])

    def analyze_radiographs(self, radiographs: Sequence[Radiograph], ages: Sequence[float | None] | None = None,
                            sexes: Sequence[str | None] | None = None) -> list[Analysis]:
        """Detect and classify decoded radiographs together (the service's batches; one radiograph: one request).

        The detector's forward passes take ``batch_predict`` images each, the CNN and the head the whole list;
        the answers are in the order given. Demographics from the headers unless given.
        """
        return self.analyze(self.detector.predict(radiographs, features=True), ages, sexes)

    def analyze_paths(self, paths: Sequence[Path], *, demographics: Mapping[str, tuple[float | None, str | None]] | None = None,
                      on_error=None, on_done=None, allow_modality: bool = False,
                      image_ids: Mapping[Path, str] | None = None, conf: float | None = None) -> Iterator[Analysis]:
        """Read, detect and classify files in batches; ``demographics`` (by image_id) overrides the headers;
        ``conf``: the detector's lowest box score kept [its config's]."""
        size = self.detector.config["batch_predict"]
        batch: list[Detection] = []

        def flush() -> list[Analysis]:
            ages = sexes = None
            if demographics is not None:
                given = [demographics.get(d.radiograph.image_id) for d in batch]
                ages = [g[0] if g else d.radiograph.meta.age_years for g, d in zip(given, batch)]
                sexes = [g[1] if g else d.radiograph.meta.sex for g, d in zip(given, batch)]
            done = self.analyze(batch, ages, sexes)
            batch.clear()
            return done

        for detection in self.detector.predict_paths(paths, features=True, on_error=on_error, on_done=on_done, conf=conf,
                                                     allow_modality=allow_modality, image_ids=image_ids):
            batch.append(detection)
            if len(batch) == size:
                yield from flush()
        if batch:
            yield from flush()


def run_gating(card: Mapping[str, object], where: Path):
    """The gating rule stored in a classifier card (None for runs without one, or whose rule is ungated)."""
    from hybridcxr.detect.gating import GatingRule

    entry = card.get("gating") or {}
    if not isinstance(entry, Mapping) or not entry.get("rule"):
        return None
    try:
        rule = GatingRule.from_dict(entry["rule"])
    except (TypeError, ValueError) as err:
        raise InputError(where, f"unreadable gating rule ({err})") from None
    return rule if rule.gated else None


def _check_int8_classifies(detector: Detector) -> None:
    """Refuse an int8 detector whose export measured this run's probabilities moving beyond the int8
    tolerance its record states (:mod:`hybridcxr.export.quantize`): its boxes are fine, its probabilities
    are not PyTorch's. InputError naming the record (``detector``: an ``OnnxDetector``, which knows its file)."""
    from hybridcxr.export.record import classification_refusal, record_path

    why = classification_refusal(detector.record)
    if why is not None:
        raise InputError(record_path(detector.path), why)
