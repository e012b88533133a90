"""PNG and JPEG radiographs (NIH, TBX11K, published figures) into float32 [0, 1] pixels via Pillow.

Values are scaled by the bit depth of the format (8 bit / 255, 16 bit / 65535), never by the image's own
maximum, so one grey level means the same in every file. Colour is reduced to luminance (ITU-R 601-2, as
Pillow's "L" conversion); an alpha channel is dropped, not composited: radiographs saved as RGBA are
opaque, and compositing on black would darken any that are not. Pixels stay in the stored orientation
(EXIF rotation is not applied) so boxes drawn on the stored pixels stay valid.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
from PIL import Image

from hybridcxr.errors import NotAnImageError, TooManyPixelsError
from hybridcxr.io.radiograph import Radiograph, RadiographMeta, image_id_of

PathType = str | PathLike[str]

_FORMATS = ("PNG", "JPEG", "MPO")  # MPO: multi-picture JPEGs some cameras write; frame 0 is the image
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})  # "I": 16-bit grey PNG, older Pillow
_GREY_CONVERTIBLE = frozenset({"L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX"})


def image_meta(path: PathType) -> RadiographMeta:
    """Metadata of a PNG/JPEG: only the path and image id are known."""
    return RadiographMeta(path=str(path), image_id=image_id_of(path))


def read_image(path: PathType) -> Radiograph:
    """Decode a PNG or JPEG radiograph.

    Raises:
        NotAnImageError: not a PNG/JPEG Pillow can decode, or a corrupt or truncated one.
    """
    return Radiograph(pixels=decode_image(path), meta=image_meta(path))


def decode_image(path: PathType) -> np.ndarray:
    """A PNG/JPEG as a 2-D float32 array in [0, 1] (see the module docstring for scaling and colour).

    PNGs decode through OpenCV's libpng (about twice as fast as Pillow for a 1024 px radiograph; a damaged
    file makes it fail, never return part of an image); JPEGs and anything OpenCV declines go through
    Pillow, whose errors name truncated and corrupt files.
    """
    from hybridcxr.io.dicom import check_pixel_count

    size = claimed_size(path)
    if size is not None:
        check_pixel_count(*size, path)  # before any decoder allocates the claimed frame
    fast = _decode_png_cv2(path)
    if fast is not None:
        return fast
    try:
        with Image.open(path, formats=_FORMATS) as im:
            im.load()
            return to_grey_float(im)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        # Pillow's errors for unknown, corrupt and truncated files (UnidentifiedImageError is an OSError)
        raise NotAnImageError(path, f"cannot decode the image ({exc})") from exc


def claimed_size(path: PathType) -> tuple[int, int] | None:
    """(width, height) from the file's header (a PNG's IHDR, else Pillow's header parse); None if unreadable."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    try:
        with Image.open(path, formats=_FORMATS) as im:
            return int(im.size[0]), int(im.size[1])
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Image.DecompressionBombError as exc:
        raise TooManyPixelsError(path, f"the image claims more pixels than the limit ({exc})") from exc
    except Exception:  # noqa: BLE001 - any header Pillow cannot parse: the decoders below say what is wrong
        return None


def to_grey_float(im: Image.Image) -> np.ndarray:
    """A loaded Pillow image as 2-D float32 grey in [0, 1], scaled by its bit depth.

    >>> to_grey_float(Image.new("I;16", (2, 1), 65535)).tolist()
    [[1.0, 1.0]]
    """
    if im.mode in _SIXTEEN_BIT:
        return _scaled(np.asarray(im), 65535.0)
    if im.mode == "1":
        return np.asarray(im, dtype=np.float32)
    if im.mode != "L":
        im = im.convert("L") if im.mode in _GREY_CONVERTIBLE else im.convert("RGB").convert("L")
    return _scaled(np.asarray(im), 255.0)


def _scaled(arr: np.ndarray, top: float) -> np.ndarray:
    out = arr.astype(np.float32)
    out /= top
    if arr.dtype.itemsize > 2:  # 32-bit "I" data may exceed 16 bits
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _decode_png_cv2(path: PathType) -> np.ndarray | None:
    """A PNG through OpenCV (8/16-bit, grey or colour, alpha dropped, ITU-R 601 luma); None if not a clean PNG."""
    import cv2

    with open(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or not data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"):
        return None  # not a PNG, or cut short: Pillow reports why
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # UNCHANGED: no EXIF rotation
    if image is None or image.dtype not in (np.uint8, np.uint16):
        return None
    if image.ndim == 3 and image.shape[2] == 2:  # grey + alpha
        image = image[..., 0]
    elif image.ndim == 3:
        image = cv2.cvtColor(image[..., :3] if image.shape[2] == 4 else image, cv2.COLOR_BGR2GRAY)
    return _scaled(image, 255.0 if image.dtype == np.uint8 else 65535.0)
