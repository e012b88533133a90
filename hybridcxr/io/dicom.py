"""DICOM projection radiographs into float32 [0, 1] pixels and header metadata.

Decoding is pydicom's, with the pylibjpeg plugins (JPEG baseline/extended/lossless, JPEG 2000, HTJ2K, RLE)
and pyjpegls (JPEG-LS). The grey-scale pipeline follows PS3.3 C.11: Modality LUT or Rescale Slope/Intercept,
then VOI LUT Sequence, else Window Center/Width (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID), else the
data's own min..max; the result is scaled to [0, 1] and MONOCHROME1 is inverted last, so 0 is always black.
The window is hand-applied (three formulas of the standard) because pydicom's ``apply_windowing`` maps to the
stored bit range, not to [0, 1], and works in float64.

Patient names and birth dates are never read into the metadata.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from os import PathLike
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from hybridcxr.errors import (
    MultiFrameError,
    NoPixelDataError,
    NotAnImageError,
    RadiographWarning,
    TooManyPixelsError,
    UnsupportedModalityError,
    guarded_warnings,
)
from hybridcxr.io.demographics import parse_age, parse_sex, parse_view
from hybridcxr.io.radiograph import Radiograph, RadiographMeta, image_id_of

PathType = str | PathLike[str]

PROJECTION_MODALITIES: frozenset[str] = frozenset({"CR", "DX", "RG", "DR", "OT"})
"""Modalities read without ``allow_modality``: computed (CR) and digital (DX) radiography, conventional
radiographic imaging (RG), the non-standard "DR" some vendors write, and "OT" (other), which Secondary
Capture wrappers of radiographs use. A missing or empty Modality is accepted too (Secondary Captures)."""

CHEST_BODY_PARTS: frozenset[str] = frozenset({"CHEST", "THORAX", "TORAX", "TORACE", "LUNG", "LUNGS", "CXR"})
"""Words of BodyPartExamined that mean chest (``CHEST_LAT``, ``PORTABLE CHEST`` match by word)."""

_VIEW_WORDS = frozenset({"PA", "AP", "LL", "RL", "LAT", "LATERAL"})
DEFAULT_MAX_PIXELS = 64_000_000
_HEADER_KEYWORDS = ("SOPClassUID", "Rows", "Columns", "Modality", "PatientID", "StudyInstanceUID")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_WINDOW_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})


# --------------------------------------------------------------------------------------------- reading
def load_dataset(path: PathType, *, header_only: bool = False, force: bool = False) -> Dataset:
    """Read a DICOM file; ``force`` tries files without the 128-byte preamble and 'DICM' marker.

    Raises:
        NotAnImageError: the file is not DICOM (or, with ``force``, does not look like an image object).
    """
    try:
        with guarded_warnings("always", record=True) as caught:
            ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=force)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        problem = "not a DICOM, PNG or JPEG file" if force else f"not a readable DICOM file ({exc})"
        raise NotAnImageError(path, problem) from exc
    if force:  # a forced read of a non-DICOM file warns about nonsense: judge the result first
        _check_forced(ds, path)
    _check_complete(ds, path, caught)
    return ds


def _check_complete(ds: Dataset, path: PathType, caught: list[warnings.WarningMessage]) -> None:
    """Turn pydicom's "end of file" warning (it silently drops a cut-off element) into an error."""
    for record in caught:
        if "end of file" in str(record.message).lower():
            raise NotAnImageError(path, f"the file is truncated ({record.message})")
        warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
    if len(ds) == 0:
        raise NotAnImageError(path, "the DICOM file holds no data elements (truncated or empty)")


def _check_forced(ds: Dataset, path: PathType) -> None:
    """Reject a forced read that parsed noise; give a preamble-less file the syntax it was read in."""
    looks_like_image = any(k in ds for k in ("SOPClassUID", "Rows", "Modality", *_PIXEL_KEYWORDS))
    if not looks_like_image:
        raise NotAnImageError(path, "not a DICOM, PNG or JPEG file")
    file_meta = ds.file_meta  # pydicom gives preamble-less files an empty one
    if "TransferSyntaxUID" not in file_meta:
        implicit, little = ds.original_encoding
        file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )


def read_dicom(
    path: PathType, *, allow_modality: bool | Iterable[str] = False, force: bool = False
) -> Radiograph:
    """Decode one single-frame DICOM projection radiograph into a :class:`Radiograph`.

    Args:
        path: the DICOM file.
        allow_modality: True to read any Modality, or extra Modality codes to accept besides
            :data:`PROJECTION_MODALITIES`.
        force: read a file without the DICOM preamble (used by content sniffing).

    Raises:
        NoPixelDataError: no Pixel Data.
        UnsupportedModalityError: Modality is not a projection radiograph and not allowed.
        MultiFrameError: more than one frame.
        NotAnImageError: not DICOM, or the pixel data cannot be decoded (missing codec, truncated).
    """
    ds = load_dataset(path, force=force)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise NoPixelDataError(path, "the DICOM has no Pixel Data (header-only, report or presentation)")
    check_modality(ds, path, allow_modality)
    frames = _int(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise MultiFrameError(path, f"the DICOM has {frames} frames; a projection radiograph has one")
    check_body_part(ds, path)
    meta = dicom_meta(ds, path)
    return Radiograph(pixels=decode_pixels(ds, path), meta=meta)


def read_header(path: PathType, tags: Sequence[str] | None = None, *, force: bool = True) -> Dataset:
    """The header of a DICOM without its pixels, only ``tags`` where given (fast: the rest is skipped).

    The one way hybridcxr reads a header for a fact (size, Patient ID) beside :func:`load_dataset`. ``force``
    (the default) also reads preamble-less files. Raises NotAnImageError naming the file when it is not DICOM.
    """
    try:
        with guarded_warnings("ignore"):
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=force,
                                 specific_tags=list(tags) if tags is not None else None)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise NotAnImageError(path, f"not a readable DICOM header ({type(exc).__name__})") from exc
    has_meta = "TransferSyntaxUID" in getattr(ds, "file_meta", {})
    if force and not has_meta and not any(k in ds for k in _HEADER_KEYWORDS):
        raise NotAnImageError(path, "not a DICOM file (no DICOM preamble and no image header elements)")
    return ds


def header_text(ds: Dataset, keyword: str) -> str | None:
    """A header value as stripped text, None where absent or empty."""
    return _text(ds, keyword)


def read_dicom_metadata(path: PathType, *, force: bool = False) -> RadiographMeta:
    """Header facts of a DICOM without touching its pixel data (``stop_before_pixels``)."""
    return dicom_meta(load_dataset(path, header_only=True, force=force), path)


# ------------------------------------------------------------------------------------------- checks
def check_modality(ds: Dataset, path: PathType, allow: bool | Iterable[str] = False) -> None:
    """Raise :class:`UnsupportedModalityError` unless Modality is a projection radiograph or allowed."""
    modality = (_text(ds, "Modality") or "").upper()
    if not modality or modality in PROJECTION_MODALITIES or allow is True:
        return
    if allow is not False:
        allowed = {allow} if isinstance(allow, str) else set(allow)
        if modality in {str(m).strip().upper() for m in allowed}:
            return
    raise UnsupportedModalityError(
        path,
        f"Modality {modality} is not a projection radiograph; "
        "pass allow_modality=True (CLI --allow-modality) to read it anyway",
    )


def check_body_part(ds: Dataset, path: PathType) -> None:
    """Warn (:class:`RadiographWarning`) where BodyPartExamined is present and not the chest."""
    part = _text(ds, "BodyPartExamined")
    if part is None or set(re.split(r"[^A-Z]+", part.upper())) & CHEST_BODY_PARTS:
        return
    warnings.warn(
        RadiographWarning(f"{path}: BodyPartExamined is {part!r}, not chest; reading it anyway"),
        stacklevel=4,
    )


# ----------------------------------------------------------------------------------------- metadata
def dicom_meta(ds: Dataset, path: PathType) -> RadiographMeta:
    """The :class:`RadiographMeta` of a read dataset (never names or birth dates)."""
    named = {
        "transfer_syntax": _uid_name(_transfer_syntax(ds)),
        "sop_class": _uid_name(_text(ds, "SOPClassUID")),
    }
    extra = {key: value for key, value in named.items() if value}
    return RadiographMeta(
        path=str(path),
        image_id=image_id_of(path),
        age_years=parse_age(_raw(ds, "PatientAge"), source=str(path)),
        sex=parse_sex(_raw(ds, "PatientSex")),
        view=_view(ds),
        pixel_spacing=_spacing(ds),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        photometric=_text(ds, "PhotometricInterpretation"),
        bits_stored=_int(ds, "BitsStored"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        extra=extra,
    )


def _view(ds: Dataset) -> str | None:
    """ViewPosition; else PatientPosition where it holds a view code (as NIH's DICOM wrappers write it)."""
    view = parse_view(_text(ds, "ViewPosition"))
    if view is None:
        position = parse_view(_text(ds, "PatientPosition"))
        view = position if position in _VIEW_WORDS else None
    return view


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _safe_get(ds, keyword)
        try:
            row, col = (float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return (row, col)
    return None


def _safe_get(ds: Dataset, keyword: str) -> Any:
    """A converted value, or None where it is absent or its encoding is broken."""
    try:
        return ds.get(keyword)
    except Exception:  # a malformed element must not stop the read
        return None


def _raw(ds: Dataset, keyword: str) -> Any:
    """The value as stored (bytes for unconverted elements), skipping pydicom's VR validation warnings."""
    elem = ds.get_item(keyword)
    return None if elem is None else elem.value


def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple, MultiValue)):
        return value[0] if len(value) else None
    return value


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _first(_safe_get(ds, keyword))
    text = "" if value is None else str(value).strip()
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(_first(_safe_get(ds, keyword)))
    except (TypeError, ValueError):
        return None


def _float(ds: Dataset, keyword: str) -> float | None:
    try:
        return float(_first(_safe_get(ds, keyword)))
    except (TypeError, ValueError):
        return None


def _transfer_syntax(ds: Dataset) -> Any:
    file_meta = getattr(ds, "file_meta", None)
    return None if file_meta is None else file_meta.get("TransferSyntaxUID")


def _uid_name(uid: Any) -> str | None:
    """A UID's registered name ("JPEG Baseline (Process 1)"), else the UID itself."""
    if not uid:
        return None
    return str(getattr(UID(str(uid)), "name", "") or uid)


# ------------------------------------------------------------------------------------------- pixels
def decode_pixels(ds: Dataset, path: PathType) -> np.ndarray:
    """Pixel data as a 2-D float32 array in [0, 1], 0 = black (see the module docstring for the steps).

    Raises:
        NotAnImageError: the pixel data cannot be decoded (missing codec, truncated data).
    """
    check_pixel_count(_int(ds, "Columns") or 0, _int(ds, "Rows") or 0, path)
    _check_finite_header(ds, path)
    arr = _decode(ds, path)
    photometric = (_text(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
    _check_shape(arr, ds, path, photometric)
    _warn_if_wrapped(arr, ds, path)
    if photometric == "PALETTE COLOR" or arr.ndim == 3:
        try:
            out = _colour_to_grey(arr, ds, photometric)
        except (ValueError, KeyError, AttributeError, TypeError) as exc:  # e.g. no palette colour table
            raise NotAnImageError(path, f"cannot convert {photometric} pixels to grey ({exc})") from exc
    else:
        out = _voi(_modality(arr, ds), ds, path)  # float32, owned: later steps work in place
        if photometric == "MONOCHROME1":
            np.subtract(1.0, out, out=out)
    return out  # finite values are checked once for every reader, in read.check_pixels


def _check_shape(arr: np.ndarray, ds: Dataset, path: PathType, photometric: str) -> None:
    """The decoded array must be what Rows, Columns and Samples per Pixel say: one grey or colour image."""
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    samples = _int(ds, "SamplesPerPixel") or 1
    want = (rows, columns) if samples == 1 else (rows, columns, samples)
    if photometric == "PALETTE COLOR" and samples != 1:
        want = (rows, columns)
    if arr.shape != want:
        raise NotAnImageError(path, f"pixel data decodes to shape {arr.shape}, but Rows x Columns x Samples per "
                                    f"Pixel say {want}: a single 2-D image is expected")


def _warn_if_wrapped(arr: np.ndarray, ds: Dataset, path: PathType) -> None:
    """Warn where "signed" pixels span both ends of their range: the signature of unsigned data whose header
    says Pixel Representation 1 (the image would show bright bone as black)."""
    if _int(ds, "PixelRepresentation") != 1 or arr.dtype.kind != "i" or arr.ndim != 2:
        return
    bits = _int(ds, "BitsStored") or arr.dtype.itemsize * 8
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    near = max(1, (high - low) // 20)
    if int(arr.min()) < low + near and int(arr.max()) > high - near:
        warnings.warn(RadiographWarning(f"{path}: pixel values fill both ends of the signed range: the data may be "
                                        "unsigned although Pixel Representation says signed (1)"), stacklevel=4)


def _check_finite_header(ds: Dataset, path: PathType) -> None:
    """Refuse NaN or infinite rescale and window values: they would turn every pixel into NaN."""
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        value = _float(ds, keyword)
        if value is not None and not math.isfinite(value):
            raise NotAnImageError(path, f"{keyword} is {value}: not a finite number")


def max_pixels() -> int:
    """The largest image (width x height) hybridcxr decodes: ``$HYBRIDCXR_MAX_PIXELS``, default 64 Mpx.

    A 14,000 x 14,000 PNG of 186 KB would otherwise take gigabytes; raise it (CLI ``--max-pixels``) for
    stitched long-length images.
    """
    value = os.environ.get("HYBRIDCXR_MAX_PIXELS", "")
    try:
        return int(float(value)) if value.strip() else DEFAULT_MAX_PIXELS
    except ValueError:
        return DEFAULT_MAX_PIXELS


def check_pixel_count(width: int, height: int, path: PathType) -> None:
    """Raise :class:`TooManyPixelsError` (before decoding) where ``width x height`` exceeds :func:`max_pixels`."""
    limit = max_pixels()
    if width * height > limit:
        raise TooManyPixelsError(path, f"the image claims {width} x {height} pixels, more than the limit of "
                                       f"{limit:,} (raise it with --max-pixels or HYBRIDCXR_MAX_PIXELS)")


def _decode(ds: Dataset, path: PathType) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # codec missing, truncated or corrupt stream: all mean "cannot decode"
        tsyntax = _uid_name(_transfer_syntax(ds)) or "unknown transfer syntax"
        raise NotAnImageError(path, f"cannot decode the pixel data ({tsyntax}): {exc}") from exc


def _colour_to_grey(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """RGB (pydicom already converts YBR to RGB) or palette colour to luminance (ITU-R 601), in [0, 1].

    Colour images are presentation-ready, so no LUT or window applies; values are scaled by the bit depth.
    """
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        top = float(np.iinfo(arr.dtype).max)
    else:
        top = float(2 ** (_int(ds, "BitsStored") or 8) - 1)
    grey = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey /= top
    return np.clip(grey, 0.0, 1.0, out=grey)


def _modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT Sequence (pydicom), else Rescale Slope/Intercept; a new float32 array either way.

    The rescale is done here in float32 (pydicom's works in float64: twice the memory for no gain).
    """
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(arr, ds).astype(np.float32)
    out = arr.astype(np.float32)
    slope = _float(ds, "RescaleSlope")
    intercept = _float(ds, "RescaleIntercept")
    if slope is not None and slope not in (0.0, 1.0):
        out *= slope
    if intercept:
        out += intercept
    return out


def _voi(values: np.ndarray, ds: Dataset, path: PathType) -> np.ndarray:
    """VOI LUT Sequence, else window, else min..max, into float32 [0, 1]; may overwrite ``values``."""
    if ds.get("VOILUTSequence"):
        try:
            return _voi_lut(values, ds)
        except Exception as exc:  # a broken LUT falls back to the window, as viewers do
            warning = RadiographWarning(f"{path}: VOI LUT unusable ({exc}); using the window")
            warnings.warn(warning, stacklevel=5)
    window = _window(ds, path)
    if window is not None:
        return _window_in_place(values, *window)
    return _min_max_in_place(values)


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """First VOI LUT of the sequence, its output scaled to [0, 1] by the LUT Descriptor's bit depth."""
    entries, first, bits = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    entries = entries or 2**16
    # pydicom parses the LUT data (US/OW, endianness); looking up its own inputs yields the table itself
    table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds).astype(np.float32)
    top = float(2**bits - 1)
    if table.max() > top:  # descriptor understates the depth (seen in the wild): use the data's depth
        top = float(2 ** int(table.max()).bit_length() - 1)
    table /= top
    index = np.rint(values).astype(np.int64)
    index -= first
    np.clip(index, 0, entries - 1, out=index)
    return table[index]


def _window(ds: Dataset, path: PathType) -> tuple[float, float, str] | None:
    """(center, width, function) of the first window, or None where absent or unusable."""
    center, width = _float(ds, "WindowCenter"), _float(ds, "WindowWidth")
    if center is None or width is None:
        return None
    function = (_text(ds, "VOILUTFunction") or "LINEAR").upper()
    if function not in _WINDOW_FUNCTIONS:
        function = "LINEAR"
    if width <= 0 or (function == "LINEAR" and width < 1):
        warnings.warn(
            RadiographWarning(f"{path}: Window Width {width:g} is invalid; using the full data range"),
            stacklevel=6,
        )
        return None
    return center, width, function


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window ``values`` into float32 [0, 1] by PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID).

    LINEAR maps ``[c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2]`` onto [0, 1], i.e. ``[c - w/2, c + w/2]`` to
    within one stored unit, and clips.

    >>> apply_window(np.array([0, 50, 100]), center=50, width=100, function="LINEAR_EXACT").tolist()
    [0.0, 0.5, 1.0]
    """
    return _window_in_place(values.astype(np.float32), center, width, function)


def _window_in_place(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    if function == "SIGMOID":
        x -= center
        x *= -4.0 / width
        with np.errstate(over="ignore"):  # exp overflows to inf far below the center: 1/inf is 0
            np.exp(x, out=x)
        x += 1.0
        np.reciprocal(x, out=x)
        return x
    if function == "LINEAR_EXACT":
        x -= center
        x /= width
    elif width > 1:
        x -= center - 0.5
        x /= width - 1
    else:  # width 1: a threshold at the center
        return (x > center - 0.5).astype(np.float32)
    x += 0.5
    return np.clip(x, 0.0, 1.0, out=x)


def _min_max_in_place(x: np.ndarray) -> np.ndarray:
    """The data's own range onto [0, 1] (no window in the header); a constant image becomes 0."""
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        x.fill(0.0)
        return x
    x -= lo
    x /= hi - lo
    return np.clip(x, 0.0, 1.0, out=x)
