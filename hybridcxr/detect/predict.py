"""Run the trained detector on radiographs: boxes in original pixels, pooled features, one decode per image.

Every input goes through :func:`hybridcxr.io.read_radiograph` (the decode training used: DICOM window,
MONOCHROME1 inversion), is shrunk so its long side is the model's image size (area interpolation, 8-bit, as
``prepare`` caches it), letterboxed onto a square grey canvas and batched. Decoding runs in a thread pool
ahead of the network, so both cores stay busy on a laptop. Boxes come back in the original pixel frame,
clipped to the image.

>>> detector = Detector.load("runs/det")                                     # doctest: +SKIP
>>> result = detector.predict([read_radiograph("00002578_000.png")])[0]      # doctest: +SKIP
>>> result.boxes.columns.tolist()                                            # doctest: +SKIP
['image_id', 'finding', 'score', 'x_min', 'y_min', 'x_max', 'y_max']
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hybridcxr.config import detector_config
from hybridcxr.detect.features import FeatureHooks, concat_pooled
from hybridcxr.detect.ultralytics_env import setup_torch_threads
from hybridcxr.device import cpu_threads
from hybridcxr.detect.weights import load_detector
from hybridcxr.errors import HybridCXRError
from hybridcxr.io import Radiograph, read_radiograph

PAD_VALUE = 114  # ultralytics' letterbox grey
PREDICTION_COLUMNS = ["image_id", "finding", "score", "x_min", "y_min", "x_max", "y_max"]


@dataclass
class Prepared:
    """One radiograph ready for the network: the letterboxed 8-bit image and how to map boxes back."""

    radiograph: Radiograph
    image: np.ndarray  # (S, S) uint8, letterboxed
    scale: float  # resized / original
    pad: tuple[int, int]  # (left, top) padding in letterboxed pixels


@dataclass
class Detection:
    """The detector's output for one radiograph."""

    radiograph: Radiograph
    boxes: pd.DataFrame  # PREDICTION_COLUMNS, original pixels
    features: np.ndarray | None = None  # pooled neck features, when asked for


def letterbox(pixels: np.ndarray, size: int, flip: bool = False) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Shrink [0, 1] pixels to long side ``size`` (8-bit, area interpolation) and centre them on a square.

    Returns the (size, size) uint8 image, the scale factor and the (left, top) padding.
    """
    import cv2

    height, width = pixels.shape
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(pixels, (new_w, new_h), interpolation=interp) if (new_w, new_h) != (width, height) else pixels
    image8 = np.round(np.clip(resized, 0.0, 1.0) * 255).astype(np.uint8)
    if flip:
        image8 = image8[:, ::-1]
    canvas = np.full((size, size), PAD_VALUE, np.uint8)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas[top:top + new_h, left:left + new_w] = image8
    return canvas, new_w / width, (left, top)


def decode_threads(on_cpu: bool) -> int:
    """Threads that decode files ahead of the network: half the cores (at least 2) on the CPU, up to 8 for a GPU.

    On the CPU torch keeps every core too: decoders mostly wait on zlib/libjpeg with the GIL released, and
    measured on 2 cores (tools/bench_detector.py) 2 decoders beside 2 torch threads beat any split of the cores.
    """
    cores = cpu_threads()
    return max(2, cores // 2) if on_cpu else max(1, min(8, cores))


class Detector:
    """A loaded detector: letterbox, forward, NMS and box mapping, batched; optional pooled features."""

    def __init__(self, model: Any, card: dict[str, Any], device: str, config: dict[str, Any] | None = None) -> None:
        self.model, self.card, self.device = model, card, device
        self.findings: list[str] = list(card["findings"])
        self.imgsz = int(card["imgsz"])
        self.config = config or detector_config()
        self.hooks = FeatureHooks(model, card["feature_layers"])

    @classmethod
    def load(cls, weights: str | Path, device: str | None = None, config: dict[str, Any] | None = None) -> Detector:
        """Load ``.safetensors`` weights (or a run folder) onto ``device`` (CUDA when available)."""
        import torch

        setup_torch_threads()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, card = load_detector(weights, device=device)
        # channels-last convolutions run ~1.3x faster on the CPU's oneDNN and on tensor cores, same arithmetic
        model = model.to(memory_format=torch.channels_last)
        return cls(model, card, device, config)

    @property
    def feature_dim(self) -> int:
        return int(self.card["feature_dim"])

    def prepare(self, radiograph: Radiograph, flip: bool = False) -> Prepared:
        """Letterbox one radiograph for this model."""
        image, scale, pad = letterbox(radiograph.pixels, self.imgsz, flip=flip)
        return Prepared(radiograph, image, scale, pad)

    def run(self, batch: Sequence[Prepared], *, conf: float | None = None, tta: bool = False,
            features: bool = False) -> list[Detection]:
        """Detect on prepared images in one forward pass (two with ``tta``: original and flipped)."""
        import torch
        from ultralytics.utils.nms import non_max_suppression

        cfg = self.config
        conf = cfg["conf"] if conf is None else conf
        images = [p.image for p in batch]
        if tta:
            images += [self.prepare(p.radiograph, flip=True).image for p in batch]
        raw, matrix = self.forward(np.stack(images), features)
        matrix = matrix[: len(batch)] if matrix is not None else None
        kept = non_max_suppression(torch.as_tensor(raw).float(), conf_thres=conf, iou_thres=cfg["iou"],
                                   max_det=int(cfg["max_det"]), nc=len(self.findings))
        out = []
        for i, item in enumerate(batch):
            boxes = self._to_original(kept[i].cpu().numpy(), item, flip=False)
            if tta:
                flipped = self._to_original(kept[i + len(batch)].cpu().numpy(), item, flip=True)
                boxes = self._merge_tta(boxes, flipped, item.radiograph, conf)
            feats = matrix[i] if matrix is not None else None
            out.append(Detection(item.radiograph, self._frame(item.radiograph.image_id, boxes), feats))
        return out

    def forward(self, images: np.ndarray, features: bool = False) -> tuple[Any, np.ndarray | None]:
        """The network on letterboxed ``(N, S, S)`` uint8 images: the Detect head's ``(N, 4 + C, anchors)`` output
        (boxes in letterboxed pixels, class scores; what NMS reads) and, with ``features``, the ``(N, D)`` pooled
        features. The ONNX runtime (:mod:`hybridcxr.export.runtime`) replaces this method only."""
        import torch

        tensor = torch.from_numpy(images).to(self.device)
        tensor = tensor[:, None].expand(-1, 3, -1, -1).float().div_(255.0).contiguous(memory_format=torch.channels_last)
        half = self.device.startswith("cuda") and bool(self.config.get("amp", True))
        with torch.inference_mode(), torch.autocast("cuda", enabled=half), self.hooks.capture(enabled=features) as pooled:
            raw = self.model(tensor)
        raw = raw[0] if isinstance(raw, (list, tuple)) else raw
        return raw, concat_pooled(pooled()) if features else None

    def predict(self, radiographs: Sequence[Radiograph], *, conf: float | None = None, tta: bool = False,
                features: bool = False) -> list[Detection]:
        """Detect on decoded radiographs, batched by ``config['batch_predict']``."""
        size = self.config["batch_predict"]
        out: list[Detection] = []
        for start in range(0, len(radiographs), size):
            prepared = [self.prepare(r) for r in radiographs[start:start + size]]
            out += self.run(prepared, conf=conf, tta=tta, features=features)
        return out

    def predict_paths(
        self, paths: Iterable[str | Path], *, conf: float | None = None, tta: bool = False, features: bool = False,
        allow_modality: bool = False, on_error: Callable[[Path, HybridCXRError], None] | None = None,
        on_done: Callable[[int], None] | None = None, image_ids: Mapping[Path, str] | None = None,
    ) -> Iterator[Detection]:
        """Read, letterbox and detect files in batches, decoding in threads ahead of the network.

        At most two batches are decoded ahead (by :func:`decode_threads` threads), so memory stays flat
        however many files there are. A file that cannot be read is passed to ``on_error`` (else raised)
        and skipped; ``on_done(n)`` is called as files are handled. ``image_ids`` (path -> id) overrides the
        ids read from file names (a batch's unique ids, see :func:`hybridcxr.pipeline.unique_ids`).
        """
        size = self.config["batch_predict"]
        decoders = decode_threads(not self.device.startswith("cuda"))

        def load(path: Path) -> Prepared | HybridCXRError:
            try:
                radiograph = read_radiograph(path, allow_modality=allow_modality)
                if image_ids is not None and path in image_ids:
                    radiograph = radiograph.renamed(image_ids[path])
                return self.prepare(radiograph)
            except HybridCXRError as err:
                return err

        with ThreadPoolExecutor(max_workers=decoders) as pool:
            pending: deque = deque()
            batch: list[Prepared] = []
            for path in paths:
                pending.append((Path(path), pool.submit(load, Path(path))))
                if len(pending) >= 2 * size:
                    yield from self._collect(pending.popleft(), batch, size, conf, tta, features, on_error, on_done)
            while pending:
                yield from self._collect(pending.popleft(), batch, size, conf, tta, features, on_error, on_done)
            if batch:
                yield from self._flush(batch, conf, tta, features, on_done)

    def _collect(self, item, batch, size, conf, tta, features, on_error, on_done) -> Iterator[Detection]:
        """Add one decoded file to the batch (or report its error); run the batch when full."""
        path, future = item
        loaded = future.result()
        if isinstance(loaded, HybridCXRError):
            if on_error is None:
                raise loaded
            on_error(path, loaded)
            if on_done:
                on_done(1)
            return
        batch.append(loaded)
        if len(batch) == size:
            yield from self._flush(batch, conf, tta, features, on_done)

    def _flush(self, batch, conf, tta, features, on_done) -> Iterator[Detection]:
        results = self.run(batch, conf=conf, tta=tta, features=features)
        if on_done:
            on_done(len(batch))
        batch.clear()
        yield from results

    # -- helpers -------------------------------------------------------------------------------------
    def _to_original(self, det: np.ndarray, item: Prepared, flip: bool) -> np.ndarray:
        """(n, 6) [x1, y1, x2, y2, score, cls] from letterboxed to original pixels, clipped to the image."""
        if not len(det):
            return np.zeros((0, 6), np.float32)
        det = det.copy()
        left, top = item.pad
        det[:, [0, 2]] = (det[:, [0, 2]] - left) / item.scale
        det[:, [1, 3]] = (det[:, [1, 3]] - top) / item.scale
        width, height = item.radiograph.width, item.radiograph.height
        if flip:
            det[:, [0, 2]] = width - det[:, [2, 0]]
        det[:, [0, 2]] = det[:, [0, 2]].clip(0, width)
        det[:, [1, 3]] = det[:, [1, 3]].clip(0, height)
        keep = (det[:, 2] > det[:, 0]) & (det[:, 3] > det[:, 1])
        return det[keep]

    def _merge_tta(self, a: np.ndarray, b: np.ndarray, radiograph: Radiograph, conf: float) -> np.ndarray:
        """Fuse the original and flipped image's boxes with Weighted Boxes Fusion (per finding)."""
        from ensemble_boxes import weighted_boxes_fusion

        if not len(a) and not len(b):
            return a
        norm = np.array([radiograph.width, radiograph.height] * 2, np.float32)
        boxes, scores, labels = weighted_boxes_fusion(
            [a[:, :4] / norm, b[:, :4] / norm], [a[:, 4], b[:, 4]], [a[:, 5], b[:, 5]],
            iou_thr=self.config["tta_iou"], skip_box_thr=conf)
        merged = np.column_stack([np.clip(boxes, 0.0, 1.0) * norm, scores, labels]).astype(np.float32)
        merged[:, [0, 2]] = merged[:, [0, 2]].clip(0, radiograph.width)  # float32 rounding stays inside
        merged[:, [1, 3]] = merged[:, [1, 3]].clip(0, radiograph.height)
        return merged[merged[:, 4] >= conf]

    def _frame(self, image_id: str, det: np.ndarray) -> pd.DataFrame:
        """A prediction box table of one image, highest score first."""
        det = det[np.argsort(-det[:, 4], kind="stable")]
        numbers = det[:, [4, 0, 1, 2, 3]].astype(np.float64).T  # float64 columns as built: no astype copy after
        return pd.DataFrame({
            "image_id": image_id,
            "finding": np.array(self.findings, dtype=object)[det[:, 5].astype(int)],
            **dict(zip(PREDICTION_COLUMNS[2:], numbers)),
        }, columns=PREDICTION_COLUMNS)


__all__ = ["Detection", "Detector", "PREDICTION_COLUMNS", "Prepared", "letterbox"]
