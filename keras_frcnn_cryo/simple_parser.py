"""keras-frcnn's plain-text annotation format.

One box per line::

    filepath,x1,y1,x2,y2,class_name[,group]
    filepath,,,,,[,group]            # an image with no objects

* Boxes are float pixels ``[x1, y1, x2, y2]``, 0-based, x right, y down, x2/y2 exclusive edges
  (width = x2 - x1), in the image's own pixels.
* ``filepath`` may be relative: it resolves against the directory of the annotation file.
* ``group`` (optional) names the tomogram or stack the image belongs to; splits are made by group
  (see :mod:`keras_frcnn_cryo.splits`). When absent, ``record['group']`` is ``""`` and the split
  derives the group from the file name.
* Blank lines and lines starting with ``#`` are skipped; fields are stripped of spaces.
* Lines of one image merge into one record; an exact duplicate box (same class and coordinates)
  warns and is kept once.

Validation (each a CryoError naming the annotation file and line): field count, non-numeric or
non-finite coordinate, partly empty box, x2 <= x1 or y2 <= y1, negative coordinate, box beyond
the image by more than :data:`BOX_EDGE_TOLERANCE_PX` (within it, the box is clipped to the image),
missing or unreadable image, empty or reserved class name ``"bg"``, a line without a file path,
conflicting groups for one image, and an annotation file without any image.

Returns keras-frcnn's triple ``(records, classes_count, class_mapping)``.
"""
from __future__ import annotations

import math
import os
import warnings

from .config import BG_CLASS
from .errors import CryoError, parse_float
from .tomo_io import image_size

# A box may overshoot the image edge by this much (px) and is then clipped; more is an error.
BOX_EDGE_TOLERANCE_PX = 1.0

_FORMAT_HINT = "filepath,x1,y1,x2,y2,class_name[,group]"


def check_box(
    x1: float, y1: float, x2: float, y2: float, width: int, height: int, source: str, line: int | None
) -> tuple[float, float, float, float]:
    """Validate a box (our convention) against a ``width`` x ``height`` image; return it clipped.

    Raises CryoError naming ``source:line`` when a coordinate is not finite, the box is empty
    (x2 <= x1 or y2 <= y1), or it extends more than BOX_EDGE_TOLERANCE_PX beyond the image.
    Edges within the tolerance are clipped to ``[0, width] x [0, height]``.
    """
    coords = (x1, y1, x2, y2)
    if not all(math.isfinite(value) for value in coords):
        raise CryoError(f"box coordinates must be finite numbers, got {coords}", source, line)
    if x2 <= x1 or y2 <= y1:
        raise CryoError(f"empty box: need x2 > x1 and y2 > y1, got {coords}", source, line)
    tol = BOX_EDGE_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol or x1 >= width or y1 >= height:
        raise CryoError(f"box {coords} lies outside the {width}x{height} image", source, line)
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise CryoError(f"box {coords} is empty once clipped to the {width}x{height} image", source, line)
    return clipped


def check_class_name(name: str, source: str, line: int | None) -> str:
    """Return the stripped class name; CryoError when empty or the reserved background name."""
    name = name.strip()
    if not name:
        raise CryoError("empty class name", source, line)
    if name == BG_CLASS:
        raise CryoError(f"class name {BG_CLASS!r} is reserved for the background", source, line)
    return name


def summarize(records: list[dict], source: str) -> tuple[list[dict], dict[str, int], dict[str, int]]:
    """``(records, classes_count, class_mapping)`` with sorted class names -> 0..C-1 and ``"bg"`` -> C.

    ``classes_count`` counts boxes per class, in class_mapping order, with ``"bg": 0``.
    Raises CryoError when there is no record; warns when no record has a box.
    """
    if not records:
        raise CryoError("no annotated images found", source)
    names = sorted({box["class"] for record in records for box in record["bboxes"]})
    if not names:
        warnings.warn(f"{source}: no boxes at all (every image is declared without objects)", stacklevel=3)
    class_mapping = {name: index for index, name in enumerate(names)}
    class_mapping[BG_CLASS] = len(names)
    classes_count = {name: 0 for name in class_mapping}
    for record in records:
        for box in record["bboxes"]:
            classes_count[box["class"]] += 1
    return records, classes_count, class_mapping


def get_data(input_path: str) -> tuple[list[dict], dict[str, int], dict[str, int]]:
    """Parse a keras-frcnn txt annotation file.

    Returns ``(records, classes_count, class_mapping)``; each record is
    ``{'filepath': absolute path, 'width': int, 'height': int, 'group': str,
    'bboxes': [{'class', 'x1', 'y1', 'x2', 'y2' (float, 0-based, exclusive x2/y2), 'difficult': False}]}``,
    in order of first appearance. See the module docstring for the format and the checks.
    """
    source = str(input_path)
    if not os.path.exists(source):
        raise CryoError("annotation file not found", source)
    if not os.path.isfile(source):
        raise CryoError("annotation path is not a file (use the pascal_voc parser for directories)", source)
    base_dir = os.path.dirname(os.path.abspath(source))
    try:
        with open(source, encoding="utf-8-sig") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as exc:
        raise CryoError(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})", source) from None

    records: dict[str, dict] = {}
    seen_boxes: dict[str, set] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for line_no, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        fields = [part.strip() for part in text.split(",")]
        if len(fields) not in (6, 7):
            raise CryoError(
                f"expected 6 or 7 comma-separated fields ({_FORMAT_HINT}), got {len(fields)}", source, line_no
            )
        filepath, coord_texts, class_text = fields[0], fields[1:5], fields[5]
        group = fields[6] if len(fields) == 7 else ""
        if not filepath:
            raise CryoError("empty file path", source, line_no)
        path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(filepath)))

        if path not in sizes:
            if not os.path.isfile(path):
                raise CryoError(f"image file not found: {path}", source, line_no)
            try:
                sizes[path] = image_size(path)
            except CryoError as exc:
                raise CryoError(f"unreadable image ({exc})", source, line_no) from None
        width, height = sizes[path]

        record = records.get(path)
        if record is None:
            record = {"filepath": path, "width": width, "height": height, "bboxes": [], "group": group}
            records[path] = record
            seen_boxes[path] = set()
        elif group and record["group"] and group != record["group"]:
            raise CryoError(
                f"group {group!r} conflicts with group {record['group']!r} given earlier for this image",
                source, line_no,
            )
        elif group:
            record["group"] = group

        empty = [not value for value in coord_texts + [class_text]]
        if all(empty):
            continue  # image declared without objects
        if any(empty):
            raise CryoError("box fields must be all given or all empty (image without objects)", source, line_no)
        x1, y1, x2, y2 = (
            parse_float(value, name, source, line_no) for value, name in zip(coord_texts, ("x1", "y1", "x2", "y2"))
        )
        if min(x1, y1, x2, y2) < 0:
            raise CryoError(f"negative coordinate in box {(x1, y1, x2, y2)}", source, line_no)
        class_name = check_class_name(class_text, source, line_no)
        x1, y1, x2, y2 = check_box(x1, y1, x2, y2, width, height, source, line_no)
        key = (class_name, x1, y1, x2, y2)
        if key in seen_boxes[path]:
            warnings.warn(f"{source}:{line_no}: duplicate box {key} for {filepath}, kept once", stacklevel=2)
            continue
        seen_boxes[path].add(key)
        record["bboxes"].append(
            {"class": class_name, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "difficult": False}
        )
    return summarize(list(records.values()), source)
