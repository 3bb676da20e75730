"""Streaming prediction over a large MRC tomogram: slices per second and peak memory (RSS).

    python benchmarks/tomogram.py                        # 1024 x 1024 x 300 float32 (1.2 GB), 20 slices
    python benchmarks/tomogram.py --slices-to-process 0  # every slice (about 13 min on 2 loaded cores)
    python benchmarks/tomogram.py --size 512 --slices 60 --slices-to-process 6   # quick check
    python benchmarks/tomogram.py --slices-to-process 0 --precision bfloat16 --max-proposals 64 \
        --backbone-norm frozen_bn                        # the fastest settings test_frcnn.py offers

Writes a synthetic float32 tomogram (z, y, x) = (--slices, --size, --size) into a temporary folder
slab by slab (correlated noise plus a few dark membrane-bounded ellipsoids; never more than one
slab in memory, written with plain file writes so the pages do not count in this process's RSS),
then runs ``keras_frcnn_cryo.predict.predict_volume`` with an untrained Detector (speed and memory
do not depend on the weights) on ``--slices-to-process`` evenly spaced slices (``VolumeOptions.step``).

Memory is reported as the process's resident set size (RSS): before TensorFlow is imported, after
the model is built, after one warm-up batch, and the peak while predict_volume streams the volume,
sampled from /proc/self/status every ``--sample-ms`` by a thread (VmRSS, split into RssAnon:
memory the process allocated, and RssFile: pages of mapped files such as the memory-mapped
tomogram, which the kernel can drop at any time) plus ``getrusage(RUSAGE_SELF).ru_maxrss`` (the
kernel's own high-water mark for the whole run). The issue's target: peak RSS under 3 GB for the
1024 x 1024 x 300 tomogram. The temporary folder is deleted at the end unless ``--keep``.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import cv2
import mrcfile
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGET_PEAK_RSS_BYTES = 3e9          # the target for the 1024 x 1024 x 300 tomogram
PIXEL_SIZE_A = 10.0                  # header voxel size of the synthetic tomogram (Angstrom)
NOISE_CORRELATION_PX = 1.5           # Gaussian smoothing of the white noise (reconstructions are correlated)
MEMBRANE_PX = 6.0                    # membrane thickness of the dark ellipsoids
MEMBRANE_CONTRAST = 1.5              # membrane darkness, in noise standard deviations
LUMEN_CONTRAST = 0.5                 # lumen darkness, in noise standard deviations
MIB = 1024.0 ** 2


@dataclass
class Ellipsoid:
    """A dark membrane-bounded ellipsoid; centre and semi-axes in voxels, (z, y, x) order."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]


def random_ellipsoids(rng: np.random.Generator, shape: tuple[int, int, int], count: int) -> list[Ellipsoid]:
    """``count`` ellipsoids inside a (z, y, x) volume: in-plane semi-axes 4-12 % of the smaller side."""
    depth, height, width = shape
    side = min(height, width)
    out = []
    for _ in range(count):
        radii = (max(2.0, depth * rng.uniform(0.15, 0.35)), side * rng.uniform(0.04, 0.12),
                 side * rng.uniform(0.04, 0.12))
        centre = (rng.uniform(0, depth), rng.uniform(radii[1], height - radii[1]),
                  rng.uniform(radii[2], width - radii[2]))
        out.append(Ellipsoid(centre, radii))
    return out


def render_slab(rng: np.random.Generator, shape: tuple[int, int, int], z_start: int, z_stop: int,
                ellipsoids: list[Ellipsoid]) -> np.ndarray:
    """Slices ``z_start:z_stop`` of the synthetic tomogram: float32 (z_stop - z_start, y, x).

    Unit-variance correlated noise; each ellipsoid darkens its cross-section on each slice (a dark
    membrane of MEMBRANE_PX px and a slightly dark lumen). Density is dark, as in raw cryo-ET.
    """
    _, height, width = shape
    slab = rng.standard_normal((z_stop - z_start, height, width), dtype=np.float32)
    for plane in slab:
        cv2.GaussianBlur(plane, (0, 0), NOISE_CORRELATION_PX, dst=plane)
    slab /= max(float(slab.std()), 1e-12)
    for index, z in enumerate(range(z_start, z_stop)):
        for body in ellipsoids:
            (cz, cy, cx), (rz, ry, rx) = body.centre, body.radii
            section = 1.0 - ((z - cz) / rz) ** 2
            if section <= 0.0:
                continue
            ay, ax = ry * math.sqrt(section), rx * math.sqrt(section)
            y0, y1 = max(0, int(cy - ay) - 1), min(height, int(cy + ay) + 2)
            x0, x1 = max(0, int(cx - ax) - 1), min(width, int(cx + ax) + 2)
            yy = (np.arange(y0, y1, dtype=np.float32)[:, None] - cy) / ay
            xx = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx) / ax
            radius = np.sqrt(yy ** 2 + xx ** 2)                  # 1 on the section's outline
            depth_px = (1.0 - radius) * min(ay, ax)              # approximate distance inside, px
            inside = radius < 1.0
            membrane = inside & (depth_px < MEMBRANE_PX)
            slab[index, y0:y1, x0:x1] -= np.where(membrane, MEMBRANE_CONTRAST,
                                                  np.where(inside, LUMEN_CONTRAST, 0.0)).astype(np.float32)
    return slab


def write_synthetic_tomogram(path: str, shape: tuple[int, int, int], seed: int, slab: int = 16,
                             n_ellipsoids: int = 6) -> None:
    """Write a float32 (z, y, x) MRC tomogram of ``shape`` slab by slab (at most ``slab`` slices in RAM).

    mrcfile writes the header and sizes the file; the data are appended with plain writes so that
    no page of the file is mapped into this process. Header statistics are set at the end.
    """
    rng = np.random.default_rng(seed)
    bodies = random_ellipsoids(rng, shape, n_ellipsoids)
    with mrcfile.new_mmap(path, shape=shape, mrc_mode=2, overwrite=True) as mrc:
        mrc.voxel_size = PIXEL_SIZE_A
        data_offset = int(mrc.header.nbytes) + int(mrc.header.nsymbt)
    low, high, total, total_sq = np.inf, -np.inf, 0.0, 0.0
    with open(path, "r+b") as fh:
        fh.seek(data_offset)
        for start in range(0, shape[0], slab):
            block = render_slab(rng, shape, start, min(start + slab, shape[0]), bodies)
            low, high = min(low, float(block.min())), max(high, float(block.max()))
            total += float(block.sum(dtype=np.float64))
            total_sq += float(np.square(block, dtype=np.float64).sum())
            fh.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
    count = float(np.prod(shape))
    mean = total / count
    with mrcfile.mmap(path, mode="r+") as mrc:   # header only: no data page is touched
        mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = low, high, mean
        mrc.header.rms = math.sqrt(max(total_sq / count - mean ** 2, 0.0))


def read_status_kib(fields: tuple[str, ...] = ("VmRSS", "RssAnon", "RssFile")) -> dict[str, int]:
    """Current values (KiB) of the named lines of /proc/self/status (Linux)."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in fields:
                out[key] = int(rest.split()[0])
    return out


class RssSampler:
    """Thread that samples /proc/self/status every ``interval_s`` and keeps the peaks (KiB).

    ``peak`` holds the largest VmRSS, RssAnon and RssFile seen (each its own maximum);
    ``samples`` the (seconds since start, VmRSS KiB) series.
    """

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.peak: dict[str, int] = {}
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = 0.0

    def _sample(self) -> None:
        now = read_status_kib()
        for key, value in now.items():
            self.peak[key] = max(self.peak.get(key, 0), value)
        self.samples.append((time.perf_counter() - self._start, now["VmRSS"]))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._start = time.perf_counter()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def ru_maxrss_kib() -> int:
    """getrusage(RUSAGE_SELF).ru_maxrss: the process's peak RSS so far, in KiB (Linux units)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def fmt_mib(kib: float) -> str:
    """KiB -> 'N MiB'."""
    return f"{kib / 1024.0:8.0f} MiB"


def print_rss(label: str) -> dict[str, int]:
    """Print the current RSS (VmRSS, RssAnon, RssFile) under ``label`` and return it (KiB)."""
    now = read_status_kib()
    print(f"  {label:<34} VmRSS {fmt_mib(now['VmRSS'])}  (anon {fmt_mib(now['RssAnon'])}, "
          f"file {fmt_mib(now['RssFile'])})", flush=True)
    return now


def choose_step(n_slices: int, to_process: int, step: int | None) -> int:
    """The VolumeOptions.step that visits about ``to_process`` evenly spaced slices (0: all)."""
    if step is not None:
        return max(1, step)
    if to_process <= 0 or to_process >= n_slices:
        return 1
    return max(1, math.ceil(n_slices / to_process))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="x and y size of the tomogram (px)")
    parser.add_argument("--slices", type=int, default=300, help="z size of the tomogram (slices)")
    parser.add_argument("--slices-to-process", type=int, default=20,
                        help="about this many evenly spaced slices are detected (0: every slice)")
    parser.add_argument("--step", type=int, default=None, help="explicit slice step (overrides the above)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per network batch (default: VolumeOptions' default)")
    parser.add_argument("--im-size", type=int, default=600, help="Config.im_size (shorter side fed to the net)")
    parser.add_argument("--backbone-norm", default="auto", help="Config.backbone_norm (auto = group, untrained)")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                        help="Config.inference_precision (test_frcnn.py --precision)")
    parser.add_argument("--max-proposals", type=int, default=300,
                        help="Config.rpn_max_proposals_test (test_frcnn.py --max-proposals; paper 300)")
    parser.add_argument("--sample-ms", type=float, default=20.0, help="RSS sampling interval (ms)")
    parser.add_argument("--dir", default=None, help="where the temporary folder is made (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tomogram and outputs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    shape = (args.slices, args.size, args.size)
    print(f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} (1/5/15 min), {time.strftime('%Y-%m-%d %H:%M')}")
    print("RSS:", flush=True)
    print_rss("start (python + numpy + cv2)")
    work_dir = tempfile.mkdtemp(prefix="frcnn_tomogram_bench_", dir=args.dir)
    path = os.path.join(work_dir, "synthetic_tomogram.mrc")
    try:
        start = time.perf_counter()
        write_synthetic_tomogram(path, shape, args.seed)
        print(f"  {'after writing the tomogram':<34} VmRSS {fmt_mib(read_status_kib()['VmRSS'])}  "
              f"(wrote {os.path.getsize(path) / 1e9:.2f} GB, {shape[2]}x{shape[1]}x{shape[0]} float32, "
              f"in {time.perf_counter() - start:.0f} s)", flush=True)

        import tensorflow as tf

        from keras_frcnn_cryo.cli import set_seed
        from keras_frcnn_cryo.config import Config
        from keras_frcnn_cryo.model import Detector
        from keras_frcnn_cryo.predict import VolumeOptions, predict_volume

        set_seed(args.seed)
        cfg = Config(class_mapping={"mitochondrion": 0, "bg": 1}, im_size=args.im_size,
                     backbone_norm=args.backbone_norm, inference_precision=args.precision,
                     rpn_max_proposals_test=args.max_proposals)
        detector = Detector(cfg)
        print_rss("after import TF + build model")
        options = VolumeOptions(step=choose_step(shape[0], args.slices_to_process, args.step))
        if args.batch_size is not None:
            options.batch_size = args.batch_size
        warm = render_slab(np.random.default_rng(args.seed + 1), shape, 0, 1, [])[0]
        detector.detect_many([warm] * options.batch_size, cfg.detection_threshold)
        before = print_rss(f"after one warm-up batch of {options.batch_size}")
        peak_before_kib = ru_maxrss_kib()

        out_dir = os.path.join(work_dir, "predictions")
        os.makedirs(out_dir)
        with RssSampler(args.sample_ms / 1000.0) as sampler:
            start = time.perf_counter()
            summary = predict_volume(detector, path, out_dir, cfg.detection_threshold, options)
            elapsed = time.perf_counter() - start
        peak_kib = ru_maxrss_kib()
        processed = int(summary["slices_processed"])
        print_rss("after predict_volume")
        print(f"  {'peak while streaming (sampled)':<34} VmRSS {fmt_mib(sampler.peak['VmRSS'])}  "
              f"(anon {fmt_mib(sampler.peak['RssAnon'])}, file {fmt_mib(sampler.peak['RssFile'])}; "
              f"{len(sampler.samples)} samples)")
        print(f"  {'streaming adds (peak - warm)':<34} VmRSS {fmt_mib(sampler.peak['VmRSS'] - before['VmRSS'])}")
        print(f"  {'ru_maxrss (whole run)':<34}       {fmt_mib(peak_kib)}  "
              f"(before predict_volume: {fmt_mib(peak_before_kib).strip()})")
        print(f"TensorFlow {tf.__version__}; Config im_size {cfg.im_size}, backbone_norm "
              f"{cfg.resolved_backbone_norm()}, rpn_max_proposals_test {cfg.rpn_max_proposals_test}, "
              f"inference_precision {cfg.inference_precision}, untrained weights; "
              f"VolumeOptions step {options.step}, batch_size {options.batch_size}")
        rate = processed / elapsed
        print(f"speed: {processed} of {shape[0]} slices in {elapsed:.1f} s = {rate:.3f} slices/s "
              f"({elapsed / processed:.2f} s/slice, including output writing)"
              + ("" if processed == shape[0] else
                 f"; all {shape[0]} slices would take about {shape[0] / rate / 60:.1f} min"))
        peak_bytes = max(peak_kib, sampler.peak["VmRSS"]) * 1024.0
        verdict = "met" if peak_bytes < TARGET_PEAK_RSS_BYTES else "NOT met"
        print(f"target peak RSS < {TARGET_PEAK_RSS_BYTES / 1e9:.0f} GB: {verdict} "
              f"(peak {peak_bytes / 1e9:.2f} GB = {peak_bytes / 1024 ** 3:.2f} GiB"
              + ("" if processed == shape[0] else f"; only {processed} of {shape[0]} slices were read, run "
                 "with --slices-to-process 0 for the whole volume") + ")")
    finally:
        if args.keep:
            print(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
