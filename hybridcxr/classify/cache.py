"""Per-image feature cache: the detector's pooled vector, the CNN embedding and (with a lung model) the lung-field
measurements, computed once per image.

Training the fusion head, tuning it with Optuna and the evaluation's ablations all read the same cached
vectors, so none of them runs a CNN again. The cache is a folder::

    meta.json                 fingerprints of the models that made the vectors (detector, backbone; lung
                              segmenter and crop when used) and the groups cached
    index.csv                 image_id, chunk
    chunk_00000.safetensors   {"yolo": (n, 704), "cnn": (n, 512)[, "lungs": (n, 24)]} for the ids of that chunk

    views/                    with ``augment_views >= 1`` only: the training images' augmented views
                              (:mod:`hybridcxr.classify.augment`), a cache of the same layout whose ids are
                              ``IMAGE~augV`` and whose fingerprints add the augmentation settings

Chunks are written atomically, so a killed run resumes with the images not yet cached. A cache made by other
models (or, for views, another augmentation) is refused (never silently mixed): :class:`StaleCacheError` says
which fingerprint differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hybridcxr.errors import InputError
from hybridcxr.files import atomic_path, read_json_or_none, write_csv, write_json
from hybridcxr.progress import progress_bar

if TYPE_CHECKING:
    from hybridcxr.classify.backbone import Backbone
    from hybridcxr.detect.predict import Detector
    from hybridcxr.lungs.predict import Segmenter

CHUNK = 128
GROUP_NAMES = ("yolo", "cnn", "lungs")


class StaleCacheError(InputError):
    """A feature cache made by another detector or backbone than the ones in use."""


def detector_fingerprint(detector: Detector) -> str:
    """sha256 (16 hex) of the detector's tensors and image size: a retrained detector gets a new one."""
    digest = hashlib.sha256(str(detector.imgsz).encode())
    for name, tensor in sorted(detector.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprints(detector: Detector, backbone: Backbone, lungs: LungSide | None = None) -> dict[str, str]:
    """What makes cached vectors valid: the models' fingerprints (and, with a lung model, what the CNN saw)."""
    out = {"detector": detector_fingerprint(detector), "backbone": backbone.fingerprint()}
    if lungs is not None:
        out |= {"lungs": lungs.fingerprint, "crop": lungs.crop_label}
    return out


@dataclass(frozen=True)
class LungSide:
    """The lung model of a feature cache and whether the CNN sees the lung-field crop (``margin`` wide)."""

    segmenter: Segmenter
    fingerprint: str
    crop: bool = False
    margin: float = 0.05

    @classmethod
    def load(cls, run: str | Path, *, crop: bool, margin: float, device: str | None = None) -> LungSide:
        """The lung segmenter of a lung run folder (``lungs.json`` + ``lungs.safetensors``), checked on load."""
        from hybridcxr.lungs.features import segmenter_fingerprint
        from hybridcxr.lungs.predict import Segmenter

        return cls(Segmenter.load(run, device=device), segmenter_fingerprint(run), bool(crop), float(margin))

    def card(self) -> dict[str, object]:
        """What a classifier card records of its lung model."""
        from hybridcxr.lungs.features import LUNG_FEATURES

        return {"fingerprint": self.fingerprint, "crop": self.crop, "margin": self.margin,
                "imgsz": self.segmenter.imgsz, "features": list(LUNG_FEATURES)}

    @property
    def crop_label(self) -> str:
        return f"lungs+{self.margin:g}" if self.crop else "none"

    def inputs(self, pixels: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], list]:
        """``(lungs vectors, pixels the CNN sees, measurements)`` of these images (one segmentation each)."""
        from hybridcxr.lungs.features import lung_inputs

        return lung_inputs(self.segmenter, pixels, crop=self.crop, margin=self.margin)


def run_lung_side(folder: Path, info: Mapping[str, Any] | None, device: str | None = None) -> LungSide | None:
    """The lung side a classifier run was trained with (``info``: its card's ``lungs`` entry; ``folder``: the
    run's copy of the lung model), or None; InputError when the copy is not the model the head was trained with."""
    if not info:
        return None
    side = LungSide.load(folder, crop=bool(info["crop"]), margin=float(info["margin"]), device=device)
    if side.fingerprint != info.get("fingerprint"):
        raise InputError(folder, "the lung model differs from the one the head was trained with")
    return side


class FeatureCache:
    """Read and extend a cache folder (see the module doc)."""

    def __init__(self, folder: str | Path, fingerprint: dict[str, str]) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        meta = read_json_or_none(self.folder / "meta.json")
        if meta is not None and meta.get("fingerprints") != fingerprint:
            differs = [k for k in fingerprint if meta.get("fingerprints", {}).get(k) != fingerprint[k]]
            raise StaleCacheError(self.folder, f"feature cache was made by another {' and '.join(differs)}; "
                                               "delete the folder (or choose another cache) to recompute it")
        self.groups = tuple(g for g in GROUP_NAMES if g != "lungs" or "lungs" in fingerprint)
        if meta is None:
            write_json(self.folder / "meta.json", {"fingerprints": fingerprint, "groups": list(self.groups)})
        index = self.folder / "index.csv"
        self.index = (pd.read_csv(index, dtype={"image_id": str}) if index.is_file()
                      else pd.DataFrame({"image_id": pd.Series(dtype=str), "chunk": pd.Series(dtype=int)}))
        present = np.array([self._chunk_path(int(c)).is_file() for c in self.index["chunk"]], dtype=bool)
        self.index = self.index[present].reset_index(drop=True)  # rows of a chunk lost to a kill are redone

    def _chunk_path(self, chunk: int) -> Path:
        return self.folder / f"chunk_{chunk:05d}.safetensors"

    @property
    def ids(self) -> set[str]:
        return set(self.index["image_id"])

    def add(self, image_ids: Sequence[str], arrays: Mapping[str, np.ndarray]) -> None:
        """Store one chunk of vectors (``{group: (n, d)}``, every group of the cache; atomically), then index it."""
        from safetensors.numpy import save_file

        if set(arrays) != set(self.groups):
            raise ValueError(f"a chunk of this cache holds {', '.join(self.groups)}, got {', '.join(arrays)}")
        chunk = int(self.index["chunk"].max()) + 1 if len(self.index) else 0
        with atomic_path(self._chunk_path(chunk)) as tmp:
            save_file({g: np.ascontiguousarray(arrays[g], np.float32) for g in self.groups},
                      str(tmp), metadata={"image_ids": json.dumps(list(image_ids))})
        rows = pd.DataFrame({"image_id": list(image_ids), "chunk": chunk})
        self.index = pd.concat([self.index, rows], ignore_index=True)
        write_csv(self.folder / "index.csv", self.index)

    def load(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """``{group: (N, d)}`` for ``image_ids`` in that order; raises for ids not cached."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        where = self.index.drop_duplicates("image_id", keep="last").set_index("image_id")["chunk"]
        missing = [i for i in image_ids if i not in where.index]
        if missing:
            raise InputError(self.folder, f"{len(missing)} images are not in the feature cache, e.g. {missing[0]}")
        out: dict[str, list[np.ndarray]] = {g: [] for g in self.groups}
        rows: dict[int, tuple[dict[str, np.ndarray], dict[str, int]]] = {}
        for image_id in image_ids:
            chunk = int(where[image_id])
            if chunk not in rows:
                path = self._chunk_path(chunk)
                arrays = load_file(str(path))
                with safe_open(str(path), "np") as handle:
                    ids = json.loads(handle.metadata()["image_ids"])
                rows[chunk] = (arrays, {i: k for k, i in enumerate(ids)})
            arrays, position = rows[chunk]
            for g in self.groups:
                out[g].append(arrays[g][position[image_id]])
        return {g: np.stack(v).astype(np.float32) for g, v in out.items()}


def build_cache(
    folder: str | Path, paths: Sequence[str | Path], image_ids: Sequence[str], detector: Detector,
    backbone: Backbone, *, batch_size: int = 32, progress: bool = True,
    on_done: Callable[[int], None] | None = None, lungs: LungSide | None = None,
) -> FeatureCache:
    """Compute the vectors of every image not yet cached (one decode each), chunk by chunk; return the cache.

    With ``lungs``, each image is also segmented once: its lung-field measurements become the ``lungs`` group,
    and with ``lungs.crop`` the CNN embeds the lung-field box instead of the whole image.
    """
    cache = FeatureCache(folder, fingerprints(detector, backbone, lungs))
    done = cache.ids
    todo = [(str(p), i) for p, i in zip(paths, image_ids) if i not in done]
    device = detector.device
    with progress_bar(len(todo), "caching features", progress) as advance:
        for start in range(0, len(todo), CHUNK):
            part = todo[start:start + CHUNK]
            by_path = {p: i for p, i in part}
            ids, yolo, pixels = [], [], []
            for detection in detector.predict_paths([p for p, _ in part], features=True):
                ids.append(by_path[detection.radiograph.meta.path])
                yolo.append(detection.features)
                pixels.append(detection.radiograph.pixels)
            cache.add(ids, _vectors(yolo, pixels, backbone, lungs, batch_size, device))
            advance(len(part))
            if on_done:
                on_done(len(part))
    return cache


def _vectors(yolo: Sequence[np.ndarray], pixels: list[np.ndarray], backbone: Backbone, lungs: LungSide | None,
             batch_size: int, device: str) -> dict[str, np.ndarray]:
    """One chunk's groups: the detector's pooled vectors, the lung measurements (and crop), the CNN embedding."""
    from hybridcxr.classify.backbone import embed

    arrays = {"yolo": np.stack(yolo)}
    if lungs is not None:
        arrays["lungs"], pixels, _ = lungs.inputs(pixels)
    arrays["cnn"] = embed(backbone, pixels, batch_size=batch_size, device=device)
    return arrays


def view_cache(cache: FeatureCache, augmentation: str) -> FeatureCache:
    """The augmented views' cache of ``cache`` (its ``views/`` folder): the same models' fingerprints plus the
    augmentation settings (``augmentation``: :func:`hybridcxr.classify.augment.settings_key`)."""
    return FeatureCache(cache.folder / "views", {**cache.fingerprint, "augmentation": augmentation})


def build_views(
    views: FeatureCache, paths: Sequence[str | Path], image_ids: Sequence[str], counts: Sequence[int],
    augment: Callable[[np.ndarray, int, int], np.ndarray], detector: Detector, backbone: Backbone, *,
    lungs: LungSide | None = None, batch_size: int = 32, progress: bool = True,
) -> FeatureCache:
    """Cache views ``1..counts[i]`` of each image not yet cached: the image decoded as :func:`build_cache` does,
    augmented (``augment(pixels, view, image_index(id))``), and every group computed from the augmented pixels
    by the same models (detector pooled vector, lung measurements and crop, CNN embedding)."""
    from hybridcxr.classify.augment import image_index, view_id
    from hybridcxr.io import read_radiograph

    done = views.ids
    todo = [(str(p), i, v) for p, i, n in zip(paths, image_ids, counts) for v in range(1, int(n) + 1)
            if view_id(i, v) not in done]
    with progress_bar(len(todo), "caching augmented views", progress) as advance:
        for start in range(0, len(todo), CHUNK):
            part = todo[start:start + CHUNK]
            decoded = {p: read_radiograph(p) for p in dict.fromkeys(p for p, _, _ in part)}
            radiographs = [replace(decoded[p], pixels=augment(decoded[p].pixels, v, image_index(i)))
                           for p, i, v in part]
            yolo = [d.features for d in detector.predict(radiographs, features=True)]
            pixels = [r.pixels for r in radiographs]
            views.add([view_id(i, v) for _, i, v in part],
                      _vectors(yolo, pixels, backbone, lungs, batch_size, detector.device))
            advance(len(part))
    return views
