"""Prediction (test_frcnn.py) with the one :class:`~keras_frcnn_cryo.model.Detector`.

* Images: one ``detections.csv`` (image, x1, y1, x2, y2, class, score) and one overlay PNG each.
* MRC tomograms and tilt series (:func:`predict_volume`): slices streamed from the memory map and
  batched through the backbone; 2D boxes, 3D objects linked across slices (tracking.py), crYOLO
  .cbox, IMOD .coords, STAR, overlays, LabelImg files; ``NAME.done.json`` marks a complete set.

Boxes are floats in the input's own pixels ([x1, y1, x2, y2], 0-based, x2/y2 exclusive). Every
file is written under a temporary name and renamed when complete (atomic.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from . import pictures, preprocessing, tomo_io, tracking, writers
from .atomic import check_output_dir
from .config import CHOICES, apply_overrides, load_config
from .detections_csv import (DETECTIONS_CSV, OBJECTS3D_CSV_SUFFIX, TOMOGRAM_CSV_SUFFIX, shard_csv_name,
                             write_detections_csv)
from .errors import CryoError

if TYPE_CHECKING:  # the model module imports Keras and TensorFlow: only load_detector needs it at run time,
    from .model import Detections, Detector  # so measure_map.py scores a detections CSV without them


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of test_frcnn.py."""
    p = argparse.ArgumentParser(description="Detect organelles in images with a trained model.")
    p.add_argument("-p", "--path", required=True,
                   help="an image, an MRC tomogram or tilt series (.mrc .rec .st ...), or a folder of either")
    p.add_argument("--config_filename", default="config.pickle", help="config written by training")
    p.add_argument("--model", default=None, help="weights (.weights.h5); default: the config's model_path")
    p.add_argument("--threshold", type=float, default=None,
                   help="minimum score of a detection (default: the config's detection_threshold)")
    p.add_argument("--output", default="results", help="output folder (detections.csv, overlays/)")
    p.add_argument("--no-overlays", action="store_true", help="write no overlay pictures")
    p.add_argument("--overlay-threshold", type=float, default=None,
                   help="minimum score of the boxes drawn on overlays (default: the config's detection_threshold, "
                        "whatever --threshold puts in the CSV)")
    add_detector_options(p)
    volumes = p.add_argument_group("tomograms and tilt series (MRC input)")
    volumes.add_argument("--kind", default="auto", choices=["auto", "tomogram", "tilt_series"],
                         help="auto: .st/.mrcs/.ali or a .tlt beside the file mean a tilt series")
    volumes.add_argument("--z-range", type=int, nargs=2, metavar=("FIRST", "STOP"), default=None,
                         help="slices FIRST <= z < STOP only (0-based)")
    volumes.add_argument("--step", type=int, default=1, help="every n-th slice")
    volumes.add_argument("--slab", type=int, default=1, help="average N neighbouring slices (raises SNR)")
    volumes.add_argument("--bin", type=int, default=1, dest="binning", help="bin slices by B in x and y")
    volumes.add_argument("--apix", type=float, default=None, help="pixel size (A), overrides the MRC header")
    volumes.add_argument("--batch-size", type=int, default=4, help="slices per backbone batch")
    volumes.add_argument("--overlay-slices", type=int, default=8, help="overlay pictures per tomogram")
    volumes.add_argument("--labelimg", action="store_true",
                         help="also write PNG + LabelImg XML of every slice with detections (to correct and retrain)")
    volumes.add_argument("--resume", action="store_true", help="skip inputs whose outputs are already complete")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="do part K (0-based) of N: the sorted inputs are dealt round-robin to N parts, so N "
                        "copies (a SLURM array, one process per GPU) can write into one --output folder; "
                        "images go to detections.shard-K-of-N.csv, which measure_map.py --detections FOLDER merges")
    return p


def add_detector_options(p: argparse.ArgumentParser) -> None:
    """Test-time settings of the Detector (test_frcnn.py and measure_map.py), each overriding the
    config's value: --max-proposals, --min-proposal-score, --precision, --views, --set."""
    p.add_argument("--max-proposals", type=int, default=None,
                   help="proposals through the classifier head per image (default: the config's "
                        "rpn_max_proposals_test, the paper's 300); fewer is faster")
    p.add_argument("--min-proposal-score", type=float, default=None,
                   help="proposals with RPN objectness below this skip the classifier head (default: the "
                        "config's rpn_min_score_test, 0 = none, the paper's); faster on slices with few objects")
    p.add_argument("--precision", choices=CHOICES["inference_precision"], default=None,
                   help="arithmetic of the detector (default: the config's inference_precision, float32 unless set); "
                        "bfloat16 is faster on CPUs with AVX512-BF16/AMX, scores differ slightly")
    p.add_argument("--views", choices=list(CHOICES["detection_views"]), default=None,
                   help="test-time augmentation (default: the config's detection_views): detect each image also "
                        "mirrored on its diagonal (transpose: 2 views) or in all 8 flips and quarter turns "
                        "(dihedral) and fuse the views' boxes; N views take N times as long; none: once")
    p.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE", dest="overrides",
                   help="override a test-time Config field of the trained model, e.g. detection_nms_overlap=0.3 "
                        "(repeatable; see config.py)")
    p.add_argument("--no-pixel-size-match", dest="pixel_size_match", action="store_false",
                   help="resize inputs by the config's im_size only, even when their pixel size (MRC header, "
                        "--apix, PNG sidecar) and the training's are known")


def load_detector(config_filename: str, model_path: str | None, max_proposals: int | None = None,
                  precision: str | None = None, min_proposal_score: float | None = None,
                  overrides: list[str] | None = None, pixel_size_match: bool = True,
                  views: str | None = None) -> Detector:
    """Config + weights -> Detector (CryoError naming the file on any problem).

    ``max_proposals`` overrides the config's ``rpn_max_proposals_test`` (proposals through the head),
    ``min_proposal_score`` its ``rpn_min_score_test``, ``precision`` its ``inference_precision``
    ("float32" or "bfloat16"); ``overrides`` are ``FIELD=VALUE`` strings (config.apply_overrides);
    ``pixel_size_match`` False turns off resizing inputs of known pixel size to the training's scale;
    ``views`` overrides ``detection_views`` (test-time augmentation: "none", "transpose", "dihedral").
    """
    cfg = load_config(config_filename)
    if max_proposals is not None:
        if max_proposals < 1:
            raise CryoError(f"--max-proposals must be >= 1, got {max_proposals}")
        cfg.rpn_max_proposals_test = max_proposals
    if min_proposal_score is not None:
        if not 0.0 <= min_proposal_score < 1.0:
            raise CryoError(f"--min-proposal-score must lie in [0, 1), got {min_proposal_score}")
        cfg.rpn_min_score_test = min_proposal_score
    if precision is not None:
        cfg.inference_precision = precision
    if views is not None:
        cfg.detection_views = views
    apply_overrides(cfg, overrides)
    try:
        cfg.validate()
    except CryoError as exc:
        raise CryoError(str(exc), config_filename) from None
    cfg.match_pixel_size = cfg.match_pixel_size and pixel_size_match
    weights = model_path or cfg.model_path
    if not weights:
        raise CryoError("no model weights given and the config names none", config_filename)
    from .model import Detector
    return Detector(cfg, weights_path=weights)


def detect_images(detector: Detector, paths: list[str], min_score: float,
                  on_result=None, desc: str = "detect") -> dict[str, Detections]:
    """Run the detector on every image path; ``on_result(path, image, dets)`` is called per image with
    the 2D image (with ``input_channels`` "slabs", the slab at the slice).

    Each image is read as the model was trained (tomo_io.ImageSource of the detector's config) and,
    when its sidecar gives its pixel size, resized to the training's scale (Detector.input_scale)."""
    results: dict[str, Detections] = {}
    source = tomo_io.image_source(detector.cfg)
    try:
        for path in tqdm(paths, desc=desc, unit="img"):
            image = source(path)
            dets = detector.detect(image, min_score=min_score, pixel_size_a=tomo_io.image_pixel_size(path))
            results[path] = dets
            if on_result is not None:
                on_result(path, image if image.ndim == 2 else image[:, :, 1], dets)
    finally:
        source.close()
    return results


def predict_images(detector: Detector, paths: list[str], out_dir: str, threshold: float,
                   root: str | None = None, overlays: bool = True, overlay_threshold: float | None = None,
                   csv_name: str = DETECTIONS_CSV) -> str:
    """Detect in ``paths``; write ``out_dir``/``csv_name`` and ``out_dir``/overlays/*.png. Returns the CSV path.

    CSV image names are relative to ``root`` (default: absolute paths). Overlays show the boxes of
    score >= ``overlay_threshold`` (default: the config's detection_threshold). The CSV is written
    last and atomically: when it exists, every image of ``paths`` is in it.
    """
    if not 0.0 <= threshold <= 1.0:
        raise CryoError(f"--threshold must lie in [0, 1], got {threshold}")
    shown = overlay_score(detector.cfg, overlay_threshold)
    check_output_dir(out_dir)
    overlay_dir = os.path.join(out_dir, "overlays")
    if overlays:
        os.makedirs(overlay_dir, exist_ok=True)

    def save_overlay(path: str, image: np.ndarray, dets: Detections) -> None:
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        pictures.write_png(os.path.join(overlay_dir, name),
                           pictures.render_overlay(image, dets.boxes, dets.labels, dets.scores, dets.class_names,
                                                   min_score=shown))

    results = detect_images(detector, paths, threshold, on_result=save_overlay if overlays else None)
    csv_path = os.path.join(out_dir, csv_name)
    rows = write_detections_csv(csv_path, results, relative_to=root)
    print(f"{rows} detections (score >= {threshold:g}) in {len(paths)} images -> {csv_path}")
    if overlays:
        print(f"overlays (boxes of score >= {shown:g}) -> {overlay_dir}")
    return csv_path


def overlay_score(cfg, overlay_threshold: float | None) -> float:
    """The display threshold of overlays: ``overlay_threshold``, else the config's detection_threshold."""
    shown = cfg.detection_threshold if overlay_threshold is None else float(overlay_threshold)
    if not 0.0 <= shown <= 1.0:
        raise CryoError(f"--overlay-threshold must lie in [0, 1], got {shown}")
    return shown


DONE_SUFFIX = ".done.json"


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N (the --shard option); CryoError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise CryoError(f"--shard wants K/N with 0 <= K < N (e.g. 0/4 ... 3/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def shard_inputs(paths: list[str], shard: tuple[int, int] | None) -> list[str]:
    """The inputs of part K of N: ``paths`` in natural order, every N-th from the K-th (all with None).

    The same list gives the same parts on every machine, and the N parts are disjoint and complete.
    """
    if shard is None:
        return list(paths)
    k, n = shard
    ordered = sorted(paths, key=lambda p: tomo_io.natural_sort_key(os.path.basename(p)) + (p,))
    return ordered[k::n]


def split_inputs(path: str) -> tuple[list[str], list[str]]:
    """(MRC volumes, images) named by ``path``: one file, or the files of a folder (sorted)."""
    if not os.path.exists(path):
        raise CryoError("input not found", path)
    if os.path.isdir(path):
        names = sorted(os.listdir(path), key=tomo_io.natural_sort_key)
        volumes = [os.path.join(path, n) for n in names if tomo_io.is_mrc_file(n)]
        images = [os.path.join(path, n) for n in names if n.lower().endswith(tomo_io.IMAGE_EXTENSIONS)
                  and not n.startswith(".")]
        if not volumes and not images:
            raise CryoError("no images or MRC files in this folder", path)
        return volumes, images
    if tomo_io.is_mrc_file(path):
        return [path], []
    return [], tomo_io.list_images(path)


@dataclass
class VolumeOptions:
    """How a tomogram or tilt series is read and what is written for it."""

    kind: str = "auto"
    z_range: tuple[int, int] | None = None
    step: int = 1
    slab: int = 1
    binning: int = 1
    apix: float | None = None
    batch_size: int = 4
    overlay_slices: int = 8
    labelimg: bool = False
    overlays: bool = True
    overlay_threshold: float | None = None   # None: the config's detection_threshold

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "VolumeOptions":
        """From test_frcnn.py's parsed options."""
        if args.step < 1 or args.batch_size < 1 or args.overlay_slices < 0:
            raise CryoError("--step and --batch-size must be >= 1, --overlay-slices >= 0")
        return cls(args.kind, tuple(args.z_range) if args.z_range else None, args.step, args.slab, args.binning,
                   args.apix, args.batch_size, args.overlay_slices, args.labelimg, not args.no_overlays,
                   args.overlay_threshold)


def predict_volume(detector: Detector, path: str, out_dir: str, threshold: float,
                   options: VolumeOptions | None = None) -> dict:
    """Detect on every chosen slice (or tilt image) of an MRC file, streamed from the memory map.

    Writes, in ``out_dir``, files named after the input (NAME): NAME_boxes2d.csv/.json (slice, box,
    class, score); for tomograms NAME_objects3d.csv/.json (boxes linked across slices), NAME.cbox
    (crYOLO / napari-boxmanager), NAME.coords (IMOD, 0-based), NAME.star (RELION); NAME_overlays/
    (chosen slices) and NAME_overview.png (z projection with the 3D boxes); with ``labelimg``,
    NAME_labelimg/ (PNG + LabelImg XML per slice with detections). Coordinates are pixels of the
    input file (binning undone). NAME.done.json is written last: without it the outputs are not complete.
    """
    options = options or VolumeOptions()
    cfg = detector.cfg
    name = os.path.splitext(os.path.basename(path))[0]
    with tomo_io.open_volume(path, kind=options.kind, apix=options.apix, slab=options.slab,
                             binning=options.binning) as volume:
        n = volume.n_slices
        first, stop = options.z_range if options.z_range else (0, n)
        if not (0 <= first < stop <= n):
            raise CryoError(f"--z-range {first} {stop} is outside the volume's {n} slices (0..{n})", path)
        indices = list(range(first, stop, options.step))
        overlay_at = set(tomo_io.evenly_spaced(range(len(indices)), options.overlay_slices)
                         ) if options.overlays else set()
        pixel_size_in = volume.slice_pixel_size_a
        scale = detector.input_scale(pixel_size_in)
        if scale is not None:
            print(f"{name}: {pixel_size_in:g} A/px; the model was trained on {cfg.pixel_size_angstrom:g} A/px images "
                  f"seen at {cfg.network_pixel_size_angstrom:g} A per network pixel: slices resized x{scale:.3g} "
                  "(--no-pixel-size-match: resize by the config's im_size instead)")
        per_slice: dict[int, Detections] = {}
        levels: dict[int, float] = {}                  # slice -> its structure level (specimen_z_range)
        overlays: dict[int, np.ndarray] = {}           # slice -> its grey image, drawn once boxes are final
        projection = None
        bar = tqdm(total=len(indices), desc=name, unit="slice" if volume.kind == "tomogram" else "tilt")
        for position, (index, image, dets) in enumerate(detect_volume(detector, volume, indices, threshold,
                                                                      options.batch_size)):
            if cfg.track_clip_to_specimen and volume.kind == "tomogram":     # the slice itself, no slab
                own = image if image.ndim == 2 else volume.slice(index)
                levels[index] = preprocessing.structure_level(own, cfg.specimen_profile_size,
                                                              cfg.specimen_profile_sigma)
            image = image if image.ndim == 2 else image[:, :, 1]                # the slab at the slice
            per_slice[index] = dets
            projection = image.astype(np.float64) if projection is None else projection + image
            if position in overlay_at:
                overlays[index] = image
            bar.update(1)
        bar.close()
        kind, pixel_size, angles = volume.kind, volume.pixel_size_a, volume.angles
        snr = volume_snr(volume, indices, cfg.snr_sample_slices)
    return write_volume_outputs(path, out_dir, name, kind, per_slice, overlays, projection, pixel_size, angles,
                                cfg, threshold, options, snr, levels)


def detect_volume(detector: Detector, volume: tomo_io.Volume, indices: Sequence[int], min_score: float,
                  batch_size: int = 4) -> Iterator[tuple[int, np.ndarray, Detections]]:
    """(slice index, the network's view of it (volume_reader), its detections) for each of ``indices``,
    in order, batched ``batch_size`` slices at a time through the detector, at the volume's pixel size."""
    read = volume_reader(volume, detector.cfg)
    for start in range(0, len(indices), batch_size):
        batch = list(indices[start:start + batch_size])
        images = [read(i) for i in batch]
        yield from zip(batch, images, detector.detect_many(images, min_score, volume.slice_pixel_size_a))


def volume_snr(volume: tomo_io.Volume, indices: list[int], n_slices: int) -> float:
    """Median single-image SNR estimate (preprocessing.estimate_snr, Thong et al. 2001) of up to
    ``n_slices`` evenly spaced slices among ``indices`` (the slices as read, before preprocessing)."""
    picks = tomo_io.evenly_spaced(indices, n_slices)
    if not picks:
        return float("nan")
    return preprocessing.median_snr(volume.slice(index) for index in picks)


def volume_reader(volume: tomo_io.Volume, cfg) -> Callable[[int], np.ndarray]:
    """index -> the network's view of slice ``index``: Volume.slice, or with ``cfg.input_channels``
    "slabs" on a tomogram, Volume.slab_channels (a tilt series is read slice by slice, with a warning)."""
    if cfg.input_channels != "slabs":
        return volume.slice
    if volume.kind != "tomogram":
        warnings.warn(f"{volume.path}: the model reads three slabs of a tomogram; tilt images have none, so "
                      "each is repeated on the three channels instead")
        return volume.slice
    if volume.slab > 1:
        raise CryoError(f"the model averages slabs of {cfg.input_slab} slices itself (input_channels 'slabs'): "
                        "leave out --slab", volume.path)
    return lambda index: volume.slab_channels(index, cfg.input_slab)


def write_volume_outputs(path: str, out_dir: str, name: str, kind: str, per_slice: dict[int, Detections],
                         overlays: dict[int, np.ndarray], projection: np.ndarray | None,
                         pixel_size: float | None, angles, cfg, threshold: float, options: VolumeOptions,
                         snr: float = float("nan"), levels: dict[int, float] | None = None) -> dict:
    """Every output file of one volume (see :func:`predict_volume`); NAME.done.json last. ``overlays``:
    slice index -> the (binned) grey slice, drawn here with the final boxes. ``levels``: slice index ->
    preprocessing.structure_level, for ``cfg.track_clip_to_specimen`` (tomograms only)."""
    class_names = cfg.class_names
    binning = options.binning
    # boxes in the input file's pixels (undo binning); overlays are drawn in the binned slices
    full = {z: (d.boxes * binning, d.scores, d.labels) for z, d in per_slice.items()}
    base = os.path.join(out_dir, name)
    objects = []
    specimen, outside = None, 0
    if kind != "tilt_series" and cfg.track_clip_to_specimen and levels:
        zs = sorted(levels)
        specimen = tracking.specimen_z_range(zs, [levels[z] for z in zs], cfg.specimen_min_vacuum_slices,
                                             cfg.specimen_vacuum_slope)
        if specimen is not None:
            for z, (boxes, scores, labels) in full.items():
                if not specimen[0] <= z < specimen[1]:
                    outside += len(boxes)
                    full[z] = (boxes[:0], scores[:0], labels[:0])
            print(f"{name}: the specimen fills slices {specimen[0]}..{specimen[1] - 1}; {outside} boxes on the "
                  f"slices beyond its faces dropped (--set track_clip_to_specimen=false keeps them)")
    if kind != "tilt_series":
        objects = tracking.link_boxes(full, tracking.TrackingParams.from_config(cfg), class_names)
        if cfg.track_refine_window > 0 or cfg.track_rescore or cfg.track_untracked_weight < 1.0:
            full = tracking.refine_along_z(full, objects, cfg.track_refine_window, cfg.track_rescore,
                                           cfg.track_untracked_weight)
    rows = writers.boxes2d_rows(full, class_names)
    writers.write_boxes2d_csv(base + TOMOGRAM_CSV_SUFFIX, rows)
    summary = {"input": os.path.abspath(path), "kind": kind, "slices_processed": len(per_slice),
               "detections": len(rows), "threshold": threshold, "pixel_size_a": pixel_size,
               "binning": binning, "slab": options.slab, "coordinates": "pixels of the input file, 0-based",
               "snr_estimate": None if np.isnan(snr) else round(float(snr), 4)}
    if kind != "tilt_series" and cfg.track_clip_to_specimen:
        summary["specimen_slices"] = list(specimen) if specimen is not None else None
        summary["boxes_outside_specimen"] = outside
    json_payload: dict = {"boxes": rows}
    if kind == "tilt_series":
        flags = tracking.flag_isolated_tilt_detections(full, cfg.tilt_consistency_min_iou)
        json_payload["angles"] = list(angles) if angles is not None else None
        json_payload["isolated"] = [{"tilt": t, "box": b} for t, b in flags]
        summary["isolated_detections"] = len(flags)
        if flags:
            print(f"{name}: {len(flags)} detections seen on one tilt but on neither neighbour "
                  f"(listed under 'isolated' in {name}_boxes2d.json)")
    else:
        writers.write_objects3d_csv(base + OBJECTS3D_CSV_SUFFIX, objects)
        writers.write_objects3d_json(base + "_objects3d.json", objects, pixel_size_a=pixel_size, source=path)
        writers.write_cbox(base + ".cbox", objects, pixel_size_a=pixel_size, source=path)
        writers.write_imod_coords(base + ".coords", objects)
        writers.write_star(base + ".star", objects, pixel_size_a=pixel_size, source=path)
        summary["objects3d"] = len(objects)
        if projection is not None and options.overlays:
            mean = (projection / max(len(per_slice), 1)).astype(np.float32)
            binned = [dataclasses.replace(o, x1=o.x1 / binning, y1=o.y1 / binning, x2=o.x2 / binning,
                                          y2=o.y2 / binning) for o in objects]
            pictures.write_png(base + "_overview.png", pictures.render_z_projection(mean, binned))
    writers.write_boxes2d_json(base + "_boxes2d.json", rows, pixel_size_a=pixel_size, source=path,
                               extra={**summary, **{k: v for k, v in json_payload.items() if k != "boxes"}})
    tag = "z" if kind == "tomogram" else "t"
    shown = overlay_score(cfg, options.overlay_threshold)
    for index, image in overlays.items():
        boxes, scores, labels = full[index]
        picture = pictures.render_overlay(image, boxes / binning, labels, scores, class_names, min_score=shown)
        pictures.write_png(os.path.join(base + "_overlays", f"{name}_{tag}{index:04d}.png"), picture)
    if options.labelimg:
        with_dets = sorted(z for z, d in per_slice.items() if len(d))
        if with_dets:
            lab_dir = base + "_labelimg"
            pngs = tomo_io.export_slices_for_labelling(path, lab_dir, with_dets, kind=kind, slab=options.slab,
                                                       binning=binning, apix=options.apix)
            writers.write_labelimg_for_slices(lab_dir, dict(zip(with_dets, pngs)),
                                              {z: per_slice[z] for z in with_dets}, class_names,
                                              width=int(projection.shape[1]), height=int(projection.shape[0]))
    writers.write_json(base + DONE_SUFFIX, summary)
    print(f"{name}: {len(rows)} boxes on {len(per_slice)} {'slices' if kind == 'tomogram' else 'tilts'}"
          + (f", {summary['objects3d']} 3D objects" if "objects3d" in summary else "")
          + (f", estimated SNR {snr:.3g}" if not np.isnan(snr) else "") + f" -> {base}_*")
    return summary


def main(args: argparse.Namespace) -> int:
    """test_frcnn.py: images -> detections.csv + overlays; MRC volumes -> per-volume 2D/3D outputs."""
    shard = parse_shard(args.shard) if getattr(args, "shard", None) is not None else None
    volumes, images = split_inputs(args.path)
    any_images = bool(images)
    if shard is not None:
        volumes, images = shard_inputs(volumes, shard), shard_inputs(images, shard)
        print(f"shard {shard[0]}/{shard[1]}: {len(volumes)} volume(s) and {len(images)} image(s) of this part")
    check_output_dir(args.output)
    detector = load_detector(args.config_filename, args.model, args.max_proposals, args.precision,
                             args.min_proposal_score, args.overrides, args.pixel_size_match, args.views)
    threshold = detector.cfg.detection_threshold if args.threshold is None else args.threshold
    csv_name = shard_csv_name(shard)
    if args.resume and os.path.isfile(os.path.join(args.output, csv_name)):
        print(f"{csv_name}: complete, its images skipped (--resume)")
    elif any_images:
        # a shard left without images still writes its (empty) CSV: measure_map sees the part is done
        root = args.path if os.path.isdir(args.path) else os.path.dirname(os.path.abspath(args.path))
        predict_images(detector, images, args.output, threshold, root=root, overlays=not args.no_overlays,
                       overlay_threshold=args.overlay_threshold, csv_name=csv_name)
    failures = []
    for path in volumes:
        name = os.path.splitext(os.path.basename(path))[0]
        if args.resume and os.path.isfile(os.path.join(args.output, name + DONE_SUFFIX)):
            print(f"{name}: outputs complete, skipped (--resume)")
            continue
        try:
            predict_volume(detector, path, args.output, threshold, VolumeOptions.from_args(args))
        except CryoError as exc:
            if len(volumes) == 1:
                raise
            print(f"error: {exc}", file=sys.stderr)
            failures.append(path)
    if failures:
        raise CryoError(f"{len(failures)} of {len(volumes)} volumes failed (first: {failures[0]}); "
                        "the others are complete (rerun with --resume to retry only the failed ones)")
    return 0


def console_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the script and the setup.py command); returns the exit status (2 with
    one ``error:`` line on bad input)."""
    from .cli import run_cli
    return run_cli(main, build_parser(), argv)
