"""Lung masks at the original pixel size from a trained segmenter.

The radiograph is resized to the network's square input and normalised as in training; the lung probability
is resized back to the original height and width (bilinear) before the threshold, so a 2500 x 3000 image gets
a 2500 x 3000 mask. The mask is then cleaned: holes filled and only the two largest connected regions kept
(specks outside the lungs are the network's noise, not anatomy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridcxr.config import LungsConfig, ensure_config
from hybridcxr.device import choose_device
from hybridcxr.errors import HybridCXRError
from hybridcxr.io.radiograph import Radiograph
from hybridcxr.lungs.card import load_network
from hybridcxr.lungs.data import resize
from hybridcxr.lungs.model import normalise


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """``mask`` with holes filled and only its two largest connected regions kept (bool)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count > 2:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.argsort(sizes)[-2:] + 1
        labels, count = ndimage.label(np.isin(labels, keep))
    filled = np.zeros(np.shape(mask), dtype=bool)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):  # per region, so the gap between
        if box is not None:                                               # the lungs is never "a hole"
            filled[box] |= fill_holes(labels[box] == index)
    return filled


def fill_holes(region: np.ndarray) -> np.ndarray:
    """``region`` with every background part that does not reach its border filled (bool).

    What ``scipy.ndimage.binary_fill_holes`` gives with its default 4-connected structure, by one labelling
    of the background instead of dilating it pixel by pixel from the border: 5 times faster on an 800 px lung mask.
    """
    from scipy import ndimage

    background, _ = ndimage.label(np.pad(~region, 1, constant_values=True))
    return (background != background[0, 0])[1:-1, 1:-1]


class Segmenter:
    """A loaded lung segmenter: :meth:`predict` gives a radiograph's lung mask at its own size."""

    def __init__(self, network, card: Mapping[str, Any], device: str, config: LungsConfig) -> None:
        self.network, self.card, self.device, self.config = network.to(device), dict(card), device, config
        self.imgsz: int = card["imgsz"]

    @classmethod
    def load(cls, run: str | Path, *, device: str | None = None,
             config: Mapping[str, Any] | None = None) -> Segmenter:
        """The segmenter of a run folder (or its card or weights); InputError for a bad or tampered run."""
        network, card = load_network(run)
        return cls(network, card, choose_device(device or "auto"), ensure_config("lungs", config))

    def probability(self, pixels: np.ndarray) -> np.ndarray:
        """Lung probability per original pixel, float32 in [0, 1], shape of ``pixels``."""
        import torch

        x = torch.from_numpy(normalise(resize(pixels.astype(np.float32), self.imgsz)))[None, None]
        with torch.no_grad():
            logits = self.network(x.to(self.device))
            logits = torch.nn.functional.interpolate(logits.float(), size=pixels.shape, mode="bilinear",
                                                     align_corners=False)
        return torch.sigmoid(logits)[0, 0].cpu().numpy()

    def predict(self, radiograph: Radiograph | np.ndarray) -> np.ndarray:
        """The cleaned boolean lung mask (both lungs), the radiograph's own height and width."""
        pixels = radiograph.pixels if isinstance(radiograph, Radiograph) else np.asarray(radiograph)
        return clean_mask(self.probability(pixels) > self.config.threshold)

    def predict_paths(self, paths: Sequence[Path], *, image_ids: Mapping[Path, str] | None = None,
                      on_error: Callable[[Path, Exception], None] | None = None,
                      on_done: Callable[..., None] | None = None,
                      allow_modality: bool = False) -> Iterator[tuple[Radiograph, np.ndarray]]:
        """``(radiograph, mask)`` for every readable file; a file that cannot be read goes to ``on_error``
        (or raises without one) and the batch goes on."""
        from hybridcxr.io import read_radiograph

        for path in paths:
            try:
                radiograph = read_radiograph(path, allow_modality=allow_modality)
                if image_ids is not None:
                    radiograph = radiograph.renamed(image_ids[path])
                mask = self.predict(radiograph)
            except (HybridCXRError, OSError) as err:
                if on_error is None:
                    raise
                on_error(path, err)
            else:
                yield radiograph, mask
            finally:
                if on_done is not None:
                    on_done()
