"""Reading and writing images (and, later, MRC volumes and tilt series).

Images
    :func:`read_image` returns a 2-D grey array ``(height, width)`` in the file's own dtype
    (uint8, uint16, int16 or float32; other numeric dtypes become float32). Colour files are
    reduced to grey by luminance (0.299 R + 0.587 G + 0.114 B, OpenCV's rule). No intensity scaling
    happens here: normalisation is :mod:`keras_frcnn_cryo.preprocessing`'s job.

    :func:`image_size` returns ``(width, height)``. For PNG, JPEG, TIFF and BMP it reads only the
    file header (annotation parsers call it once per image; decoding thousands of 4k float TIFFs
    would take minutes), so a file whose pixel data are corrupt passes here and fails later in
    :func:`read_image`, with a :class:`CryoError` naming it.

File lists
    :func:`list_images` accepts a directory (its image files, natural sort: ``z2`` before ``z10``)
    or one image file.

Writing
    :func:`write_png_atomic`, :func:`write_bytes_atomic` and :func:`write_volume` write to a
    temporary name in the target directory and ``os.replace`` it, so a reader never sees a
    half-written file.

MRC volumes and tilt series (mrcfile)
    :func:`open_volume` memory-maps a tomogram or tilt series (never reads the whole file) and
    returns a :class:`Volume`: ``data`` is the file's ``(z, y, x)`` memmap, ``slice(i)`` one
    ``(y, x)`` float32 image (optionally the mean of a slab of neighbouring slices and block-mean
    binned in x and y), ``pixel_size_a`` the header's voxel size in Angstrom (or ``apix``),
    ``angles`` the tilt angles from ``NAME.tlt`` / ``NAME.rawtlt`` beside a tilt series.
    Slice and tilt indices are 0-based everywhere (IMOD's 3dmod counts from 1).

    Guard rails (CryoError naming the file): not an MRC file, a header claiming more than
    :data:`MAX_MRC_DATA_BYTES` of data, a truncated data block (checked from the file size before
    mapping), complex / packed / unknown modes, volume stacks, a one-slice file opened as a
    tomogram, a tilt file whose angle count differs from the stack, NaN/Inf voxels in a slice (when
    that slice is read). A header that mrcfile refuses but can read permissively (damaged ``MAP``
    id or machine stamp) is read with a warning naming the file.

Labelling slices
    :func:`export_slices_for_labelling` writes 8-bit PNGs of chosen slices for LabelImg, each with a
    ``PNG.json`` sidecar recording where it came from; :func:`boxes_png_to_volume` maps boxes drawn
    on such a PNG back to the volume's pixels. Command line::

        python -m keras_frcnn_cryo.tomo_io export --input VOL --out DIR (--z 10 20 | --every 5)
                                                  [--slab N] [--bin B] [--apix A] [--kind K]
"""
from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import re
import struct
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import mrcfile
import numpy as np

from . import atomic
from .atomic import write_bytes_atomic  # noqa: F401  (re-exported: parsers and splits import it from here)
from .config import CHOICES, Config
from .errors import CryoError, parse_float
from .preprocessing import to_uint8

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


# ------------------------------------------------------------------------------------------
# MRC volumes and tilt series
# ------------------------------------------------------------------------------------------
MRC_EXTENSIONS = (".mrc", ".rec", ".st", ".map", ".ali", ".mrcs")
VOLUME_KINDS = ("auto", "tomogram", "tilt_series")
TILT_SERIES_EXTENSIONS = (".st", ".mrcs", ".ali")   # kind "auto": always a tilt series (image stack)
TOMOGRAM_EXTENSIONS = (".rec",)                     # IMOD's NAME.rec shares NAME.tlt with NAME.st
TILT_FILE_EXTENSIONS = (".tlt", ".rawtlt")          # searched in this order beside the stack

MRC_HEADER_BYTES = 1024
# A header claiming more data than this is taken as damaged and refused before anything is mapped.
# (A voxel-count limit such as 2**31 would refuse real data: the paper's 3708 x 3838 px slices make
# 2**31 voxels at 151 slices.)
MAX_MRC_DATA_BYTES = 64 * 1024 ** 3

_MRC_MODE_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}
_MRC_COMPLEX_MODES = (3, 4)
_MRC_PACKED_MODES = (101,)
_IMOD_STAMP = 1146047817       # header bytes 152..155; bytes 156..159 hold IMOD's flags
_IMOD_FLAG_SIGNED_BYTES = 1    # flag bit 0 set: mode-0 bytes are signed; clear: unsigned

SIDECAR_FORMAT = "keras_frcnn_cryo slice sidecar 1"


def is_mrc_file(path: str) -> bool:
    """True when ``path``'s extension (any case) is one of :data:`MRC_EXTENSIONS`."""
    return os.path.splitext(str(path))[1].lower() in MRC_EXTENSIONS


def _machine_stamp_order(machst: bytes) -> str | None:
    if machst[0] == 0x44 and machst[1] in (0x44, 0x41):
        return "<"
    if machst[0] == 0x11 and machst[1] == 0x11:
        return ">"
    return None


def _mrc_mode_known(mode: int) -> bool:
    return mode in _MRC_MODE_DTYPES or mode in _MRC_COMPLEX_MODES or mode in _MRC_PACKED_MODES


def _check_mrc_header(path: str) -> bool:
    """Validate the raw 1024-byte header against the file size; return True for IMOD unsigned bytes.

    Runs before anything is mapped, so a damaged or hostile header never causes an allocation.
    Raises CryoError naming ``path`` (see the module docstring for the cases).
    """
    if not os.path.exists(path):
        raise CryoError("MRC file not found", path)
    if not os.path.isfile(path):
        raise CryoError("not a regular file", path)
    file_size = os.path.getsize(path)
    if file_size < MRC_HEADER_BYTES:
        raise CryoError(
            f"not an MRC file: {file_size} bytes, shorter than the {MRC_HEADER_BYTES}-byte MRC header", path
        )
    with open(path, "rb") as fh:
        raw = fh.read(MRC_HEADER_BYTES)
    has_map_id = raw[208:211] == b"MAP"
    order = _machine_stamp_order(raw[212:216]) or "<"
    # like mrcfile's permissive reader: a mode that only makes sense byte-swapped means a wrong stamp
    other = ">" if order == "<" else "<"
    if not _mrc_mode_known(struct.unpack(order + "i", raw[12:16])[0]) and \
            _mrc_mode_known(struct.unpack(other + "i", raw[12:16])[0]):
        order = other
    nx, ny, nz, mode = struct.unpack(order + "4i", raw[0:16])
    (nsymbt,) = struct.unpack(order + "i", raw[92:96])
    imod_stamp, imod_flags = struct.unpack(order + "2i", raw[152:160])
    sane_size = nx >= 1 and ny >= 1 and nz >= 1 and nsymbt >= 0
    if not has_map_id and not (sane_size and _mrc_mode_known(mode)):
        raise CryoError(
            f"not an MRC file (no 'MAP' identifier, and the header makes no sense: size {nx} x {ny} x {nz}, "
            f"mode {mode})", path,
        )
    if not sane_size:
        raise CryoError(
            f"damaged MRC header: size {nx} x {ny} x {nz} with {nsymbt} bytes of extended header "
            "(every axis must be >= 1)", path,
        )
    if mode in _MRC_COMPLEX_MODES:
        raise CryoError(f"MRC mode {mode} holds complex numbers (Fourier data), not an image", path)
    if mode in _MRC_PACKED_MODES:
        raise CryoError(f"MRC mode {mode} (4-bit packed) is not supported: convert it to mode 0 or 1 first", path)
    if mode not in _MRC_MODE_DTYPES:
        raise CryoError(
            f"unknown MRC mode {mode} (supported: {', '.join(str(m) for m in _MRC_MODE_DTYPES)})", path
        )
    data_bytes = nx * ny * nz * np.dtype(_MRC_MODE_DTYPES[mode]).itemsize
    if data_bytes > MAX_MRC_DATA_BYTES:
        raise CryoError(
            f"header claims {nx} x {ny} x {nz} voxels ({data_bytes / 1024 ** 3:.1f} GiB), more than the "
            f"{MAX_MRC_DATA_BYTES // 1024 ** 3} GiB this reader accepts: damaged header? refusing to map it", path,
        )
    expected = MRC_HEADER_BYTES + nsymbt + data_bytes
    if file_size < expected:
        raise CryoError(
            f"truncated MRC file: the header ({nx} x {ny} x {nz}, mode {mode}, {nsymbt}-byte extended header) "
            f"promises {expected} bytes, the file has {file_size}", path,
        )
    return mode == 0 and imod_stamp == _IMOD_STAMP and not imod_flags & _IMOD_FLAG_SIGNED_BYTES


def _mmap_collecting_warnings(path: str, permissive: bool):
    """``(mrcfile.mmap(path, 'r'), [warning texts])``; mrcfile's own warnings are collected, not shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mmap(path, mode="r", permissive=permissive)
        except OSError as exc:
            raise CryoError(f"cannot open ({exc.strerror or exc})", path) from None
    return mrc, [str(item.message) for item in caught]


def _open_mrc(path: str):
    """Memory-map ``path`` read-only; retry permissively (with a warning) when mrcfile refuses the header."""
    try:
        mrc, notes = _mmap_collecting_warnings(path, permissive=False)
    except ValueError as exc:
        strict_error = str(exc)
        try:
            mrc, notes = _mmap_collecting_warnings(path, permissive=True)
        except ValueError as again:
            raise CryoError(f"not a readable MRC file ({again})", path) from None
        if mrc.data is None:
            mrc.close()
            raise CryoError(f"not a readable MRC file ({strict_error}; {'; '.join(notes)})", path)
        warnings.warn(
            f"{path}: damaged MRC header ({strict_error}); read in permissive mode, check the images",
            RuntimeWarning, stacklevel=3,
        )
        notes = [note for note in notes if note != strict_error]
    for note in notes:
        warnings.warn(f"{path}: {note}", RuntimeWarning, stacklevel=3)
    return mrc


def tilt_file_for(path: str) -> str | None:
    """``NAME.tlt`` (preferred) or ``NAME.rawtlt`` beside ``NAME.ext``, or None when neither exists."""
    root = os.path.splitext(str(path))[0]
    for extension in TILT_FILE_EXTENSIONS:
        candidate = root + extension
        if os.path.isfile(candidate):
            return candidate
    return None


def read_tilt_angles(path: str) -> tuple[float, ...]:
    """Tilt angles (degrees) of an IMOD ``.tlt`` / ``.rawtlt`` file: one number per line, blank lines skipped.

    Raises CryoError naming ``path:line`` for a line that is not one finite number.
    """
    angles = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, raw in enumerate(fh, start=1):
            text = raw.strip()
            if not text:
                continue
            angles.append(parse_float(text, "tilt angle (one per line)", path, line_no))
    if not angles:
        raise CryoError("tilt file holds no angles", path)
    return tuple(angles)


def _positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CryoError(f"{what} must be a whole number >= 1, got {value!r}")
    return int(value)


def bin_image(image: np.ndarray, binning: int) -> np.ndarray:
    """(H, W) -> (H // binning, W // binning) float32: mean of each binning x binning block.

    The last ``H % binning`` rows and ``W % binning`` columns are dropped, so PNG pixel ``(r, c)``
    covers exactly the source pixels ``[r*b, (r+1)*b) x [c*b, (c+1)*b)``.
    """
    if binning == 1:
        return np.asarray(image, dtype=np.float32)
    height, width = image.shape[0] // binning, image.shape[1] // binning
    blocks = np.asarray(image)[:height * binning, :width * binning].reshape(height, binning, width, binning)
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


class Volume:
    """A memory-mapped MRC tomogram or tilt series (read-only). Use as a context manager or close().

    Attributes
        path: absolute file path; kind: ``"tomogram"`` or ``"tilt_series"``;
        data: the file's ``(z, y, x)`` numpy memmap in the file's dtype (unbinned; a 2-D file opened
        as a tilt series is viewed as ``(1, y, x)``); shape: ``(z, y // binning, x // binning)``, the
        shape of what :meth:`slice` returns stacked; n_slices: z; pixel_size_a: the file's pixel size
        (Angstrom, header ``voxel_size.x``, or ``apix``; None when unknown) before binning;
        slice_pixel_size_a: ``pixel_size_a * binning``; angles: tilt angles (degrees, one per image)
        of a tilt series with a tilt file, else None; tilt_file: that file or None; slab, binning.
    """

    def __init__(self, path: str, kind: str = "auto", apix: float | None = None, slab: int = 1,
                 binning: int = 1):
        path = os.path.abspath(str(path))
        if kind not in VOLUME_KINDS:
            raise CryoError(f"unknown volume kind {kind!r} (use {', '.join(VOLUME_KINDS)})", path)
        self.slab = _positive_int(slab, "slab")
        self.binning = _positive_int(binning, "binning")
        if apix is not None and not (math.isfinite(float(apix)) and float(apix) > 0):
            raise CryoError(f"pixel size (--apix) must be a positive number of Angstrom, got {apix!r}", path)
        unsigned_bytes = _check_mrc_header(path)
        self.path = path
        self._mrc = _open_mrc(path)
        try:
            self._setup(kind, apix, unsigned_bytes)
        except BaseException:
            self.close()
            raise

    def _setup(self, kind: str, apix: float | None, unsigned_bytes: bool) -> None:
        path, mrc = self.path, self._mrc
        extension = os.path.splitext(path)[1].lower()
        tilt_file = tilt_file_for(path)
        if kind == "auto":
            if extension in TILT_SERIES_EXTENSIONS:
                kind = "tilt_series"
            elif extension in TOMOGRAM_EXTENSIONS:
                kind = "tomogram"
            else:  # a tilt file beside it (header ispg 0, image stack, is what such stacks carry)
                kind = "tilt_series" if tilt_file is not None else "tomogram"
        elif kind == "tomogram" and (extension in TILT_SERIES_EXTENSIONS
                                     or (extension not in TOMOGRAM_EXTENSIONS and tilt_file is not None)):
            why = f"its extension {extension}" if extension in TILT_SERIES_EXTENSIONS else \
                f"{os.path.basename(tilt_file)} beside it"
            raise CryoError(f"is a tilt series ({why}), not a tomogram: use kind 'tilt_series' (--kind "
                            "tilt_series), or rename the file if it really is a reconstruction", path)
        self.kind = kind
        data = mrc.data
        if data.ndim == 4:
            raise CryoError(f"volume stacks (space group {int(mrc.header.ispg)}) are not supported", path)
        if data.ndim == 2:
            data = data[np.newaxis]
        if unsigned_bytes:
            data = data.view(np.uint8)  # IMOD: mode 0 without the signed flag holds unsigned bytes
        if kind == "tomogram" and data.shape[0] == 1:
            raise CryoError(
                "has one slice (nz = 1, a 2-D image), so it is not a tomogram: open it as a tilt series "
                "(kind 'tilt_series') or convert it to PNG", path,
            )
        self.data = data
        self.n_slices = int(data.shape[0])
        height, width = int(data.shape[1]) // self.binning, int(data.shape[2]) // self.binning
        if height < 1 or width < 1:
            raise CryoError(f"binning {self.binning} is larger than the {data.shape[2]} x {data.shape[1]} px images",
                            path)
        self.shape = (self.n_slices, height, width)
        if apix is not None:
            self.pixel_size_a: float | None = float(apix)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                header_size = float(mrc.voxel_size.x)
            self.pixel_size_a = header_size if math.isfinite(header_size) and header_size > 0 else None
        self.tilt_file = tilt_file if kind == "tilt_series" else None
        self.angles: tuple[float, ...] | None = None
        if self.tilt_file is not None:
            angles = read_tilt_angles(self.tilt_file)
            if len(angles) != self.n_slices:
                raise CryoError(
                    f"{os.path.basename(self.tilt_file)} beside it lists {len(angles)} tilt angles but the stack "
                    f"has {self.n_slices} images (if this is a tomogram, open it with kind 'tomogram')", path,
                )
            self.angles = angles
        if kind == "tilt_series" and self.slab > 1:
            raise CryoError("slab averaging mixes different tilt angles: use slab 1 for a tilt series", path)

    # --- life cycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Release the memory map and the file (idempotent)."""
        mrc = getattr(self, "_mrc", None)
        self.data = None
        self._mrc = None
        if mrc is not None:
            mrc.close()

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Volume({self.path!r}, kind={getattr(self, 'kind', '?')!r}, shape={getattr(self, 'shape', '?')}, "
                f"pixel_size_a={getattr(self, 'pixel_size_a', None)}, slab={self.slab}, binning={self.binning})")

    # --- reading ---------------------------------------------------------------------------
    @property
    def slice_pixel_size_a(self) -> float | None:
        """Pixel size (Angstrom) of the images :meth:`slice` returns: ``pixel_size_a * binning``."""
        return None if self.pixel_size_a is None else self.pixel_size_a * self.binning

    def check_index(self, index: int) -> int:
        """``index`` as an int in ``0 .. n_slices - 1`` (0-based); CryoError otherwise."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise CryoError(f"slice index must be an integer, got {index!r}", self.path)
        if not 0 <= index < self.n_slices:
            raise CryoError(
                f"slice index {index} is out of range: {self.n_slices} slices, 0..{self.n_slices - 1} (0-based)",
                self.path,
            )
        return int(index)

    def slab_range(self, index: int) -> tuple[int, int]:
        """Slices ``[start, stop)`` averaged for slice ``index``: ``slab`` slices centred on it
        (``index - (slab - 1) // 2`` up to ``index + slab // 2``), cut at the ends of the stack."""
        index = self.check_index(index)
        start = index - (self.slab - 1) // 2
        return max(start, 0), min(start + self.slab, self.n_slices)

    def _read_plane(self, z: int) -> np.ndarray:
        plane = np.array(self.data[z])  # a copy: the mapped pages can then be released
        self._release_pages(z)
        if plane.dtype.kind == "f":
            finite = np.isfinite(plane)
            if not finite.all():
                bad = int(plane.size - np.count_nonzero(finite))
                raise CryoError(f"slice {z} (0-based) holds {bad} NaN/Inf voxel(s)", self.path)
        return plane

    def _release_pages(self, z: int) -> None:
        """Let the kernel drop the file pages of plane ``z`` (already copied), so that resident memory
        does not grow with the part of the file read so far. Best effort: a no-op where unsupported."""
        root = self._mrc.data if self._mrc is not None else None
        base = getattr(root, "_mmap", None)
        if base is None or not hasattr(base, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        plane_bytes = int(np.prod(self.data.shape[1:])) * self.data.dtype.itemsize
        start = int(root.offset) % mmap.ALLOCATIONGRANULARITY + z * plane_bytes
        first = start - start % mmap.PAGESIZE
        stop = min(start + plane_bytes, len(base))
        stop -= stop % mmap.PAGESIZE  # whole pages inside the plane only
        if stop > first:
            base.madvise(mmap.MADV_DONTNEED, first, stop - first)

    def slice(self, index: int) -> np.ndarray:
        """Image ``index`` (0-based) as float32 ``(y // binning, x // binning)``.

        Tomogram slice z is ``data[z]``, tilt image i is ``data[i]``; with ``slab`` > 1 the mean of
        the slices in :meth:`slab_range`; then block-mean binning (:func:`bin_image`).
        """
        if self.data is None:
            raise ValueError(f"{self.path}: volume is closed")
        start, stop = self.slab_range(index)
        if stop - start == 1:
            plane = self._read_plane(start).astype(np.float32)
            return bin_image(plane, self.binning)
        total = np.zeros(self.data.shape[1:], np.float64)
        for z in range(start, stop):
            total += self._read_plane(z)
        return bin_image((total / (stop - start)).astype(np.float32), self.binning)

    def slab_channels(self, index: int, slab: int) -> np.ndarray:
        """Three slabs around tomogram slice ``index`` as float32 ``(y // binning, x // binning, 3)``.

        Channel c (0, 1, 2) is the mean of the ``slab`` slices centred on ``index + (c - 1) * slab``
        (from ``centre - (slab - 1) // 2``), slices beyond either end of the stack replaced by the
        end slice; then block-mean binning. The network input of ``Config.input_channels`` "slabs":
        noise in neighbouring reconstructed slices is correlated over about two slices (weighted
        back-projection), so separate slabs add independent views of the same structure.
        """
        if self.data is None:
            raise ValueError(f"{self.path}: volume is closed")
        index = self.check_index(index)
        slab = _positive_int(slab, "slab")
        channels = []
        for offset in (-slab, 0, slab):
            first = index + offset - (slab - 1) // 2
            total = np.zeros(self.data.shape[1:], np.float64)
            for z in range(first, first + slab):
                total += self._read_plane(min(max(z, 0), self.n_slices - 1))
            channels.append(bin_image((total / slab).astype(np.float32), self.binning))
        return np.stack(channels, axis=2)

    def iter_slices(self, indices: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, self.slice(index))`` for each index (all slices when None), one at a time."""
        for index in range(self.n_slices) if indices is None else indices:
            yield int(index), self.slice(index)


def open_volume(path: str, kind: str = "auto", apix: float | None = None, slab: int = 1,
                binning: int = 1) -> Volume:
    """Memory-map the MRC file ``path`` as a :class:`Volume` (see there and the module docstring).

    kind ``"auto"``: ``.st``, ``.mrcs`` and ``.ali`` files are tilt series, ``.rec`` files tomograms;
    any other file is a tilt series when ``NAME.tlt`` or ``NAME.rawtlt`` lies beside it, else a
    tomogram. ``apix`` (Angstrom) overrides the header's pixel size.
    """
    return Volume(path, kind=kind, apix=apix, slab=slab, binning=binning)


_WRITABLE_VOLUME_DTYPES = (np.float32, np.uint8, np.int16, np.uint16, np.int8)


def write_volume(path: str, data: np.ndarray, pixel_size_a: float | None = None,
                 image_stack: bool = False) -> None:
    """Write ``data`` ``(z, y, x)`` (float32, uint8, int16, uint16 or int8) as an MRC file, atomically.

    uint8 is stored as mode 6 (uint16; values kept). ``pixel_size_a`` (Angstrom) goes to the header
    voxel size (x, y and z); ``image_stack=True`` marks the file as an image stack (space group 0,
    as a tilt series), else a volume (space group 1). Raises ValueError for other shapes or dtypes.
    """
    array = np.asarray(data)
    if array.ndim != 3 or array.size == 0:
        raise ValueError(f"write_volume needs a non-empty (z, y, x) array, got shape {array.shape}")
    if array.dtype not in _WRITABLE_VOLUME_DTYPES:
        raise ValueError(f"write_volume needs one of {[np.dtype(d).name for d in _WRITABLE_VOLUME_DTYPES]}, "
                         f"got {array.dtype}")
    if pixel_size_a is not None and not (math.isfinite(pixel_size_a) and pixel_size_a > 0):
        raise ValueError(f"pixel_size_a must be a positive number, got {pixel_size_a!r}")
    if array.dtype == np.uint8:
        array = array.astype(np.uint16)
    with atomic.atomic_path(str(path)) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(array))
            if image_stack:
                mrc.set_image_stack()
            if pixel_size_a is not None:
                mrc.voxel_size = float(pixel_size_a)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())


# ------------------------------------------------------------------------------------------
# slices for labelling (LabelImg) and back
# ------------------------------------------------------------------------------------------
def slice_png_name(stem: str, kind: str, index: int) -> str:
    """``{stem}_z{index:04d}.png`` for a tomogram, ``{stem}_t{index:03d}.png`` for a tilt series (0-based)."""
    return f"{stem}_t{index:03d}.png" if kind == "tilt_series" else f"{stem}_z{index:04d}.png"


def _resolve_indices(indices: Sequence[int] | slice, volume: Volume) -> list[int]:
    if isinstance(indices, slice):
        chosen = list(range(volume.n_slices))[indices]
    else:
        chosen = [volume.check_index(index) for index in indices]
    chosen = list(dict.fromkeys(chosen))  # drop repeats, keep order
    if not chosen:
        raise CryoError("no slices selected for export", volume.path)
    return chosen


def export_slices_for_labelling(
    volume_path: str,
    out_dir: str,
    indices: Sequence[int] | slice,
    kind: str = "auto",
    slab: int = 1,
    binning: int = 1,
    apix: float | None = None,
    percentiles: tuple[float, float] = Config.norm_percentiles,
) -> list[str]:
    """Write 8-bit PNGs of the chosen slices (0-based ``indices``, or a ``slice`` such as
    ``slice(0, None, 5)``) of an MRC volume into ``out_dir``; return their paths in order.

    Each PNG is :meth:`Volume.slice` scaled per slice so that the ``percentiles`` range maps to
    0..255 (:func:`keras_frcnn_cryo.preprocessing.to_uint8`; contrast polarity unchanged), named by
    :func:`slice_png_name`, with a sidecar ``PNG.json``: source (absolute path), kind, index (0-based)
    as ``z`` or ``tilt_index``, angle (tilt series with a tilt file, else null), pixel_size_a of the
    PNG (= file pixel size x binning; null when unknown), source_pixel_size_a, binning, slab and the
    slab range. Every file is written atomically.
    """
    written = []
    with open_volume(volume_path, kind=kind, apix=apix, slab=slab, binning=binning) as volume:
        chosen = _resolve_indices(indices, volume)
        stem = os.path.splitext(os.path.basename(volume.path))[0]
        for index in chosen:
            image = to_uint8(volume.slice(index), percentiles)
            png_path = os.path.join(str(out_dir), slice_png_name(stem, volume.kind, index))
            sidecar = slice_sidecar(volume.path, volume.kind, index, volume.data.shape, image.shape,
                                    volume.pixel_size_a, volume.binning, volume.slab, volume.slab_range(index),
                                    None if volume.angles is None else volume.angles[index])
            sidecar["percentiles"] = [float(p) for p in percentiles]
            write_png_atomic(png_path, image)
            write_sidecar(png_path, sidecar)
            written.append(png_path)
    return written


def slice_sidecar(source: str, kind: str, index: int, volume_shape_zyx: Sequence[int], png_shape_yx: Sequence[int],
                  source_pixel_size_a: float | None, binning: int = 1, slab: int = 1,
                  slab_range: Sequence[int] | None = None, angle: float | None = None) -> dict:
    """The sidecar of a PNG made from image ``index`` (0-based) of the volume ``source`` (absolute, or
    relative to the PNG's folder; see :func:`sidecar_source`)."""
    index_key = "tilt_index" if kind == "tilt_series" else "z"
    return {
        "format": SIDECAR_FORMAT,
        "source": source,
        "kind": kind,
        "index_base": 0,
        "note": "slice and tilt indices are 0-based (IMOD's 3dmod counts from 1); "
                "PNG pixel (x, y) covers volume pixels [x*binning, (x+1)*binning) in x and y",
        index_key: int(index),
        "angle": angle,
        "pixel_size_a": None if source_pixel_size_a is None else source_pixel_size_a * binning,
        "source_pixel_size_a": source_pixel_size_a,
        "binning": int(binning),
        "slab": int(slab),
        "slab_range": list(slab_range) if slab_range is not None else [int(index), int(index) + 1],
        "volume_shape_zyx": [int(n) for n in volume_shape_zyx],
        "png_shape_yx": [int(n) for n in png_shape_yx],
    }


def write_sidecar(png_path: str, sidecar: dict) -> None:
    """Write ``PNG.json`` beside ``png_path`` (atomically)."""
    write_bytes_atomic(png_path + ".json", (json.dumps(sidecar, indent=2) + "\n").encode("utf-8"))


def read_sidecar(path: str) -> dict:
    """The sidecar dict of an exported PNG (give the PNG or its ``.json``); CryoError when missing or invalid."""
    path = str(path)
    json_path = path if path.endswith(".json") else path + ".json"
    if not os.path.isfile(json_path):
        raise CryoError("sidecar file not found (was the PNG made by export_slices_for_labelling?)", json_path)
    try:
        with open(json_path, encoding="utf-8") as fh:
            sidecar = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CryoError(f"not a valid JSON sidecar ({exc.__class__.__name__})", json_path) from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise CryoError(f"not a slice sidecar (format is not {SIDECAR_FORMAT!r})", json_path)
    return sidecar


def image_pixel_size(path: str) -> float | None:
    """Pixel size (A/px) of an image file from its sidecar (``pixel_size_a``, binning included);
    None without a sidecar or when it records none."""
    if not os.path.isfile(str(path) + ".json"):
        return None
    value = read_sidecar(path).get("pixel_size_a")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        return None
    return float(value)


def sidecar_source(sidecar: dict, sidecar_path: str) -> str:
    """The volume a sidecar names: its ``source`` as written (absolute), or relative to the sidecar's folder."""
    source = sidecar.get("source")
    if not isinstance(source, str) or not source:
        raise CryoError("sidecar names no source volume", sidecar_path)
    return source if os.path.isabs(source) else os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(sidecar_path)), source))


def tomogram_of(path: str) -> tuple[str | None, dict | None, str]:
    """The tomogram an image file is a slice of, from the sidecar beside it:
    ``(tomogram path, sidecar, "")`` when the sidecar names a tomogram that exists, else
    ``(tomogram path or None, sidecar or None, problem)`` with problem "no sidecar", "tilt image"
    or "missing tomogram"."""
    sidecar_path = str(path) + ".json"
    if not os.path.isfile(sidecar_path):
        return None, None, "no sidecar"
    sidecar = read_sidecar(sidecar_path)
    if sidecar.get("kind") != "tomogram":
        return None, sidecar, "tilt image"
    source = sidecar_source(sidecar, sidecar_path)
    return source, sidecar, "" if os.path.isfile(source) else "missing tomogram"


INPUT_CHANNEL_MODES = CHOICES["input_channels"]


class ImageSource:
    """What the network reads for an image file, by ``Config.input_channels``.

    ``"repeat"``: :func:`read_image` (a 2-D grey image; prepare_image repeats it on 3 channels).
    ``"slabs"``: when the image has a sidecar (``IMAGE.json``, written by
    :func:`export_slices_for_labelling` and the synthetic generator) naming a tomogram that can be
    opened, :meth:`Volume.slab_channels` of its slice ``z`` with the sidecar's binning, shape
    (H, W, 3); otherwise the 2-D image, with one warning per folder (tilt images, plain PNGs).
    Volumes stay memory-mapped between calls (at most ``max_open``); :meth:`close` releases them.
    """

    def __init__(self, input_channels: str = "repeat", slab: int = 1, max_open: int = 16):
        if input_channels not in INPUT_CHANNEL_MODES:
            raise CryoError(f"unknown input_channels {input_channels!r} (use {', '.join(INPUT_CHANNEL_MODES)})")
        self.input_channels = input_channels
        self.slab = _positive_int(slab, "input slab")
        self.max_open = max_open
        self._volumes: dict[str, Volume] = {}
        self._warned: set[str] = set()

    def __call__(self, path: str) -> np.ndarray:
        """The network's view of the image file ``path``: (H, W) or (H, W, 3)."""
        if self.input_channels == "slabs":
            found = self._slab_source(path)
            if found is not None:
                volume, z = found
                stack = volume.slab_channels(z, self.slab)
                height, width = image_size(path)[::-1]
                if stack.shape[:2] != (height, width):
                    raise CryoError(f"its sidecar's volume gives {stack.shape[1]} x {stack.shape[0]} px slices, "
                                    f"the image is {width} x {height} px", path)
                return stack
        return read_image(path)

    def _slab_source(self, path: str) -> tuple[Volume, int] | None:
        source, sidecar, problem = tomogram_of(path)
        if not problem:
            volume = self._open(source, sidecar)
            return volume, volume.check_index(sidecar_index(sidecar))
        reason = {"no sidecar": "no sidecar (.json) beside the images",
                  "tilt image": "they are tilt images, not tomogram slices",
                  "missing tomogram": f"the volume their sidecar names is missing ({source})"}[problem]
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in self._warned:
            self._warned.add(folder)
            warnings.warn(f"{folder}: the model reads three slabs of the source tomogram, but these images "
                          f"have none ({reason}): each image is repeated on the three channels instead")
        return None

    def _open(self, source: str, sidecar: dict) -> Volume:
        binning = sidecar.get("binning", 1)
        key = f"{source}|{binning}"
        if key not in self._volumes:
            if len(self._volumes) >= self.max_open:
                self._volumes.pop(next(iter(self._volumes))).close()
            self._volumes[key] = open_volume(source, kind="tomogram", binning=binning)
        return self._volumes[key]

    def close(self) -> None:
        """Release every open volume."""
        for volume in self._volumes.values():
            volume.close()
        self._volumes.clear()


def image_source(cfg: Config) -> ImageSource:
    """The :class:`ImageSource` of a Config (``input_channels``, ``input_slab``)."""
    return ImageSource(cfg.input_channels, cfg.input_slab)


def sidecar_index(sidecar: dict) -> int:
    """The 0-based z (tomogram) or tilt index (tilt series) a sidecar records."""
    key = "tilt_index" if sidecar.get("kind") == "tilt_series" else "z"
    value = sidecar.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CryoError(f"sidecar has no valid {key!r} (got {value!r})", sidecar.get("source"))
    return value


def boxes_png_to_volume(boxes: np.ndarray, sidecar: dict) -> np.ndarray:
    """Boxes ``(N, 4)`` ``[x1, y1, x2, y2]`` drawn on an exported PNG -> ``(N, 4)`` float64 in the
    volume's x/y pixels (our convention: 0-based, x2/y2 exclusive), i.e. multiplied by the binning.

    Exact: PNG pixel ``c`` covers volume columns ``[c*b, (c+1)*b)``. The slice the boxes belong to is
    :func:`sidecar_index` (``sidecar['z']`` or ``sidecar['tilt_index']``, 0-based).
    """
    binning = sidecar.get("binning")
    if isinstance(binning, bool) or not isinstance(binning, int) or binning < 1:
        raise CryoError(f"sidecar has no valid 'binning' (got {binning!r})", sidecar.get("source"))
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got shape {array.shape}")
    return array * binning


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """``python -m keras_frcnn_cryo.tomo_io export ...`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_frcnn_cryo.tomo_io", description="MRC volume and tilt-series utilities."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export", help="write slices as 8-bit PNGs (+ .json sidecars) for labelling in LabelImg",
        description="Write chosen slices (0-based indices) of a tomogram or tilt series as 8-bit PNGs, "
                    "each with a PNG.json sidecar recording source, index, angle, pixel size and binning.",
    )
    export.add_argument("--input", required=True, help="MRC tomogram or tilt series (" + " ".join(MRC_EXTENSIONS) + ")")
    export.add_argument("--out", required=True, help="output folder")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--z", type=int, nargs="+", metavar="INDEX", help="slice / tilt indices, 0-based")
    which.add_argument("--every", type=int, metavar="N", help="every N-th slice, starting at 0")
    export.add_argument("--slab", type=int, default=1, help="average N neighbouring slices (tomograms; default 1)")
    export.add_argument("--bin", dest="binning", type=int, default=1, help="block-mean binning in x and y (default 1)")
    export.add_argument("--apix", type=float, default=None, help="pixel size in Angstrom (overrides the header)")
    export.add_argument("--kind", choices=VOLUME_KINDS, default="auto", help="volume kind (default: auto)")
    export.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def main(args: argparse.Namespace) -> int:
    """``python -m keras_frcnn_cryo.tomo_io export``: slices as PNGs with sidecars, for labelling."""
    if args.every is not None:
        indices: Sequence[int] | slice = slice(0, None, _positive_int(args.every, "--every"))
    else:
        indices = args.z
    paths = export_slices_for_labelling(args.input, args.out, indices, kind=args.kind, slab=args.slab,
                                        binning=args.binning, apix=args.apix)
    print(f"wrote {len(paths)} PNG(s) with .json sidecars to {args.out} (slice numbers 0-based)")
    return 0


def console_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one ``error:`` line on bad input)."""
    from .cli import run_cli
    return run_cli(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(console_main())
