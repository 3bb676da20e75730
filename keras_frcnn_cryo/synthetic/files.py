"""Synthetic data: grey levels for pictures, and the files a dataset is made of (every write atomic:
temporary name in the same folder, then os.replace)."""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from .. import pictures, tomo_io
from ..config import Config


# ------------------------------------------------------------------------------------------
# images and montage
# ------------------------------------------------------------------------------------------
def robust_range(data: np.ndarray, percentiles: Sequence[float] | None = None,
                 max_samples: int = 2_000_000) -> tuple[float, float]:
    """(low, high) percentiles of ``data`` (default Config.norm_percentiles), on a strided subsample."""
    pct = tuple(Config().norm_percentiles if percentiles is None else percentiles)
    flat = data.reshape(-1)
    step = max(1, flat.size // max_samples)
    lo, hi = np.percentile(flat[::step], pct)
    return float(lo), float(max(hi, lo + 1e-12))


def to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to 0..255 (clipped) -> uint8, same shape."""
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------
# files (every write is atomic: temp name in the same folder, then os.replace)
# ------------------------------------------------------------------------------------------
def write_mrc(path: str, data: np.ndarray, pixel_size_a: float, image_stack: bool = False) -> None:
    """Write float32 ``data`` (z, y, x) as MRC with voxel_size = pixel_size_a (A), atomically.

    image_stack=True marks it a stack of 2D images (a tilt series) rather than a volume.
    """
    tomo_io.write_volume(path, np.asarray(data, dtype=np.float32), pixel_size_a, image_stack=image_stack)


write_png = pictures.write_png    # the package's one PNG writer (atomic), re-exported by synthetic


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _write_split(annotations_path: str, seed: int, test_fraction: float | None = None) -> dict[str, Any]:
    """Split whole tomograms (image groups) into train/test exactly as train_frcnn.py will
    (``test_fraction`` of them to test, default Config.test_fraction).

    Written with :func:`keras_frcnn_cryo.splits.assign_splits` to its default path beside the
    annotations (``annotations.split.json``), so training and measure_map reuse it. Returns
    {"path", "train": [groups], "test": [groups]}.
    """
    from .. import simple_parser, splits
    records, _, _ = simple_parser.get_data(annotations_path)
    split_path = splits.default_split_path(annotations_path)
    share = Config().test_fraction if test_fraction is None else test_fraction
    splits.assign_splits(records, split_path, share, 0.0, seed)
    with open(split_path) as fh:
        groups = json.load(fh)["groups"]
    return {"path": split_path, "train": sorted(g for g, v in groups.items() if v == "train"),
            "test": sorted(g for g, v in groups.items() if v == "test")}
