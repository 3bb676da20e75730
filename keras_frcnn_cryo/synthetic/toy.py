"""Synthetic data: toy 2D images with dark ellipses, for unit tests and smoke training."""
from __future__ import annotations

import math
import os
from typing import Sequence

import cv2
import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import CryoError
from .files import robust_range, to_uint8, write_png, _fmt, _write_split
from .params import MITO_CLASS, TOY_IMAGES_PER_GROUP
from .phantom import _band, _inside


# ------------------------------------------------------------------------------------------
# toy 2D data for unit tests and smoke training
# ------------------------------------------------------------------------------------------
def _toy_layout(rng: np.random.Generator, size: int, n_objects: int,
                strict: bool = True) -> list[tuple[float, float, float, float, float]]:
    """Non-overlapping ellipses (cx, cy, semi-axis a, semi-axis b, angle) fully inside a size x size image.

    strict: raise CryoError when n_objects do not fit; otherwise return those that fit (at least one).
    """
    placed: list[tuple[float, float, float, float, float]] = []
    max_semi = min(25.0, (size - 4) / 2.0)
    if n_objects and max_semi < 10.0:
        raise CryoError(f"toy image size {size} too small for 20-50 px objects")
    for _ in range(n_objects):
        for _attempt in range(200):
            a = rng.uniform(10.0, max_semi)
            b = rng.uniform(max(10.0, 0.6 * a), a)
            cx, cy = rng.uniform(a + 2, size - a - 2, 2)
            if all(math.hypot(cx - p[0], cy - p[1]) > a + p[2] + 4 for p in placed):
                placed.append((float(cx), float(cy), float(a), float(b), float(rng.uniform(0, math.pi))))
                break
        else:
            if strict or not placed:
                raise CryoError(f"cannot place {n_objects} toy objects in a {size}-px image")
            break
    return placed


def _toy_render(rng: np.random.Generator, size: int, layout: Sequence[tuple[float, float, float, float, float]],
                snr: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    signal = np.zeros((size, size), np.float32)
    boxes = []
    for cx, cy, a, b, ang in layout:
        c, s = math.cos(ang), math.sin(ang)
        xr = (xx - cx) * c + (yy - cy) * s
        yr = -(xx - cx) * s + (yy - cy) * c
        dist = (np.sqrt((xr / a) ** 2 + (yr / b) ** 2) - 1.0) * b       # ~px from the outer edge, < 0 inside
        dense = 0.3 * _inside(dist, -5.0) + _band(dist, -2.0, 0.0) + _band(dist, -6.0, -4.0)
        signal -= np.minimum(dense, 1.0)                                   # dark rings, slightly dark inside
        inside = dist <= 0
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        boxes.append([float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)])
    signal = cv2.GaussianBlur(signal, (0, 0), 0.7)
    sigma = math.sqrt(max(float(signal.var()), 1e-4) / snr)
    image = signal + sigma * rng.standard_normal((size, size)).astype(np.float32)
    low, high = robust_range(image)
    return to_uint8(image, low, high), np.asarray(boxes, np.float32).reshape(-1, 4)


def make_toy_image(size: int = 128, n_objects: int = 2, seed: int = 0,
                   snr: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny image of dark double rings (organelle-like, 20-50 px) on noise.

    Returns (uint8 (size, size) image, float32 (n_objects, 4) boxes [x1, y1, x2, y2], exclusive edges).
    ``snr`` is the variance of the noise-free image over the noise variance.
    """
    if not snr > 0:
        raise CryoError(f"snr must be > 0, got {snr}")
    rng = np.random.default_rng(seed)
    return _toy_render(rng, int(size), _toy_layout(rng, int(size), int(n_objects)), snr)


def write_toy_dataset(out_dir: str, n_images: int, size: int = 128, seed: int = 0, snr: float = 1.0) -> str:
    """Write ``n_images`` toy PNGs (images/toy_g{group}_z{index}.png, 4 per group: one layout, shrinking
    slightly slice to slice, fresh noise), annotations.txt (paths relative to out_dir) and annotations.split.json
    (whole groups). Returns the annotations.txt path."""
    if n_images < 1:
        raise CryoError(f"need at least one image, got {n_images}")
    rng = np.random.default_rng(seed)
    lines: list[str] = []
    groups: list[str] = []
    n_groups = int(math.ceil(n_images / TOY_IMAGES_PER_GROUP))
    written = 0
    for g in range(n_groups):
        layout = _toy_layout(rng, int(size), int(rng.integers(1, 4)), strict=False)
        group = f"toy_g{g:03d}"
        groups.append(group)
        for k in range(min(TOY_IMAGES_PER_GROUP, n_images - written)):
            shrink = 1.0 - 0.04 * k
            this = [(cx, cy, a * shrink, b * shrink, ang) for cx, cy, a, b, ang in layout]
            image, boxes = _toy_render(rng, int(size), this, snr)
            rel = f"images/{group}_z{k:02d}.png"
            write_png(os.path.join(out_dir, rel), image)
            for box in boxes:
                lines.append(f"{rel},{_fmt(box[0])},{_fmt(box[1])},{_fmt(box[2])},{_fmt(box[3])},{MITO_CLASS}")
            written += 1
    path = os.path.join(out_dir, "annotations.txt")
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
    _write_split(path, seed)
    return path
