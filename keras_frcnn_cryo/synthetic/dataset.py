"""Synthetic data: one tomogram end to end, a montage of it, and a dataset on disk with its command line."""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from .. import pictures, tomo_io
from ..atomic import write_bytes_atomic
from ..errors import CryoError
from .files import robust_range, to_uint8, write_mrc, write_png, _fmt, _write_split
from .groundtruth import object_summaries, slice_boxes, tilt_boxes
from .imaging import add_noise, apply_ctf, project_tilt_series, reconstruct_wbp, tilt_angles
from .params import (
    DEFAULT_PIXEL_SIZE_A, DEFAULT_SHAPE, DEFAULT_SLICE_STEP, DROPLET_CLASS, MITO_CLASS, PARAMS,
    SimulationParams, TOY_IMAGES_PER_GROUP,
)
from .phantom import build_phantom
from .toy import write_toy_dataset


# ------------------------------------------------------------------------------------------
# public API: one tomogram
# ------------------------------------------------------------------------------------------
def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(v) != v for v in shape):
        raise CryoError(f"shape must be three integers (z, y, x), got {tuple(shape)}")
    nz, ny, nx = (int(v) for v in shape)
    if nz < 4 or ny < 16 or nx < 16:
        raise CryoError(f"shape {tuple(shape)} too small (need z >= 4, y >= 16, x >= 16)")
    return nz, ny, nx


def generate_tomogram(shape: Sequence[int] = DEFAULT_SHAPE, pixel_size_a: float = DEFAULT_PIXEL_SIZE_A,
                      snr: float = 0.1, n_mito: int | None = None, seed: int = 0,
                      tilt_range: tuple[float, float] = (-60.0, 60.0), tilt_step: float = 1.5,
                      second_class: bool = False, *, keep_clean: bool = False, return_masks: bool = False,
                      params: SimulationParams = PARAMS, specimen_slices: int | None = None) -> dict[str, Any]:
    """Simulate one tomogram with its tilt series and ground truth (deterministic for a seed).

    ``specimen_slices``: the specimen (the lamella) fills this many central slices of the ``shape[0]``
    reconstructed ones, with vacuum above and below, as in a tomogram reconstructed thicker than its
    lamella (None: all of them). Same parity as ``shape[0]``, so the lamella sits exactly centred: the
    tilt series is then identical to that of ``shape`` with ``specimen_slices`` slices and the same
    seed, and only the reconstruction is thicker (its extra slices hold the missing wedge's ghosts).

    Returns a dict: 'tomogram' float32 (z, y, x), standardised (mean 0, std 1), density dark;
    'tilts' float32 (n_tilts, y, x), density dark, scaled by the noisy series' std; 'angles' (degrees);
    'objects' [{'class', 'box3d': [x1, y1, z1, x2, y2, z2], 'incomplete', 'cut_z'}];
    'slice_boxes' {z: [{'class', 'x1', 'y1', 'x2', 'y2'}]}; 'tilt_boxes' {tilt index: [...]};
    'pixel_size_a', 'snr', 'specimen_z' [first, last + 1] (the lamella's slices). keep_clean adds 'tilts_clean' (noise-free, same scale as 'tilts');
    return_masks adds 'masks' ([{'class', 'mask' bool (z, y, x), 'origin' (z, y, x) in field voxels}],
    the masks extend beyond the field in x where the object does).
    """
    nz, ny, nx = _check_shape(shape)
    depth, pad = _specimen_extent(nz, specimen_slices)
    if not pixel_size_a > 0:
        raise CryoError(f"pixel size must be > 0 A, got {pixel_size_a}")
    if not snr > 0:
        raise CryoError(f"snr must be > 0, got {snr}")
    if n_mito is not None and not 0 <= int(n_mito) <= 50:
        raise CryoError(f"n_mito must be in 0..50, got {n_mito}")
    angles = tilt_angles(tilt_range, tilt_step)
    rng = np.random.default_rng(seed)
    max_tilt = max(abs(a) for a in angles)
    phantom = build_phantom((depth, ny, nx), pixel_size_a, rng, n_mito, second_class, max_tilt, params)
    projections = project_tilt_series(phantom.density, angles, nx)
    del phantom.density
    clean = apply_ctf(projections, pixel_size_a, params)
    del projections
    noisy = add_noise(clean, snr, rng)
    scale = 1.0 / max(float(noisy.std()), 1e-12)
    noisy *= scale
    tomogram = reconstruct_wbp(noisy, angles, nz)
    tomogram -= tomogram.mean()
    tomogram /= max(float(tomogram.std()), 1e-12)

    min_area_px = params.min_area_nm2 / (pixel_size_a / 10.0) ** 2
    summaries = object_summaries(phantom.objects, (depth, ny, nx))     # cut_z: by the lamella's surfaces
    kept = [(o, s) for o, s in zip(phantom.objects, summaries) if s is not None]
    for obj, summary in kept:                                           # specimen -> reconstruction slices
        obj["origin"] = (obj["origin"][0] + pad, *obj["origin"][1:])
        summary["box3d"][2] += pad
        summary["box3d"][5] += pad
    labelled = [o for o, _ in kept]
    result: dict[str, Any] = {
        "tomogram": tomogram,
        "tilts": noisy,
        "angles": [float(a) for a in angles],
        "objects": [s for _, s in kept],
        "slice_boxes": slice_boxes(labelled, (nz, ny, nx), min_area_px),
        "tilt_boxes": tilt_boxes(labelled, (nz, ny, nx), angles, min_area_px),
        "pixel_size_a": float(pixel_size_a),
        "snr": float(snr),
        "specimen_z": [pad, pad + depth],
    }
    if keep_clean:
        result["tilts_clean"] = clean * np.float32(scale)
    if return_masks:
        result["masks"] = [{"class": o["class"], "mask": o["mask"], "origin": o["origin"]} for o in labelled]
    return result


def _specimen_extent(nz: int, specimen_slices: int | None) -> tuple[int, int]:
    """(specimen depth, vacuum slices above it) for a reconstruction of ``nz`` slices."""
    if specimen_slices is None:
        return nz, 0
    depth = int(specimen_slices)
    if depth != specimen_slices or not 4 <= depth <= nz or (nz - depth) % 2:
        raise CryoError(f"specimen slices must be an integer in 4..{nz} with the parity of the {nz} slices "
                        f"(so the lamella sits centred), got {specimen_slices}")
    return depth, (nz - depth) // 2


CLASS_COLOURS = {MITO_CLASS: (40, 220, 40), DROPLET_CLASS: (0, 140, 255)}


def _draw_boxes(grey: np.ndarray, boxes: Sequence[dict[str, Any]], title: str) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) BGR with the ground-truth boxes in CLASS_COLOURS and ``title`` on top."""
    canvas = pictures.to_bgr(grey)
    for box in boxes:
        pictures.draw_box(canvas, (box["x1"], box["y1"], box["x2"], box["y2"]),
                          CLASS_COLOURS.get(box["class"], (0, 0, 255)), "")
    return pictures.add_title(canvas, title)


def render_preview(result: dict[str, Any], n_slices: int = 4, n_tilts: int = 3,
                   smooth_sigma: float = 1.5) -> np.ndarray:
    """BGR uint8 preview of a :func:`generate_tomogram` result with the ground-truth boxes drawn.

    Rows: ``n_slices`` tomogram slices (15-85 % of the depth); the same slices Gaussian-smoothed by
    ``smooth_sigma`` px (a preview of what a denoised slice shows; row skipped when 0); ``n_tilts`` tilt
    images from the first to the last angle. Each panel is scaled by its own robust percentiles.
    """
    tomo, tilts = result["tomogram"], result["tilts"]
    nz = tomo.shape[0]
    zs = np.linspace(nz * 0.15, nz * 0.85, n_slices).astype(int)
    ts = np.linspace(0, len(tilts) - 1, n_tilts).astype(int)
    rows = [[(tomo[z], result["slice_boxes"].get(int(z), []), f"z={z}") for z in zs]]
    if smooth_sigma > 0:
        rows.append([(cv2.GaussianBlur(tomo[z], (0, 0), smooth_sigma), result["slice_boxes"].get(int(z), []),
                      f"z={z} smoothed") for z in zs])
    rows.append([(tilts[i], result["tilt_boxes"].get(int(i), []), f"tilt {result['angles'][i]:+.1f}") for i in ts])
    panels = []
    for row in rows:
        imgs = [_draw_boxes(to_uint8(img, *robust_range(img)), boxes, title) for img, boxes, title in row]
        panels.append(np.concatenate(imgs, axis=1))
    width = max(p.shape[1] for p in panels)
    panels = [np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0))) for p in panels]
    return np.concatenate(panels, axis=0)



def write_dataset(out_dir: str, n_tomograms: int, seed: int = 0, shape: Sequence[int] = DEFAULT_SHAPE,
                  snr_range: tuple[float, float] = (0.06, 0.12), slice_step: int = DEFAULT_SLICE_STEP,
                  second_class: bool = False, pixel_size_a: float = DEFAULT_PIXEL_SIZE_A,
                  tilt_range: tuple[float, float] = (-60.0, 60.0), tilt_step: float = 1.5,
                  progress: bool = True, test_fraction: float | None = None,
                  specimen_slices: int | None = None) -> dict[str, Any]:
    """Simulate ``n_tomograms`` tomograms and write a training set under ``out_dir``.

    ``specimen_slices``: the lamella fills that many central slices, vacuum the rest
    (:func:`generate_tomogram`); slices are written and labelled through the whole depth either way.

    Layout (paths in text files are relative to out_dir; slice numbers and tilt indices 0-based):
      tomograms/tomo_NN.mrc   float32 (z, y, x), voxel_size set; tilts/tomo_NN.mrc (+ .tlt, one angle per line)
      images/tomo_NN_zKKKK.png  8-bit slices every ``slice_step`` (robust percentiles of the whole tomogram),
                              each with a sidecar .png.json naming its tomogram and slice (tomo_io.slice_sidecar)
      annotations.txt         ``path,x1,y1,x2,y2,class``; an image without objects as ``path,,,,,``
      annotations_3d.csv      tomogram,class,x1,y1,z1,x2,y2,z2,incomplete (exclusive upper edges)
      tilt_annotations.csv    tomogram,tilt_index,angle,class,x1,y1,x2,y2 (boxes on the tilt images)
      annotations.split.json  whole tomograms to train/test (seeded; ``test_fraction`` of them to test,
                              default Config.test_fraction; splits.py format)
      metadata.json           per tomogram: snr, seed, objects; generator settings
    Returns a summary dict (paths and counts).
    """
    nz, ny, nx = _check_shape(shape)
    _specimen_extent(nz, specimen_slices)
    if n_tomograms < 1:
        raise CryoError(f"need at least one tomogram, got {n_tomograms}")
    if slice_step < 1:
        raise CryoError(f"slice_step must be >= 1, got {slice_step}")
    lo_snr, hi_snr = float(snr_range[0]), float(snr_range[1])
    if not 0 < lo_snr <= hi_snr:
        raise CryoError(f"bad SNR range {snr_range} (need 0 < min <= max)")
    for sub in ("tomograms", "tilts", "images"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    digits = max(2, len(str(n_tomograms - 1)))
    rng = np.random.default_rng(seed)
    snrs = rng.uniform(lo_snr, hi_snr, n_tomograms)
    ann_lines: list[str] = []
    csv3d = ["tomogram,class,x1,y1,z1,x2,y2,z2,incomplete"]
    csv_tilt = ["tomogram,tilt_index,angle,class,x1,y1,x2,y2"]
    meta: dict[str, Any] = {"generator": "keras_frcnn_cryo.synthetic", "seed": int(seed), "shape": [nz, ny, nx],
                            "pixel_size_a": float(pixel_size_a), "slice_step": int(slice_step),
                            "polarity": "density dark", "slice_numbering": "0-based",
                            "specimen_slices": int(specimen_slices if specimen_slices is not None else nz),
                            "tomograms": {}}
    names, tomo_paths, tilt_paths = [], [], []
    n_images = n_boxes = 0
    class_counts: dict[str, int] = {}
    started = time.time()
    for i in tqdm(range(n_tomograms), desc="tomograms", unit="tomogram", disable=not progress):
        name = f"tomo_{i:0{digits}d}"
        tomo_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        result = generate_tomogram((nz, ny, nx), pixel_size_a, float(snrs[i]), None, tomo_seed, tilt_range,
                                   tilt_step, second_class, specimen_slices=specimen_slices)
        tomo_path = os.path.join(out_dir, "tomograms", name + ".mrc")
        tilt_path = os.path.join(out_dir, "tilts", name + ".mrc")
        write_mrc(tomo_path, result["tomogram"], pixel_size_a)
        write_mrc(tilt_path, result["tilts"], pixel_size_a, image_stack=True)
        write_bytes_atomic(os.path.join(out_dir, "tilts", name + ".tlt"),
                      "".join(f"{a:.2f}\n" for a in result["angles"]).encode())
        low, high = robust_range(result["tomogram"])
        for z in range(slice_step // 2, nz, slice_step):
            rel = f"images/{name}_z{z:04d}.png"
            write_png(os.path.join(out_dir, rel), to_uint8(result["tomogram"][z], low, high))
            tomo_io.write_sidecar(os.path.join(out_dir, rel), tomo_io.slice_sidecar(
                f"../tomograms/{name}.mrc", "tomogram", z, (nz, ny, nx), (ny, nx), pixel_size_a))
            n_images += 1
            boxes = result["slice_boxes"][z]
            if not boxes:
                ann_lines.append(f"{rel},,,,,")
            for box in boxes:
                coords = ",".join(_fmt(box[c]) for c in ("x1", "y1", "x2", "y2"))
                ann_lines.append(f"{rel},{coords},{box['class']}")
                class_counts[box["class"]] = class_counts.get(box["class"], 0) + 1
                n_boxes += 1
        for obj in result["objects"]:
            csv3d.append(",".join([name, obj["class"], *(_fmt(v) for v in obj["box3d"]), str(int(obj["incomplete"]))]))
        for k, boxes in result["tilt_boxes"].items():
            for box in boxes:
                csv_tilt.append(",".join([name, str(k), f"{result['angles'][k]:.2f}", box["class"],
                                          *(_fmt(box[c]) for c in ("x1", "y1", "x2", "y2"))]))
        meta["tomograms"][name] = {"seed": tomo_seed, "snr": float(snrs[i]), "n_tilts": len(result["angles"]),
                                   "specimen_z": result["specimen_z"], "objects": result["objects"]}
        names.append(name)
        tomo_paths.append(tomo_path)
        tilt_paths.append(tilt_path)
    paths = {
        "annotations": os.path.join(out_dir, "annotations.txt"),
        "annotations_3d": os.path.join(out_dir, "annotations_3d.csv"),
        "tilt_annotations": os.path.join(out_dir, "tilt_annotations.csv"),
        "metadata": os.path.join(out_dir, "metadata.json"),
    }
    write_bytes_atomic(paths["annotations"], ("\n".join(ann_lines) + "\n").encode())
    write_bytes_atomic(paths["annotations_3d"], ("\n".join(csv3d) + "\n").encode())
    write_bytes_atomic(paths["tilt_annotations"], ("\n".join(csv_tilt) + "\n").encode())
    split = _write_split(paths["annotations"], seed, test_fraction)
    paths["split"] = split["path"]
    write_bytes_atomic(paths["metadata"], (json.dumps(meta, indent=2) + "\n").encode())
    return {**paths, "out_dir": out_dir, "tomograms": tomo_paths, "tilt_series": tilt_paths, "names": names,
            "n_images": n_images, "n_boxes": n_boxes, "class_counts": class_counts,
            "n_objects": sum(len(v["objects"]) for v in meta["tomograms"].values()),
            "split_counts": {"train": len(split["train"]), "test": len(split["test"])},
            "test_tomograms": split["test"],
            "seconds": round(time.time() - started, 1)}


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m keras_frcnn_cryo.synthetic``."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_frcnn_cryo.synthetic",
        description="Write a synthetic cryo-ET dataset (tomograms, tilt series, slice PNGs, boxes, split).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tomograms", type=int, default=6, help="number of tomograms (toy: number of groups)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=DEFAULT_SHAPE[1], help="slice width and height (px)")
    parser.add_argument("--slices", type=int, default=DEFAULT_SHAPE[0], help="slices per tomogram (z)")
    parser.add_argument("--snr-min", type=float, default=0.06, help="lowest tilt-image SNR")
    parser.add_argument("--snr-max", type=float, default=0.12, help="highest tilt-image SNR")
    parser.add_argument("--apix", type=float, default=DEFAULT_PIXEL_SIZE_A, help="pixel size (A/px)")
    parser.add_argument("--specimen-slices", type=int, default=None,
                        help="the lamella fills this many central slices, vacuum the rest, as in a tomogram "
                             "reconstructed thicker than its lamella (same parity as --slices; default: all)")
    parser.add_argument("--slice-step", type=int, default=DEFAULT_SLICE_STEP, help="write every n-th slice as PNG")
    parser.add_argument("--tilt-step", type=float, default=1.5, help="tilt increment (degrees)")
    parser.add_argument("--max-tilt", type=float, default=60.0, help="tilt range is -max..+max (degrees)")
    parser.add_argument("--second-class", action="store_true", help="also label lipid droplets (lipid_droplet)")
    parser.add_argument("--toy", action="store_true",
                        help=f"write the toy 2D dataset instead ({TOY_IMAGES_PER_GROUP} images per group, --size px)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(args: argparse.Namespace) -> int:
    """``python -m keras_frcnn_cryo.synthetic``: write a synthetic dataset (or the toy one)."""
    if args.toy:
        path = write_toy_dataset(args.out, args.tomograms * TOY_IMAGES_PER_GROUP, args.size, args.seed)
        print(f"wrote {path}")
        return 0
    summary = write_dataset(args.out, args.tomograms, seed=args.seed, shape=(args.slices, args.size, args.size),
                            snr_range=(args.snr_min, args.snr_max), slice_step=args.slice_step,
                            second_class=args.second_class, pixel_size_a=args.apix,
                            tilt_range=(-args.max_tilt, args.max_tilt), tilt_step=args.tilt_step,
                            progress=not args.quiet, specimen_slices=args.specimen_slices)
    print(f"wrote {len(summary['names'])} tomograms, {summary['n_images']} images, {summary['n_boxes']} boxes "
          f"({summary['class_counts']}) to {args.out}; split {summary['split_counts']}")
    return 0


def console_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one ``error:`` line on bad input)."""
    from ..cli import run_cli
    return run_cli(main, build_parser(), argv)
