"""The Radiograph contract: what every reader returns and every model consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

Sex = Literal["M", "F"]


@dataclass(frozen=True)
class RadiographMeta:
    """Header facts of one radiograph; no names or birth dates are ever kept.

    ``age_years`` is None where the header is empty or garbage; ``sex`` is "M", "F" or None.
    ``pixel_spacing`` is (row, column) spacing in mm where known.
    """

    path: str
    image_id: str
    age_years: float | None = None
    sex: Sex | None = None
    view: str | None = None
    pixel_spacing: tuple[float, float] | None = None
    modality: str | None = None
    body_part: str | None = None
    photometric: str | None = None
    bits_stored: int | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph: float32 pixels in [0, 1] (0 = black, after rescale, window and MONOCHROME1
    inversion) in the original pixel frame, with its metadata."""

    pixels: np.ndarray
    meta: RadiographMeta

    @property
    def image_id(self) -> str:
        return self.meta.image_id

    def renamed(self, image_id: str) -> Radiograph:
        """The same radiograph under another image id (a batch's unique id for same-named files)."""
        return replace(self, meta=replace(self.meta, image_id=image_id))

    @property
    def path(self) -> Path:
        return Path(self.meta.path)

    @property
    def age_years(self) -> float | None:
        return self.meta.age_years

    @property
    def sex(self) -> Sex | None:
        return self.meta.sex

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def image_id_of(path: str | Path) -> str:
    """The image id of a file: its name without the (last) extension, as VinDr and NIH ids are."""
    return Path(path).stem
