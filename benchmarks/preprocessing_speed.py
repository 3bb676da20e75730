"""Bilateral filter speed on a 1024 x 1024 slice: bilateral grid ("grid") against cv2.bilateralFilter ("exact").

    python benchmarks/preprocessing_speed.py                      # about 1.5-2.5 minutes on 2 loaded cores
    python benchmarks/preprocessing_speed.py --exact-repeats 10   # a median over 10 exact runs (12-20 min)

Input: one 1024 x 1024 float32 slice of the synthetic tomogram of benchmarks/tomogram.py (correlated
noise and dark membrane-bounded ellipsoids), standardised as the package does
(``preprocessing.standardize``: median 0, robust std 1). Both methods run through
``preprocessing.bilateral_filter`` with the Config's values: sigma_r = ``Config.bilateral_sigma_r``
(1.2 robust stds) and sigma_d = ``Config.effective_sigma_d(1024)`` (the paper's 100 px scaled to a
1024 px image, 27.6 px). "exact" is cv2.bilateralFilter with the package's window rule (diameter
2 * ceil(3 sigma_d) + 1 = 167 px): 70-120 s per call on 2 cores, so by default it is
timed once (``--exact-repeats``); "grid" is timed ``--repeats`` times after ``--warmup`` calls and
the median is printed. Also printed: the whole per-slice preprocessing that prediction runs
(``preprocessing.prepare_image``: resize 1024 -> Config.im_size, standardise, grid filter, 8 bits,
histogram equalisation, 3 channels), and how closely grid agrees with exact (mean absolute
difference / std of the standardised input) on a 256 x 256 crop and on the whole timed image.
Target from the issue: grid <= 50 ms per 1024 x 1024 image.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tomogram import random_ellipsoids, render_slab

from keras_frcnn_cryo import preprocessing
from keras_frcnn_cryo.config import Config

TARGET_GRID_MS = 50.0     # the target per 1024 x 1024 image
SIZE = 1024
CROP = 256


def timed_runs(fn: Callable[[], np.ndarray], repeats: int, warmup: int) -> tuple[list[float], np.ndarray]:
    """(seconds of each of ``repeats`` calls after ``warmup`` untimed calls, the last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def agreement(grid: np.ndarray, exact: np.ndarray, reference: np.ndarray) -> float:
    """mean |grid - exact| / std(reference): the grid's error in units of the input's spread."""
    return float(np.mean(np.abs(grid.astype(np.float64) - exact)) / reference.std())


def describe(times: list[float]) -> str:
    """'median X ms (min Y, max Z, n N)'."""
    ms = np.asarray(times) * 1000.0
    return f"median {np.median(ms):9.1f} ms  (min {ms.min():.1f}, max {ms.max():.1f}, n {len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed grid (and prepare_image) calls")
    parser.add_argument("--warmup", type=int, default=3, help="untimed grid calls first")
    parser.add_argument("--exact-repeats", type=int, default=1,
                        help="timed cv2.bilateralFilter calls at 1024 px (70-120 s each here); 0 skips it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = Config()
    sigma_r = cfg.bilateral_sigma_r
    sigma_d = cfg.effective_sigma_d(SIZE)
    diameter = 2 * math.ceil(preprocessing.EXACT_RADIUS_SIGMAS * sigma_d) + 1
    print(f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, OpenCV {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), numpy {np.__version__}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} (1/5/15 min), {time.strftime('%Y-%m-%d %H:%M')}")
    rng = np.random.default_rng(args.seed)
    shape = (64, SIZE, SIZE)
    raw = render_slab(rng, shape, shape[0] // 2, shape[0] // 2 + 1, random_ellipsoids(rng, shape, 6))[0]
    image = preprocessing.standardize(raw)
    print(f"input: {SIZE}x{SIZE} float32 synthetic slice, standardised (range {image.min():.1f}..{image.max():.1f}); "
          f"sigma_r {sigma_r} robust stds, sigma_d {sigma_d:.2f} px (Config.effective_sigma_d({SIZE})); "
          f"exact window diameter {diameter} px")

    grid_times, grid_out = timed_runs(
        lambda: preprocessing.bilateral_filter(image, sigma_r, sigma_d, "grid"), args.repeats, args.warmup)
    grid_ms = float(np.median(grid_times)) * 1000.0
    print(f"grid  (bilateral grid)            {describe(grid_times)}", flush=True)
    prep_cfg = Config(im_size=cfg.im_size)
    prep_times, _ = timed_runs(lambda: preprocessing.prepare_image(raw, prep_cfg)[0], args.repeats, 1)
    print(f"prepare_image ({SIZE} -> {prep_cfg.im_size} px, grid)  {describe(prep_times)}", flush=True)

    crop = image[:CROP, :CROP]
    crop_exact = preprocessing.bilateral_filter(crop, sigma_r, sigma_d, "exact")
    crop_grid = preprocessing.bilateral_filter(crop, sigma_r, sigma_d, "grid")
    print(f"agreement on a {CROP}x{CROP} crop: mean |grid - exact| / std(input) = "
          f"{agreement(crop_grid, crop_exact, crop):.4f}", flush=True)

    if args.exact_repeats > 0:
        exact_times, exact_out = timed_runs(
            lambda: preprocessing.bilateral_filter(image, sigma_r, sigma_d, "exact"), args.exact_repeats, 0)
        exact_ms = float(np.median(exact_times)) * 1000.0
        print(f"exact (cv2.bilateralFilter, d {diameter}) {describe(exact_times)}")
        print(f"agreement on the whole {SIZE}x{SIZE} image: mean |grid - exact| / std(input) = "
              f"{agreement(grid_out, exact_out, image):.4f}")
        print(f"grid is {exact_ms / grid_ms:.0f}x faster than exact")
    verdict = "met" if grid_ms <= TARGET_GRID_MS else "NOT met"
    print(f"target grid <= {TARGET_GRID_MS:.0f} ms per {SIZE}x{SIZE} image: {verdict} ({grid_ms:.1f} ms)")


if __name__ == "__main__":
    main()
