"""One entry point for every radiograph file: DICOM, PNG or JPEG, told apart by content, not extension."""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from typing import Literal

import numpy as np

from hybridcxr.errors import HybridCXRError, NotAnImageError
from hybridcxr.io.dicom import read_dicom, read_dicom_metadata
from hybridcxr.io.images import image_meta, read_image
from hybridcxr.io.radiograph import Radiograph, RadiographMeta

PathType = str | PathLike[str]
Format = Literal["dicom", "png", "jpeg"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def sniff_bytes(head: bytes) -> Format | None:
    """The format of a file from its first 132 bytes: 'DICM' at offset 128, PNG or JPEG magic; None otherwise.

    >>> sniff_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(10)), sniff_bytes(b"GIF89a")
    ('png', None)
    """
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    return None


def sniff_format(path: PathType) -> Format | None:
    """The file's format from its first bytes (:func:`sniff_bytes`); None otherwise.

    None may still be a DICOM without preamble (``read_radiograph`` tries that).

    Raises:
        NotAnImageError: the file is empty.
    """
    with open(path, "rb") as handle:
        head = handle.read(132)
    if not head:
        raise NotAnImageError(path, "the file is empty")
    return sniff_bytes(head)


def read_radiograph(path: PathType, *, allow_modality: bool | Iterable[str] = False) -> Radiograph:
    """Read a DICOM, PNG or JPEG radiograph into float32 [0, 1] pixels and its metadata.

    Args:
        path: the image file; its format is told from its content.
        allow_modality: DICOM only. True reads any Modality; a collection of codes (e.g. ``{"CT"}``) reads
            those besides the projection radiograph ones (CR, DX, RG, DR, OT, or none).

    Raises:
        NotAnImageError: not a DICOM, PNG or JPEG file, or a corrupt one (the message names the file).
        NoPixelDataError, MultiFrameError, UnsupportedModalityError: a DICOM that is not one radiograph.

    >>> rg = read_radiograph("00001369_000.png")  # doctest: +SKIP
    >>> rg.pixels.dtype, rg.pixels.ndim  # doctest: +SKIP
    (dtype('float32'), 2)
    """
    kind = sniff_format(path)
    try:
        if kind in ("png", "jpeg"):
            radiograph = read_image(path)
        else:
            radiograph = read_dicom(path, allow_modality=allow_modality, force=kind is None)
    except (HybridCXRError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except MemoryError as exc:
        raise NotAnImageError(path, "not enough memory to decode the image") from exc
    except Exception as exc:  # any decoder's own failure (cv2.error, ValueError, ...) is this file's problem
        raise NotAnImageError(path, f"cannot decode the image ({type(exc).__name__}: {str(exc)[:200]})") from exc
    return check_pixels(radiograph)


def check_pixels(radiograph: Radiograph) -> Radiograph:
    """The contract every reader keeps: a 2-D float32 array of finite values in [0, 1]; NotAnImageError else."""
    pixels, path = radiograph.pixels, radiograph.meta.path
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise NotAnImageError(path, f"decoded to shape {pixels.shape}, not one 2-D image")
    if pixels.dtype != np.float32 or not np.isfinite(pixels).all():
        raise NotAnImageError(path, "the decoded pixels hold NaN or infinite values")
    return radiograph


def read_metadata(path: PathType) -> RadiographMeta:
    """Header facts without decoding pixels; for PNG/JPEG only the path and image id are known.

    No Modality or body-part checks are made here: this reports, it does not judge.

    Raises:
        NotAnImageError: not a DICOM, PNG or JPEG file.
    """
    kind = sniff_format(path)
    if kind in ("png", "jpeg"):
        return image_meta(path)
    return read_dicom_metadata(path, force=kind is None)
