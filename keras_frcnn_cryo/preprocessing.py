"""Image preprocessing: robust intensity normalisation, bilateral filter, histogram equalisation, SNR.

Every image (training and prediction alike) reaches the network through :func:`prepare_image`:
``resize_image`` -> ``preprocess_image`` -> grey channel repeated 3 times -> ``- img_channel_mean``
-> ``* img_scaling_factor``. Arrays are ``(rows, cols)`` = ``(y, x)``; boxes scale by
``[sx, sy, sx, sy]`` with the factors :func:`resize_image` returns.

Intensity and pixel-size units of the bilateral filter (Li et al. 2019 filter each slice, then
equalise its histogram):

* ``sigma_r`` (``Config.bilateral_sigma_r``) is an intensity difference measured in *robust standard
  deviations* of the slice: :func:`standardize` maps any input (uint8, uint16, float with arbitrary
  offset and scale) to zero median and unit ``1.4826 * MAD`` before filtering, so ``sigma_r = 1.2``
  means the same thing for every detector, file format and contrast setting.
* ``sigma_d`` is a distance in pixels of the image being filtered. The paper's images were
  3708 x 3838 px at 2.6 A/px and used ``sigma_d = 100`` px (26 nm). We filter at the working size
  (shorter side ``Config.im_size``) and scale ``sigma_d`` with the shorter side
  (``Config.effective_sigma_d``): the filter covers the same fraction of the field of view, about
  16 px at ``im_size = 600``. It is not rescaled by the pixel size (A/px) of the data.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np

from .config import Config

MAD_TO_STD = 1.4826                 # std of a Gaussian = 1.4826 * its median absolute deviation
EXACT_RADIUS_SIGMAS = 3.0           # "exact": window radius ceil(3 sigma_d) (1.1 % of the mass cut)
GRID_CELLS_PER_SIGMA_SPACE = 2.0    # "grid": spatial cell = sigma_d / 2
GRID_CELLS_PER_SIGMA_RANGE = 2.0    # "grid": range cell = sigma_r / 2
GRID_MIN_SIGMA_D = 2.0              # below this the exact filter is cheap (window <= 13 px) and used
GRID_MAX_CELLS = 1 << 24            # refuse grids above this size (raw, unnormalised data)
_REMAP_MAX_SIDE = 32000             # cv2.remap requires sides < SHRT_MAX


def _check_2d(image: np.ndarray, allow_bool: bool = True) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty 2D image, got shape {arr.shape}")
    kinds = "biuf" if allow_bool else "iuf"
    if arr.dtype.kind not in kinds:
        raise ValueError(f"expected a real-valued image, got dtype {arr.dtype}")
    return arr


def standardize(image: np.ndarray) -> np.ndarray:
    """(H, W) any real dtype -> (H, W) float32 with median 0 and robust std (1.4826 * MAD) 1.

    Falls back to the plain standard deviation when the MAD is 0 (more than half the pixels equal);
    a constant image gives zeros. Raises ValueError on non-2D or non-finite input.
    """
    arr = _check_2d(image).astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")
    centred = arr - np.median(arr)
    scale = MAD_TO_STD * float(np.median(np.abs(centred)))
    if scale <= 0.0:
        scale = float(centred.std())
    if scale <= 0.0:
        return np.zeros(arr.shape, np.float32)
    return (centred / scale).astype(np.float32)


def to_uint8(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """(H, W) real -> (H, W) uint8: the ``percentiles`` range maps linearly to 0..255, clipped.

    When both percentiles coincide the full min..max range is used; a constant image gives zeros.
    """
    arr = _check_2d(image).astype(np.float32)
    low_p, high_p = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= low_p < high_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    low, high = (float(v) for v in np.percentile(arr, [low_p, high_p]))
    if high <= low:
        low, high = float(arr.min()), float(arr.max())
    if high <= low:
        return np.zeros(arr.shape, np.uint8)
    scaled = (arr - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def equalize_histogram(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W) uint8 with an equalised histogram (cv2.equalizeHist)."""
    arr = _check_2d(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"equalize_histogram expects uint8, got {arr.dtype}")
    return cv2.equalizeHist(np.ascontiguousarray(arr))


def bilateral_filter(image: np.ndarray, sigma_r: float, sigma_d: float, method: str = "grid") -> np.ndarray:
    """Edge-preserving smoothing of a (H, W) image; returns (H, W) float32.

    Weights: ``exp(-d^2 / (2 sigma_d^2)) * exp(-dI^2 / (2 sigma_r^2))`` (d in pixels, dI in the
    image's intensity unit); borders are mirrored (OpenCV's BORDER_REFLECT_101) by both methods.

    * ``"exact"``: cv2.bilateralFilter on float32 with a circular window of diameter
      ``2 * ceil(3 sigma_d) + 1`` (the Gaussian is cut at 3 sigma, not OpenCV's default 1.5 sigma).
      Cost grows with sigma_d^2: seconds at 600 x 800 px and sigma_d = 16.
    * ``"grid"``: bilateral grid (Chen, Paris & Durand 2007), O(N): see :func:`_bilateral_grid`.
      Agrees with "exact" to about 1 % of the image std (mean absolute difference, see tests).
    """
    if method not in ("grid", "exact"):
        raise ValueError(f"unknown bilateral method {method!r} (use 'grid' or 'exact')")
    if not (math.isfinite(sigma_r) and sigma_r > 0 and math.isfinite(sigma_d) and sigma_d > 0):
        raise ValueError(f"sigma_r and sigma_d must be finite and > 0, got {sigma_r}, {sigma_d}")
    arr = np.ascontiguousarray(_check_2d(image), dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")
    if method == "exact" or sigma_d < GRID_MIN_SIGMA_D:
        diameter = 2 * math.ceil(EXACT_RADIUS_SIGMAS * sigma_d) + 1
        return cv2.bilateralFilter(arr, diameter, float(sigma_r), float(sigma_d))
    return _bilateral_grid(arr, float(sigma_r), float(sigma_d))


def _reflected_blur_matrix(nodes: int, sigma_cells: float) -> np.ndarray:
    """(nodes + 1, nodes) Gaussian blur over grid nodes 0..nodes-1 mirrored at both ends (reflect-101).

    Row i is the output node i (node ``nodes`` included, so that slicing at the last pixel can read
    its right neighbour)."""
    pad = int(math.ceil(4.0 * sigma_cells)) + 2
    source = np.arange(-pad, nodes + pad)
    if nodes > 1:
        period = 2 * (nodes - 1)
        folded = np.abs(source) % period
        folded = np.where(folded >= nodes, period - folded, folded)
    else:
        folded = np.zeros_like(source)
    out_nodes = np.arange(nodes + 1)[:, None]
    weights = np.exp(-0.5 * ((out_nodes - source[None, :]) / sigma_cells) ** 2)
    matrix = np.zeros((nodes + 1, nodes))
    for col in range(nodes):
        matrix[:, col] = weights[:, folded == col].sum(axis=1)
    return matrix


def _bilateral_grid(image: np.ndarray, sigma_r: float, sigma_d: float) -> np.ndarray:
    """Bilateral grid: splat -> blur -> slice, for a (H, W) float32 image.

    Splat: each pixel adds (value, 1) to its nearest node of a grid with spatial step about
    sigma_d / 2 (exactly (W-1)/nx and (H-1)/ny, so both image borders are nodes and mirroring the grid
    equals mirroring the image) and range step sigma_r / 2; only range levels that hold pixels are
    stored (outliers do not inflate the grid). Blur: separable Gaussian, exact dense matrices; its
    sigma is reduced by the variance the nearest-node splat and linear slicing add (step^2 / 4), so
    the overall kernel keeps sigma_d and sigma_r. Slice: trilinear interpolation; the two spatial axes
    are one cv2.remap over an atlas of the range levels, the range axis is a linear blend.
    """
    height, width = image.shape
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return image.copy()
    step_r = sigma_r / GRID_CELLS_PER_SIGMA_RANGE
    num_levels = int((high - low) / step_r) + 2
    if num_levels > GRID_MAX_CELLS:
        raise ValueError(f"intensity range {high - low:g} is too wide for sigma_r={sigma_r:g}: standardize first")
    level_pos = (image - np.float32(low)) * np.float32(1.0 / step_r)
    floor_pos = np.floor(level_pos)
    frac = level_pos - floor_pos                              # float32 in [0, 1)
    level_floor = floor_pos.astype(np.int32)
    occupied = np.append(np.bincount(level_floor.ravel()) > 0, False)
    occupied[1:] |= occupied[:-1].copy()                      # level + 1 is read when slicing
    compact = (np.cumsum(occupied) - 1).astype(np.int32)      # full level -> stored level
    kept_pos = np.flatnonzero(occupied).astype(np.float64)
    num_kept = kept_pos.size

    steps, nodes = [], []
    for size in (height, width):
        count = max(1, int(round((size - 1) / (sigma_d / GRID_CELLS_PER_SIGMA_SPACE)))) if size > 1 else 0
        steps.append((size - 1) / count if count else 1.0)
        nodes.append(count + 1)
    if nodes[0] * nodes[1] * num_kept * 2 > GRID_MAX_CELLS:
        raise ValueError(f"bilateral grid too large ({num_kept} range levels): standardize first or raise sigma_r")
    row_pos = np.arange(height, dtype=np.float32) / np.float32(steps[0])
    col_pos = np.arange(width, dtype=np.float32) / np.float32(steps[1])

    # splat (nearest node)
    tile_of = compact[level_floor]
    level_compact = tile_of + (frac >= 0.5)
    index = (np.rint(row_pos).astype(np.int32)[:, None] * (nodes[1] * num_kept)
             + np.rint(col_pos).astype(np.int32)[None, :] * num_kept + level_compact).ravel()
    size = nodes[0] * nodes[1] * num_kept
    grid = np.empty((2, size), np.float32)
    grid[0] = np.bincount(index, weights=image.ravel(), minlength=size)
    grid[1] = np.bincount(index, minlength=size)

    # blur (sigma reduced by the splat + slice variance, step^2 / 4); float32, contiguous matmuls
    def cells(cells_per_sigma: float) -> float:
        return math.sqrt(cells_per_sigma ** 2 - 0.25)

    sigma_y = cells(sigma_d / steps[0]) if height > 1 else 1.0
    sigma_x = cells(sigma_d / steps[1]) if width > 1 else 1.0
    sigma_l = cells(GRID_CELLS_PER_SIGMA_RANGE)
    range_blur = np.exp(-0.5 * ((kept_pos[:, None] - kept_pos[None, :]) / sigma_l) ** 2).astype(np.float32)
    grid = (grid.reshape(-1, num_kept) @ range_blur).reshape(2, nodes[0], nodes[1] * num_kept)  # symmetric
    grid = _reflected_blur_matrix(nodes[0], sigma_y).astype(np.float32) @ grid                # (2, y+1, x*l)
    by_x = np.ascontiguousarray(grid.reshape(2, nodes[0] + 1, nodes[1], num_kept).transpose(2, 0, 1, 3))
    grid = (_reflected_blur_matrix(nodes[1], sigma_x).astype(np.float32) @ by_x.reshape(nodes[1], -1)).reshape(
        nodes[1] + 1, 2, nodes[0] + 1, num_kept)                                               # (x+1, 2, y+1, l)

    # atlas: one (ny + 2, nx + 2) tile per stored level, channels (num_l, wt_l, num_l+1, wt_l+1);
    # tile of level l at tile row l // tiles_per_row, column l % tiles_per_row
    tile_h, tile_w = nodes[0] + 2, nodes[1] + 2
    tiles_per_row = max(1, min(num_kept, _REMAP_MAX_SIDE // tile_w))
    tile_rows = -(-num_kept // tiles_per_row)
    if tile_rows * tile_h >= _REMAP_MAX_SIDE or tile_w >= _REMAP_MAX_SIDE:
        raise ValueError(f"bilateral grid too large ({num_kept} range levels): standardize first or raise sigma_r")
    slots = tile_rows * tiles_per_row
    levels = np.zeros((2, nodes[0] + 1, nodes[1] + 1, slots + 1), np.float32)  # one empty level past the end
    levels[..., :num_kept] = grid.transpose(1, 2, 0, 3)
    atlas = np.zeros((tile_rows, tile_h, tiles_per_row, tile_w, 4), np.float32)
    for channel, (source, shift) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        by_tile = levels[source, :, :, shift:shift + slots].reshape(nodes[0] + 1, nodes[1] + 1, tile_rows,
                                                                    tiles_per_row)
        atlas[:, : nodes[0] + 1, :, : nodes[1] + 1, channel] = by_tile.transpose(2, 0, 3, 1)
    atlas = atlas.reshape(tile_rows * tile_h, tiles_per_row * tile_w, 4)

    # slice
    map_x = (tile_of % tiles_per_row).astype(np.float32) * np.float32(tile_w) + col_pos[None, :]
    if tile_rows == 1:
        map_y = np.repeat(row_pos[:, None], width, axis=1)
    else:
        map_y = (tile_of // tiles_per_row).astype(np.float32) * np.float32(tile_h) + row_pos[:, None]
    out = np.empty((height, width), np.float32)
    for top in range(0, height, _REMAP_MAX_SIDE // 2):
        rows = slice(top, top + _REMAP_MAX_SIDE // 2)
        for left in range(0, width, _REMAP_MAX_SIDE // 2):
            cols = slice(left, left + _REMAP_MAX_SIDE // 2)
            sampled = cv2.remap(atlas, map_x[rows, cols], map_y[rows, cols], cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT)
            part = frac[rows, cols]
            numerator = sampled[..., 0] + part * (sampled[..., 2] - sampled[..., 0])
            weight = sampled[..., 1] + part * (sampled[..., 3] - sampled[..., 1])
            out[rows, cols] = numerator / weight
    return out


def preprocess_image(image: np.ndarray, cfg: Config) -> np.ndarray:
    """(H, W) any real dtype -> (H, W) uint8 network-ready grey image, at the image's own resolution.

    ``cfg.preprocess``: standardize -> bilateral filter (``sigma_r = cfg.bilateral_sigma_r`` robust
    stds, ``sigma_d = cfg.effective_sigma_d(min(H, W))`` px, see the module docstring) ->
    ``to_uint8(cfg.norm_percentiles)`` -> histogram equalisation if ``cfg.histogram_equalization``.
    Otherwise: standardize -> ``to_uint8`` only. With ``cfg.dark_objects = False`` the result is
    inverted, so density is always dark for the network.
    """
    standardized = standardize(image)
    if cfg.preprocess:
        sigma_d = cfg.effective_sigma_d(min(standardized.shape))
        filtered = bilateral_filter(standardized, cfg.bilateral_sigma_r, sigma_d, cfg.bilateral_method)
        out = to_uint8(filtered, tuple(cfg.norm_percentiles))
        if cfg.histogram_equalization:
            out = equalize_histogram(out)
    else:
        out = to_uint8(standardized, tuple(cfg.norm_percentiles))
    if not cfg.dark_objects:
        out = 255 - out
    return out


def resize_scale(height: float, width: float, cfg: Config, scale: float | None = None) -> float:
    """The factor :func:`resize_image` applies to an ``height`` x ``width`` image: ``scale`` when given
    (detection matching a pixel size, see model.Detector.input_scale), else ``cfg.im_size`` / the
    shorter side, lowered so the longer side stays within ``cfg.im_max_size`` (0 = no limit)."""
    if scale is not None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"resize scale must be a positive number, got {scale}")
        return float(scale)
    factor = cfg.im_size / float(min(height, width))
    if cfg.im_max_size > 0 and max(height, width) * factor > cfg.im_max_size:
        factor = cfg.im_max_size / float(max(height, width))
    return factor


def resize_image(image: np.ndarray, cfg: Config,
                 scale: float | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize (H, W) or (H, W, C) so the shorter side is ``cfg.im_size`` and the longer at most
    ``cfg.im_max_size``, or by ``scale`` when given (:func:`resize_scale`).

    Returns ``(resized, (sx, sy))`` with ``sx = new_W / W`` and ``sy = new_H / H`` exactly: a box in
    the original image maps to ``box * [sx, sy, sx, sy]``. uint8 stays uint8, anything else becomes
    float32; cv2.INTER_AREA when shrinking, cv2.INTER_LINEAR when enlarging.
    """
    arr = np.asarray(image)
    if arr.ndim == 3:
        for channel in range(arr.shape[2]):
            _check_2d(arr[:, :, channel])
    else:
        arr = _check_2d(arr)
    arr = arr if arr.dtype == np.uint8 else arr.astype(np.float32)
    height, width = arr.shape[:2]
    scale = resize_scale(height, width, cfg, scale)
    new_w = max(1, int(round(width * scale)))
    new_h = max(1, int(round(height * scale)))
    if (new_h, new_w) == (height, width):
        resized = arr.copy()
    else:
        interpolation = cv2.INTER_AREA if new_w * new_h < width * height else cv2.INTER_LINEAR
        resized = cv2.resize(np.ascontiguousarray(arr), (new_w, new_h), interpolation=interpolation)
        if arr.ndim == 3 and resized.ndim == 2:      # cv2 drops a single channel axis
            resized = resized[:, :, None]
    return resized, (new_w / width, new_h / height)


def prepare_image(image: np.ndarray, cfg: Config,
                  scale: float | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Image -> ((H', W', 3) float32 network input, (sx, sy)); used by training and prediction.

    ``image``: (H, W) any real dtype, the grey image, repeated on the 3 channels (keras-frcnn's and
    the paper's input, ``Config.input_channels`` "repeat"); or (H, W, 3), one grey image per channel
    (three slabs of a tomogram, "slabs": see tomo_io.ImageSource). resize_image -> preprocess_image
    on each grey image -> minus ``cfg.img_channel_mean`` (channel i gets mean i, in the backbone's
    channel order) -> times ``cfg.img_scaling_factor``. ``scale``: resize factor instead of the
    im_size rule (:func:`resize_scale`).
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] != 3:
        raise ValueError(f"expected a 2D image or 3 channels, got shape {arr.shape}")
    resized, scale_xy = resize_image(arr, cfg, scale)
    mean = np.asarray(cfg.img_channel_mean, np.float32)
    if mean.shape != (3,):
        raise ValueError(f"img_channel_mean must have 3 values, got {cfg.img_channel_mean}")
    if resized.ndim == 2:
        grey = preprocess_image(resized, cfg).astype(np.float32)
        net_input = np.repeat(grey[:, :, None], 3, axis=2) - mean
    else:
        net_input = np.stack([preprocess_image(resized[:, :, c], cfg) for c in range(3)],
                             axis=2).astype(np.float32) - mean
    return net_input * np.float32(cfg.img_scaling_factor), scale_xy


def structure_level(image: np.ndarray, max_side: int, sigma: float) -> float:
    """How much low-pass structure a (H, W) slice holds: the slice shrunk (area average) to at most
    ``max_side`` px on its longer side, blurred by ``sigma`` px, then its robust spread (interquartile
    range / 1.349, so gold beads barely count). White noise averages away, specimen structure does
    not: along z, the profile rises from a tomogram's vacuum into its lamella
    (tracking.specimen_z_range). NaN when the slice holds NaN or infinite values."""
    arr = _check_2d(image).astype(np.float32)
    if not np.isfinite(arr).all():
        return float("nan")
    factor = max(arr.shape) / float(max_side)
    if factor > 1.0:
        size = (max(1, round(arr.shape[1] / factor)), max(1, round(arr.shape[0] / factor)))
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    if sigma > 0:
        arr = cv2.GaussianBlur(arr, (0, 0), float(sigma))
    q1, q3 = np.percentile(arr, [25.0, 75.0])
    return float((q3 - q1) / 1.349)


def median_snr(images: Iterable[np.ndarray]) -> float:
    """Median :func:`estimate_snr` of (H, W) images (NaN when there are none): one figure per
    tomogram or image group, as the paper relates its failures to SNR."""
    values = [estimate_snr(image) for image in images]
    return float(np.median(values)) if values else float("nan")


def estimate_snr(image: np.ndarray) -> float:
    """Single-image SNR (signal variance / noise variance) of a (H, W) image, after Thong et al. 2001.

    The autocovariance C of the mean-subtracted image at lag 0 is signal + noise variance; white noise
    adds to lag 0 only, so the noise-free C(0) is interpolated from the neighbouring lags. We take the
    lags needed directly (unbiased, from pixel products) along x and y, and interpolate with the
    symmetric 4-point (cubic Lagrange) rule through lags -2, -1, 1, 2:
    ``C0_signal = (4 C(1) - C(2)) / 3``, exact when C is quadratic in the lag near 0 (smooth signal),
    averaged over both axes. Assumes the noise is white (uncorrelated between neighbouring pixels).
    Returns ``inf`` for a noise-free estimate, 0.0 when no signal is detected, NaN for a constant image.
    """
    arr = _check_2d(image).astype(np.float64)
    if min(arr.shape) < 3:
        raise ValueError(f"estimate_snr needs an image at least 3 x 3, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")
    centred = arr - arr.mean()
    total = float(np.mean(centred * centred))
    if total <= 0.0:
        return float("nan")
    lag1 = 0.5 * (np.mean(centred[:, 1:] * centred[:, :-1]) + np.mean(centred[1:, :] * centred[:-1, :]))
    lag2 = 0.5 * (np.mean(centred[:, 2:] * centred[:, :-2]) + np.mean(centred[2:, :] * centred[:-2, :]))
    signal = (4.0 * float(lag1) - float(lag2)) / 3.0
    if signal <= 0.0:
        return 0.0
    noise = total - signal
    return float("inf") if noise <= 0.0 else signal / noise
