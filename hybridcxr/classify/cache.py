"""Per-image feature cache: the detector's pooled vector and the CNN embedding, computed once per image.

Training the fusion head, tuning it with Optuna and the evaluation's ablations all read the same cached
vectors, so none of them runs a CNN again. The cache is a folder::

    meta.json                 fingerprints of the detector and the backbone that made the vectors
    index.csv                 image_id, chunk
    chunk_00000.safetensors   {"yolo": (n, 704), "cnn": (n, 512)} for the ids of that chunk, in order

Chunks are written atomically, so a killed run resumes with the images not yet cached. A cache made by other
models is refused (never silently mixed): :class:`StaleCacheError` says which fingerprint differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hybridcxr.errors import InputError
from hybridcxr.files import atomic_path, read_json_or_none, write_csv, write_json
from hybridcxr.progress import progress_bar

if TYPE_CHECKING:
    from hybridcxr.classify.backbone import Backbone
    from hybridcxr.detect.predict import Detector

CHUNK = 128
GROUP_NAMES = ("yolo", "cnn")


class StaleCacheError(InputError):
    """A feature cache made by another detector or backbone than the ones in use."""


def detector_fingerprint(detector: Detector) -> str:
    """sha256 (16 hex) of the detector's tensors and image size: a retrained detector gets a new one."""
    digest = hashlib.sha256(str(detector.imgsz).encode())
    for name, tensor in sorted(detector.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprints(detector: Detector, backbone: Backbone) -> dict[str, str]:
    """What makes cached vectors valid: the two models' fingerprints."""
    return {"detector": detector_fingerprint(detector), "backbone": backbone.fingerprint()}


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
        if meta is None:
            write_json(self.folder / "meta.json", {"fingerprints": fingerprint, "groups": list(GROUP_NAMES)})
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

    def add(self, image_ids: Sequence[str], yolo: np.ndarray, cnn: np.ndarray) -> None:
        """Store one chunk of vectors (atomically), then record it in the index."""
        from safetensors.numpy import save_file

        chunk = int(self.index["chunk"].max()) + 1 if len(self.index) else 0
        with atomic_path(self._chunk_path(chunk)) as tmp:
            save_file({"yolo": np.ascontiguousarray(yolo, np.float32), "cnn": np.ascontiguousarray(cnn, np.float32)},
                      str(tmp), metadata={"image_ids": json.dumps(list(image_ids))})
        rows = pd.DataFrame({"image_id": list(image_ids), "chunk": chunk})
        self.index = pd.concat([self.index, rows], ignore_index=True)
        write_csv(self.folder / "index.csv", self.index)

    def load(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """``{"yolo": (N, d), "cnn": (N, d)}`` for ``image_ids`` in that order; raises for ids not cached."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        where = self.index.drop_duplicates("image_id", keep="last").set_index("image_id")["chunk"]
        missing = [i for i in image_ids if i not in where.index]
        if missing:
            raise InputError(self.folder, f"{len(missing)} images are not in the feature cache, e.g. {missing[0]}")
        out = {g: [] for g in GROUP_NAMES}
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
            for g in GROUP_NAMES:
                out[g].append(arrays[g][position[image_id]])
        return {g: np.stack(v).astype(np.float32) for g, v in out.items()}


def build_cache(
    folder: str | Path, paths: Sequence[str | Path], image_ids: Sequence[str], detector: Detector,
    backbone: Backbone, *, batch_size: int = 32, progress: bool = True,
    on_done: Callable[[int], None] | None = None,
) -> FeatureCache:
    """Compute the vectors of every image not yet cached (one decode each), chunk by chunk; return the cache."""
    from hybridcxr.classify.backbone import embed

    cache = FeatureCache(folder, fingerprints(detector, backbone))
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
            cnn = embed(backbone, pixels, batch_size=batch_size, device=device)
            cache.add(ids, np.stack(yolo), cnn)
            advance(len(part))
            if on_done:
                on_done(len(part))
    return cache
