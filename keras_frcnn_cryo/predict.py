"""Prediction (test_frcnn.py): images in, one detections CSV and one overlay PNG per image out.

Boxes are floats in each input image's own pixels ([x1, y1, x2, y2], 0-based, x2/y2 exclusive).
The CSV is written under a temporary name and renamed when every image is done, so a CSV that
exists is complete.
"""
from __future__ import annotations

import argparse
import csv
import os

import cv2
import numpy as np
from tqdm import tqdm

from . import tomo_io
from .atomic import atomic_path
from .cli import check_output_dir
from .config import Config, load_config
from .errors import CryoError
from .model import Detections, Detector

CSV_COLUMNS = ("image", "x1", "y1", "x2", "y2", "class", "score")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of test_frcnn.py."""
    p = argparse.ArgumentParser(description="Detect organelles in images with a trained model.")
    p.add_argument("-p", "--path", required=True, help="an image or a folder of images (png, tif, jpg)")
    p.add_argument("--config_filename", default="config.pickle", help="config written by training")
    p.add_argument("--model", default=None, help="weights (.weights.h5); default: the config's model_path")
    p.add_argument("--threshold", type=float, default=None,
                   help="minimum score of a detection (default: the config's detection_threshold)")
    p.add_argument("--output", default="results", help="output folder (detections.csv, overlays/)")
    p.add_argument("--no-overlays", action="store_true", help="write only the CSV")
    return p


def load_detector(config_filename: str, model_path: str | None) -> Detector:
    """Config + weights -> Detector (CryoError naming the file on any problem)."""
    cfg = load_config(config_filename)
    weights = model_path or cfg.model_path
    if not weights:
        raise CryoError("no model weights given and the config names none", config_filename)
    return Detector(cfg, weights_path=weights)


def detect_images(detector: Detector, paths: list[str], min_score: float,
                  on_result=None, desc: str = "detect") -> dict[str, Detections]:
    """Run the detector on every image path; ``on_result(path, image, dets)`` is called per image."""
    results: dict[str, Detections] = {}
    for path in tqdm(paths, desc=desc, unit="img"):
        image = tomo_io.read_image(path)
        dets = detector.detect(image, min_score=min_score)
        results[path] = dets
        if on_result is not None:
            on_result(path, image, dets)
    return results


def draw_detections(image: np.ndarray, dets: Detections, cfg: Config | None = None) -> np.ndarray:
    """8-bit BGR picture of ``image`` with the boxes, class names and scores drawn."""
    from .preprocessing import standardize, to_uint8
    grey = image if image.dtype == np.uint8 else to_uint8(standardize(image))
    canvas = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    palette = [(0, 255, 0), (0, 128, 255), (255, 0, 255), (255, 255, 0), (0, 0, 255)]
    for box, score, label in zip(dets.boxes, dets.scores, dets.labels):
        colour = palette[int(label) % len(palette)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thickness)
        text = f"{dets.class_names[int(label)]} {score:.2f}"
        cv2.putText(canvas, text, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour,
                    thickness, cv2.LINE_AA)
    return canvas


def write_png_atomic_bgr(path: str, picture: np.ndarray) -> None:
    """cv2.imwrite to a temporary name in the same folder, then rename."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(tmp, picture):
            raise CryoError("cannot write image", path)


def write_detections_csv(path: str, results: dict[str, Detections], relative_to: str | None = None) -> int:
    """One row per box (image, x1, y1, x2, y2, class, score); written atomically. Returns the row count."""
    rows = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for image_path, dets in results.items():
            name = os.path.relpath(image_path, relative_to) if relative_to else image_path
            for box, score, label in zip(dets.boxes, dets.scores, dets.labels):
                writer.writerow([name, *(f"{v:.2f}" for v in box), dets.class_names[int(label)], f"{score:.6f}"])
                rows += 1
    return rows


def main(args: argparse.Namespace) -> int:
    """test_frcnn.py: detect in every image of --path, write detections.csv and overlays."""
    paths = tomo_io.list_images(args.path)
    out_dir = check_output_dir(args.output)
    detector = load_detector(args.config_filename, args.model)
    threshold = detector.cfg.detection_threshold if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise CryoError(f"--threshold must lie in [0, 1], got {threshold}")
    overlay_dir = os.path.join(out_dir, "overlays")
    if not args.no_overlays:
        os.makedirs(overlay_dir, exist_ok=True)

    def save_overlay(path: str, image: np.ndarray, dets: Detections) -> None:
        if not args.no_overlays:
            name = os.path.splitext(os.path.basename(path))[0] + ".png"
            write_png_atomic_bgr(os.path.join(overlay_dir, name), draw_detections(image, dets))

    results = detect_images(detector, paths, threshold, on_result=save_overlay)
    root = args.path if os.path.isdir(args.path) else os.path.dirname(os.path.abspath(args.path))
    csv_path = os.path.join(out_dir, "detections.csv")
    rows = write_detections_csv(csv_path, results, relative_to=root)
    print(f"{rows} detections (score >= {threshold:g}) in {len(paths)} images -> {csv_path}")
    if not args.no_overlays:
        print(f"overlays -> {overlay_dir}")
    return 0


def console_main() -> None:
    """Console entry point (setup.py)."""
    import sys

    from .cli import run_cli
    sys.exit(run_cli(main, build_parser()))
