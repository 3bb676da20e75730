"""2D images: file names and lists, reading (grey, in the file's dtype), header-only sizes, PNG writing."""
from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import CryoError


IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

# dtypes read_image returns unchanged; any other numeric dtype is converted to float32
_KEPT_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)

_IMREAD_FLAGS = cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH


# ------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------
def is_image_file(path: str) -> bool:
    """True when ``path``'s extension (any case) is one of :data:`IMAGE_EXTENSIONS`."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def natural_sort_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers: ``slice_2`` < ``slice_10``; ties broken by the name."""
    parts = re.split(r"(\d+)", name)
    key = tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts if part)
    return key + ((2, 0, name),)


def evenly_spaced(items: Sequence[Any], count: int) -> list[Any]:
    """Up to ``count`` items of ``items`` at evenly spaced positions, first and last included, in
    order and without repeats (all of them when ``count`` >= their number; none for count <= 0)."""
    if count <= 0 or not items:
        return []
    positions = np.unique(np.linspace(0, len(items) - 1, min(int(count), len(items))).round().astype(int))
    return [items[int(i)] for i in positions]


def list_images(path: str) -> list[str]:
    """Image files of a directory (not recursive, hidden files skipped, natural sort) or ``[path]``.

    Raises CryoError when ``path`` does not exist, is a file of another type, or is a directory
    without image files.
    """
    path = str(path)
    if os.path.isdir(path):
        names = [
            name for name in os.listdir(path)
            if not name.startswith(".") and is_image_file(name) and os.path.isfile(os.path.join(path, name))
        ]
        if not names:
            raise CryoError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this directory", path)
        return [os.path.join(path, name) for name in sorted(names, key=natural_sort_key)]
    if os.path.isfile(path):
        if not is_image_file(path):
            raise CryoError(f"not a supported image file (use one of {', '.join(IMAGE_EXTENSIONS)})", path)
        return [path]
    raise CryoError("no such file or directory", path)


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
def _read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise CryoError("image file not found", path)
    if not os.path.isfile(path):
        raise CryoError("not a regular file", path)
    with open(path, "rb") as fh:
        data = fh.read()
    if not data:
        raise CryoError("image file is empty (0 bytes)", path)
    return data


def _to_grey(image: np.ndarray, path: str) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 2: grey + alpha), (H, W, 3: BGR) or (H, W, 4: BGRA) -> (H, W)."""
    if image.ndim == 2:
        return image
    if image.ndim != 3:
        raise CryoError(f"unsupported image layout with shape {image.shape}", path)
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    if channels == 2:
        return image[:, :, 0]
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise CryoError(f"unsupported number of channels ({channels})", path)


def read_image(path: str) -> np.ndarray:
    """Read an image file as a 2-D grey array ``(height, width)``.

    dtype: uint8, uint16, int16 and float32 are kept; other numeric dtypes become float32.
    Colour (BGR/BGRA) files become grey by luminance; a 1-bit PNG reads as uint8 0/255.
    Raises CryoError naming the file when it is missing, empty, not decodable, has no pixels,
    or holds NaN/Inf values.
    """
    path = str(path)
    data = _read_bytes(path)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_FLAGS)
    if image is None:
        raise CryoError("cannot decode image (corrupt or unsupported format)", path)
    if image.size == 0:
        raise CryoError(f"image has no pixels (shape {image.shape})", path)
    image = _to_grey(image, path)
    if image.dtype not in _KEPT_DTYPES:
        image = image.astype(np.float32)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise CryoError(f"image holds {bad} NaN/Inf pixel values", path)
    return np.ascontiguousarray(image)


def _png_size(head: bytes) -> tuple[int, int] | None:
    if len(head) >= 24 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    return None


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    if len(head) < 26:
        return None
    (dib_size,) = struct.unpack("<I", head[14:18])
    if dib_size == 12:
        width, height = struct.unpack("<HH", head[18:22])
    elif dib_size >= 40:
        width, height = struct.unpack("<ii", head[18:26])
    else:
        return None
    return abs(width), abs(height)  # negative height: rows stored top-down


def _tiff_size(fh, head: bytes) -> tuple[int, int] | None:
    endian = "<" if head[:2] == b"II" else ">"
    (magic,) = struct.unpack(endian + "H", head[2:4])
    if magic != 42:  # 43 = BigTIFF: let OpenCV decode it
        return None
    (ifd_offset,) = struct.unpack(endian + "I", head[4:8])
    fh.seek(ifd_offset)
    raw = fh.read(2)
    if len(raw) < 2:
        return None
    (count,) = struct.unpack(endian + "H", raw)
    entries = fh.read(12 * count)
    if len(entries) < 12 * count:
        return None
    found: dict[int, int] = {}
    for index in range(count):
        tag, field_type, _n, value = struct.unpack(endian + "HHI4s", entries[12 * index:12 * index + 12])
        if tag in (256, 257):
            if field_type == 3:    # SHORT, left-justified in the value field
                found[tag] = struct.unpack(endian + "H", value[:2])[0]
            elif field_type == 4:  # LONG
                found[tag] = struct.unpack(endian + "I", value)[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, 0xD8} | set(range(0xD0, 0xD8))


def _jpeg_size(fh) -> tuple[int, int] | None:
    fh.seek(2)
    while True:
        byte = fh.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            continue
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker:
            return None
        code = marker[0]
        if code in _JPEG_STANDALONE:
            continue
        if code == 0xD9:  # end of image before any frame header
            return None
        raw = fh.read(2)
        if len(raw) < 2:
            return None
        (length,) = struct.unpack(">H", raw)
        if code in _JPEG_SOF:
            frame = fh.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        fh.seek(length - 2, os.SEEK_CUR)


def _header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file header, or None when the format or layout is not recognised."""
    with open(path, "rb") as fh:
        head = fh.read(32)
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            size = _png_size(head)
        elif head.startswith(b"\xff\xd8"):
            size = _jpeg_size(fh)
        elif head[:4] in (b"II*\x00", b"MM\x00*"):
            size = _tiff_size(fh, head)
        elif head.startswith(b"BM"):
            size = _bmp_size(head)
        else:
            size = None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def image_size(path: str) -> tuple[int, int]:
    """``(width, height)`` in pixels, from the header when possible, else by decoding the image.

    Raises CryoError naming the file when it is missing or empty, or (when the header is not
    understood) cannot be decoded.
    """
    path = str(path)
    if not os.path.exists(path):
        raise CryoError("image file not found", path)
    if not os.path.isfile(path):
        raise CryoError("not a regular file", path)
    if os.path.getsize(path) == 0:
        raise CryoError("image file is empty (0 bytes)", path)
    size = _header_size(path)
    if size is not None:
        return size
    height, width = read_image(path).shape
    return width, height


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
def write_png_atomic(path: str, image: np.ndarray) -> None:
    """Write a uint8 or uint16 image, ``(H, W)`` grey, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA, as PNG.

    Written atomically (temporary name in the same directory, then ``os.replace``).
    Raises ValueError for other dtypes or shapes (a programming error, not bad user input).
    """
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png_atomic needs uint8 or uint16, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))) or image.size == 0:
        raise ValueError(f"write_png_atomic needs (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {image.shape} as PNG")
    write_bytes_atomic(path, encoded.tobytes())
