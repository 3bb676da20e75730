"""Slices for labelling (LabelImg) and back: PNG export with JSON sidecars, the sidecars, and the
network-input channels (:class:`ImageSource`) read through them."""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np

from ..atomic import write_bytes_atomic
from ..config import CHOICES, Config, check_choice
from ..errors import CryoError
from ..preprocessing import to_uint8
from .images import image_size, read_image, write_png_atomic
from .mrc import open_volume, Volume, _positive_int


SIDECAR_FORMAT = "keras_frcnn_cryo slice sidecar 1"


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
        self.input_channels = check_choice("input_channels", input_channels)
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
