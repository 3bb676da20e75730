"""Annotations as records, and records and detections as the rows metrics.evaluate reads.

A record is one image: ``{"filepath", "width", "height", "bboxes": [{"class", "x1", "y1", "x2", "y2",
"difficult"?}], "imageset"?}`` with boxes in pixels of that image (0-based, x right, y down,
width = x2 - x1), as simple_parser and pascal_voc_parser return them.
"""
from __future__ import annotations

import os

from . import pascal_voc_parser, simple_parser
from .config import CHOICES, check_choice
from .errors import CryoError

PARSERS = CHOICES["parser"]


def load_annotations(path: str, parser: str) -> tuple[list[dict], dict[str, int], dict[str, int]]:
    """(records, classes_count, class_mapping) from either annotation format; one record per image."""
    if not os.path.exists(path):
        raise CryoError("annotation path not found", path)
    if check_choice("parser", parser) == "simple":
        found = simple_parser.get_data(path)
    else:
        found = pascal_voc_parser.get_data(path)
    seen: set[str] = set()
    for record in found[0]:
        if record["filepath"] in seen:  # two XML files for one image: each would hide the other's boxes
            raise CryoError(f"image {record['filepath']} is annotated twice (by two annotation files); "
                            "keep one annotation file per image", path)
        seen.add(record["filepath"])
    return found


def records_to_ground_truth(records: list[dict]) -> dict[str, list[dict]]:
    """image id (file path) -> list of gt dicts, as metrics.evaluate expects."""
    return {r["filepath"]: [dict(b, difficult=bool(b.get("difficult", False))) for b in r["bboxes"]]
            for r in records}


def detections_to_dicts(image_id: str, dets) -> list[dict]:
    """Detections -> the dict rows used by metrics and the CSV writer."""
    return [{"image": image_id, "class": dets.class_names[int(lab)], "x1": float(b[0]), "y1": float(b[1]),
             "x2": float(b[2]), "y2": float(b[3]), "score": float(s)}
            for b, s, lab in zip(dets.boxes, dets.scores, dets.labels)]
