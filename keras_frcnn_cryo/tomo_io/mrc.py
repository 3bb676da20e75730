"""MRC tomograms and tilt series: guarded memory-mapped reading (:class:`Volume`), tilt angles, writing."""
from __future__ import annotations

import math
import mmap
import os
import struct
import warnings
from collections.abc import Iterator, Sequence

import mrcfile
import numpy as np

from .. import atomic
from ..errors import CryoError, parse_float


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
