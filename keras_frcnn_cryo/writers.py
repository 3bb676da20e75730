"""Output files for per-slice detections and linked 3D objects, each with a reader for its own output.

Every file is written under a temporary name in the target folder and renamed when complete
(:mod:`keras_frcnn_cryo.atomic`), and every text format states its conventions in a header:

* coordinates in pixels of the volume the detector saw (binned pixels for a binned tomogram; the
  pixel size, when known, is written too);
* 0-based: x to the right (array column), y down (array row; IMOD and napari show row 0 at the
  bottom and top respectively, the numbers are the same), z = slice index (mrcfile ``data[z]``);
  IMOD's 3dmod numbers slices from 1, so slice 0 here is section 1 there;
* boxes ``[x1, y1, x2, y2]`` with exclusive far edges (width = x2 - x1), 3D boxes add ``z1, z2`` with
  ``z2 = last slice + 1`` (see :mod:`keras_frcnn_cryo.tracking`);
* point formats (IMOD, RELION STAR, the cbox Z column) give object centres in the pixel-index
  convention: pixel i and slice k are centred at i and k, so a box [x1, x2) has centre
  ``(x1 + x2) / 2 - 0.5`` and an object on slices 3..5 has z = 4 (:attr:`Object3D.centre`).

Formats

* 2D boxes: CSV ``slice,x1,y1,x2,y2,class,score`` and a JSON twin;
* 3D objects: CSV ``class,score,x1,y1,z1,x2,y2,z2,n_slices,first_slice,last_slice`` and a JSON twin
  with the member slices, boxes and scores (read back as :class:`Object3D`);
* the first line of every CSV is its header (pandas.read_csv and csv.DictReader read it as it is);
  the conventions, pixel size and source go to the JSON twin (:func:`json_header`). Readers still
  skip ``#`` lines, which files of earlier versions began with;
* crYOLO CBOX (STAR syntax, opened by napari-boxmanager): see :func:`write_cbox`;
* IMOD point list (``x y z`` per line, for ``point2model``): :func:`write_imod_coords`;
* RELION STAR (``data_particles``): :func:`write_star`;
* LabelImg XML per slice (correct predictions in LabelImg, then retrain): :func:`write_labelimg_for_slices`.

Pictures of detections (overlays, montages, z projections) are drawn by :mod:`keras_frcnn_cryo.pictures`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .errors import CryoError
from .pascal_voc_parser import write_labelimg_xml
from .textio import csv_text, parse_number, read_csv_rows, read_json, read_text, write_json
from .tracking import Object3D, as_slice_detections

__all__ = [
    "BOXES2D_COLUMNS", "OBJECTS3D_COLUMNS", "CBOX_COLUMNS", "STAR_COLUMNS",
    "boxes2d_rows", "write_boxes2d_csv", "read_boxes2d_csv", "write_boxes2d_json", "read_boxes2d_json",
    "write_json", "read_json", "json_header",
    "BOX3D_KEYS", "box3d_from_row", "write_objects3d_csv", "read_objects3d_csv", "write_objects3d_json", "read_objects3d_json",
    "write_cbox", "read_cbox", "read_star_blocks",
    "write_imod_coords", "read_imod_coords",
    "write_star", "read_star",
    "write_labelimg_for_slices",
]

BOXES2D_COLUMNS = ("slice", "x1", "y1", "x2", "y2", "class", "score")
OBJECTS3D_COLUMNS = ("class", "score", "x1", "y1", "z1", "x2", "y2", "z2", "n_slices", "first_slice", "last_slice")
# crYOLO CBOX particle columns, in the order crYOLO and napari-boxmanager write them
CBOX_COLUMNS = ("_CoordinateX", "_CoordinateY", "_CoordinateZ", "_Width", "_Height", "_Depth",
                "_EstWidth", "_EstHeight", "_Confidence", "_NumBoxes", "_Angle")
STAR_COLUMNS = ("_rlnCoordinateX", "_rlnCoordinateY", "_rlnCoordinateZ", "_rlnClassNumber",
                "_rlnAutopickFigureOfMerit")
STAR_PIXEL_SIZE_COLUMN = "_rlnImagePixelSize"
CBOX_MISSING = "<NA>"   # pandas (pyStarDB, starfile) reads it as NaN

COORD_DECIMALS = 3      # millipixels
SCORE_DECIMALS = 6

_CONVENTION_2D = ("coordinates in pixels, 0-based; x right (array column), y down (array row); "
                  "x2/y2 exclusive (width = x2 - x1)")
_CONVENTION_Z = "z = slice index, 0-based (data[z] of the (z, y, x) volume; IMOD 3dmod shows slice z as z + 1)"
_CONVENTION_3D = "z1 = first slice, z2 = last slice + 1 (exclusive, depth = z2 - z1)"
_CONVENTION_CENTRE = ("centres use the pixel-index convention: pixel i and slice k are centred at i and k "
                      "(centre x = (x1 + x2) / 2 - 0.5)")


# ------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------
def _fmt(value: float, decimals: int = COORD_DECIMALS) -> str:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot write non-finite value {value}")
    text = f"{value:.{decimals}f}"
    return "0." + "0" * decimals if text == "-0." + "0" * decimals else text


def _pixel_size_line(pixel_size_a: float | None) -> str:
    return "pixel size: unknown" if pixel_size_a is None else f"pixel size: {float(pixel_size_a):.4f} A/px"


def _comment_block(lines: Iterable[str]) -> str:
    """``#`` comment lines (STAR and IMOD headers; never in CSVs)."""
    return "".join(f"# {line}\n" for line in lines)


def json_header(kind: str, pixel_size_a: float | None, source: str | None) -> dict[str, Any]:
    """The metadata every JSON output starts with: format, coordinate conventions, pixel size, source."""
    return {
        "format": f"keras_frcnn_cryo {kind}",
        "convention": {"boxes": _CONVENTION_2D, "z": _CONVENTION_Z, "z_range": _CONVENTION_3D},
        "pixel_size_a": None if pixel_size_a is None else float(pixel_size_a),
        "source": source,
    }


# ------------------------------------------------------------------------------------------
# 2D boxes per slice
# ------------------------------------------------------------------------------------------
def boxes2d_rows(per_slice: Mapping[int, Any], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """``{slice: (boxes, scores, labels) or Detections}`` -> rows for :func:`write_boxes2d_csv`.

    Rows are ordered by slice, then by descending score (stable).
    """
    rows = []
    for z in sorted(int(k) for k in per_slice):
        boxes, scores, labels = as_slice_detections(per_slice[z])
        for index in np.argsort(-scores, kind="stable"):
            label = int(labels[index])
            rows.append({"slice": z, "x1": float(boxes[index, 0]), "y1": float(boxes[index, 1]),
                         "x2": float(boxes[index, 2]), "y2": float(boxes[index, 3]),
                         "class": str(class_names[label]) if 0 <= label < len(class_names) else str(label),
                         "score": float(scores[index])})
    return rows


def _row_values(row: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return {column: row[column] for column in BOXES2D_COLUMNS}
    values = list(row)
    if len(values) != len(BOXES2D_COLUMNS):
        raise ValueError(f"a 2D box row has {len(BOXES2D_COLUMNS)} values {BOXES2D_COLUMNS}, got {len(values)}")
    return dict(zip(BOXES2D_COLUMNS, values))


def write_boxes2d_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> int:
    """Write 2D boxes, one per row, under the header ``slice,x1,y1,x2,y2,class,score``; returns the row count.

    rows: dicts with those keys, or 7-value sequences in that order (see :func:`boxes2d_rows`).
    ``slice`` is the 0-based slice index; x1, y1, x2, y2 are pixels, x to the right, y down, far
    edges exclusive, written with 3 decimals; scores with 6. Pixel size and source: the JSON twin.
    """
    body = []
    for row in rows:
        values = _row_values(row)
        body.append([str(int(values["slice"])), *(_fmt(values[c]) for c in ("x1", "y1", "x2", "y2")),
                     str(values["class"]), _fmt(values["score"], SCORE_DECIMALS)])
    write_text_atomic(path, csv_text(BOXES2D_COLUMNS, body))
    return len(body)


def read_boxes2d_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of :func:`write_boxes2d_csv`: dicts with int ``slice``, float coordinates and score, str class."""
    out = []
    for line, raw in read_csv_rows(path, BOXES2D_COLUMNS, "2D boxes")[1]:
        row: dict[str, Any] = {"slice": parse_number(raw["slice"], int, "slice", path, line)}
        for column in ("x1", "y1", "x2", "y2", "score"):
            row[column] = parse_number(raw[column], float, column, path, line)
        row["class"] = raw["class"]
        out.append({column: row[column] for column in BOXES2D_COLUMNS})
    return out


def write_boxes2d_json(path: str | os.PathLike, rows: Iterable[Mapping[str, Any] | Sequence[Any]], *,
                       pixel_size_a: float | None = None, source: str | None = None,
                       extra: Mapping[str, Any] | None = None) -> int:
    """JSON twin of :func:`write_boxes2d_csv` (full float precision, with :func:`json_header` and the
    ``extra`` keys, e.g. a run summary); returns the row count."""
    boxes = [_row_values(row) for row in rows]
    for box in boxes:
        box["slice"] = int(box["slice"])
        box["class"] = str(box["class"])
    write_json(path, {**json_header("boxes2d", pixel_size_a, source), **(extra or {}), "boxes": boxes})
    return len(boxes)


def read_boxes2d_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of :func:`write_boxes2d_json`."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("boxes"), list):
        raise CryoError("not a keras_frcnn_cryo boxes2d JSON (no 'boxes' list)", path)
    return [{column: box[column] for column in BOXES2D_COLUMNS} for box in data["boxes"]]


# ------------------------------------------------------------------------------------------
# 3D objects: CSV and JSON
# ------------------------------------------------------------------------------------------
def write_objects3d_csv(path: str | os.PathLike, objects: Sequence[Object3D]) -> int:
    """One object per row under the header ``class,score,x1,y1,z1,x2,y2,z2,n_slices,first_slice,last_slice``.

    Boxes as in :func:`write_boxes2d_csv`, z1/z2 slice indices with z2 = last slice + 1;
    first_slice/last_slice inclusive; n_slices counts slices with a box; score is the mean of the
    member boxes' scores. Pixel size and source: the JSON twin (:func:`write_objects3d_json`).
    """
    body = [[obj.class_name, _fmt(obj.score, SCORE_DECIMALS), _fmt(obj.x1), _fmt(obj.y1), str(int(obj.z1)),
             _fmt(obj.x2), _fmt(obj.y2), str(int(obj.z2)), str(obj.n_slices), str(obj.first_slice),
             str(obj.last_slice)] for obj in objects]
    write_text_atomic(path, csv_text(OBJECTS3D_COLUMNS, body))
    return len(body)


BOX3D_KEYS = ("x1", "y1", "z1", "x2", "y2", "z2")
_OBJECTS3D_REQUIRED = ("class", "score", *BOX3D_KEYS)
_OBJECTS3D_INT = ("n_slices", "first_slice", "last_slice")


def box3d_from_row(row: Mapping[str, str], path: str | os.PathLike, line: int) -> np.ndarray:
    """float64 (6,) [x1, y1, z1, x2, y2, z2] of a CSV row; CryoError naming ``path:line`` for a value
    that is not a finite number or an upper edge below its lower edge."""
    box = np.array([parse_number(row[key], float, key, path, line) for key in BOX3D_KEYS], dtype=np.float64)
    if np.any(box[3:] < box[:3]):
        raise CryoError(f"box with an upper edge below its lower edge: {box.tolist()}", path, line)
    return box


def read_objects3d_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a 3D objects CSV: :func:`write_objects3d_csv`'s, or any with the columns
    ``class,score,x1,y1,z1,x2,y2,z2`` (the 3D predictions measure_map.py scores).

    Each row a dict in the file's column order: str ``class`` (not empty), float score and x/y, z1/z2
    int when whole (float otherwise), int ``n_slices``/``first_slice``/``last_slice`` and str
    ``tomogram`` when those columns exist; other columns are left out. CryoError naming file and line.
    """
    header, rows = read_csv_rows(path, _OBJECTS3D_REQUIRED, "3D objects")
    out = []
    for line, raw in rows:
        if not raw["class"]:
            raise CryoError("empty class name", path, line)
        box = box3d_from_row(raw, path, line)
        values: dict[str, Any] = dict(zip(BOX3D_KEYS, box.tolist()))
        for key in ("z1", "z2"):
            values[key] = int(values[key]) if float(values[key]).is_integer() else values[key]
        values["class"], values["score"] = raw["class"], parse_number(raw["score"], float, "score", path, line)
        if "tomogram" in raw:
            values["tomogram"] = raw["tomogram"]
        for column in _OBJECTS3D_INT:
            if column in raw:
                values[column] = parse_number(raw[column], int, column, path, line)
        out.append({column: values[column] for column in header if column in values})
    return out


def write_objects3d_json(path: str | os.PathLike, objects: Sequence[Object3D], *,
                         pixel_size_a: float | None = None, source: str | None = None) -> int:
    """JSON twin of :func:`write_objects3d_csv` with each object's member slices, boxes and scores."""
    write_json(path, {**json_header("objects3d", pixel_size_a, source),
                      "objects": [obj.to_dict() for obj in objects]})
    return len(objects)


def read_objects3d_json(path: str | os.PathLike) -> list[Object3D]:
    """Objects of :func:`write_objects3d_json`."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise CryoError("not a keras_frcnn_cryo objects3d JSON (no 'objects' list)", path)
    try:
        return [Object3D.from_dict(item) for item in data["objects"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CryoError(f"malformed object entry ({exc.__class__.__name__}: {exc})", path) from None


# ------------------------------------------------------------------------------------------
# STAR syntax (crYOLO CBOX, RELION)
# ------------------------------------------------------------------------------------------
def read_star_blocks(path: str | os.PathLike) -> dict[str, Any]:
    """Minimal STAR reader: ``{block name: [row dicts] (loop) or {label: value} (pairs)}``, text values.

    Handles ``data_<name>``, ``loop_``, labels with an optional ``#n`` suffix, ``#`` comment lines
    and blank lines; values are whitespace-separated without quoting (what our writers produce).
    Labels keep their leading underscore.
    """
    blocks: dict[str, Any] = {}
    name: str | None = None
    labels: list[str] | None = None   # labels of the loop being read
    in_rows = False
    for number, raw in enumerate(read_text(path).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            name, labels, in_rows = line[5:], None, False
            blocks[name] = {}
            continue
        if name is None:
            raise CryoError(f"content before the first data_ block: {line[:40]!r}", path, number)
        if line == "loop_" or line.startswith("loop_ "):
            labels, in_rows = [], False
            blocks[name] = []
            continue
        if line.startswith("_"):
            parts = line.split()
            if labels is not None and not in_rows:
                labels.append(parts[0])
                continue
            if len(parts) < 2:
                raise CryoError(f"label without value: {parts[0]}", path, number)
            if not isinstance(blocks[name], dict):
                raise CryoError(f"block data_{name} mixes a loop and label/value pairs (not supported)", path, number)
            blocks[name][parts[0]] = parts[1]
            continue
        if labels is None:
            raise CryoError(f"value outside a loop: {line[:40]!r}", path, number)
        values = line.split()
        if len(values) != len(labels):
            raise CryoError(f"row has {len(values)} values for {len(labels)} labels", path, number)
        in_rows = True
        blocks[name].append(dict(zip(labels, values)))
    return blocks


def _star_float(text: str, label: str, path: str | os.PathLike) -> float:
    if text in (CBOX_MISSING, "nan", "NaN", "None"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise CryoError(f"{label} is not a number: {text!r}", path) from None


def _select(objects: Sequence[Object3D], class_name: str | None) -> list[Object3D]:
    return [obj for obj in objects if class_name is None or obj.class_name == class_name]


def _star_loop(labels: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``loop_``, the labels, the rows, then a blank line (pyStarDB ends a loop at the first blank line)."""
    text = "loop_\n" + "".join(f"{label} #{index}\n" for index, label in enumerate(labels, 1))
    text += "".join("\t".join(row) + "\n" for row in rows)
    return text + "\n"


def write_cbox(path: str | os.PathLike, objects: Sequence[Object3D], *, class_name: str | None = None,
               pixel_size_a: float | None = None, source: str | None = None) -> int:
    """crYOLO CBOX (STAR syntax) with one 3D particle per object; opens in napari-boxmanager.

    Blocks, as crYOLO 1.8+ and napari-boxmanager write them: ``data_global`` (``_cbox_format_version
    1.0``), ``data_cryolo`` (a loop over :data:`CBOX_COLUMNS`) and ``data_cryolo_include`` (a loop of
    ``_slice_index``: the slices holding a particle centre, as napari-boxmanager writes it).

    Columns per object:

    * ``_CoordinateX``, ``_CoordinateY``: the box corner with the smallest x and y (crYOLO's "lower
      left": its y axis is the array row, as here), ``centre - size / 2`` in the pixel-index
      convention, i.e. ``x1 - 0.5`` and ``y1 - 0.5``; napari-boxmanager shows the particle at
      ``_CoordinateX + _Width / 2``, which is the object's centre column;
    * ``_CoordinateZ``: the centre slice ``(first + last) / 2`` (crYOLO's 3D particles give z as the
      centre slice, not a corner: napari-boxmanager uses it as the displayed slice directly);
    * ``_Width``, ``_Height``, ``_Depth``: x2 - x1, y2 - y1, z2 - z1 (the 3D box);
    * ``_EstWidth``, ``_EstHeight``: median width and height of the member boxes (crYOLO's estimated
      particle size); ``_Confidence``: object score; ``_NumBoxes``: member boxes (slices with a box);
    * ``_Angle``: ``<NA>`` (no filament direction).

    CBOX has no class column: pass ``class_name`` to write one class (one file per class, as crYOLO
    does); all objects otherwise. Comment lines (conventions) come before the first ``data_`` line only,
    since pyStarDB (used by crYOLO and napari-boxmanager) does not skip comments inside a block.
    Returns the number of particles written.
    """
    chosen = _select(objects, class_name)
    rows = []
    centre_slices = set()
    for obj in chosen:
        centre_x, centre_y, centre_z = obj.centre
        width, height, depth = obj.x2 - obj.x1, obj.y2 - obj.y1, obj.z2 - obj.z1
        members = np.asarray(obj.boxes, dtype=np.float64).reshape(-1, 4)
        est_w = float(np.median(members[:, 2] - members[:, 0])) if len(members) else width
        est_h = float(np.median(members[:, 3] - members[:, 1])) if len(members) else height
        rows.append([_fmt(centre_x - width / 2.0), _fmt(centre_y - height / 2.0), _fmt(centre_z),
                     _fmt(width), _fmt(height), _fmt(depth), _fmt(est_w), _fmt(est_h),
                     _fmt(obj.score, SCORE_DECIMALS), str(obj.n_slices), CBOX_MISSING])
        centre_slices.add(int(math.floor(centre_z + 0.5)))
    header = ["keras_frcnn_cryo 3D objects as crYOLO CBOX (STAR syntax), one particle per object",
              "coordinates in pixels, 0-based; x right (array column), y down (array row); z = slice index, 0-based",
              "_CoordinateX/_CoordinateY: smallest-x/y corner = centre - size / 2, with pixel i centred at i",
              "_CoordinateZ: centre slice (first + last) / 2; _Width/_Height/_Depth: box size in pixels/slices",
              "class: " + (class_name if class_name is not None else "all classes in one file"),
              _pixel_size_line(pixel_size_a)]
    if source:
        header.append(f"source: {source}")
    text = _comment_block(header)
    text += "\ndata_global\n\n_cbox_format_version 1.0\n\n"
    text += "data_cryolo\n\n" + _star_loop(CBOX_COLUMNS, rows)
    text += "data_cryolo_include\n\n" + _star_loop(["_slice_index"], [[str(z)] for z in sorted(centre_slices)])
    write_text_atomic(path, text)
    return len(rows)


def read_cbox(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Particles of a CBOX file (ours or crYOLO's) converted back to our conventions.

    Each dict: ``x1, y1, x2, y2`` (``x1 = _CoordinateX + 0.5``, ``x2 = x1 + _Width``), ``z1, z2``
    (float; from the centre slice and ``_Depth``: ``z1 = _CoordinateZ + 0.5 - _Depth / 2``; ``nan``
    for 2D files), ``score`` (``_Confidence``), ``n_slices`` (``_NumBoxes``), ``est_width``,
    ``est_height``; missing values are ``nan``.
    """
    blocks = read_star_blocks(path)
    rows = blocks.get("cryolo")
    if not isinstance(rows, list):
        raise CryoError("no data_cryolo loop (not a CBOX file?)", path)
    out = []
    for row in rows:
        values = {label: _star_float(row[label], label, path) if label in row else math.nan for label in CBOX_COLUMNS}
        x1 = values["_CoordinateX"] + 0.5
        y1 = values["_CoordinateY"] + 0.5
        z1 = values["_CoordinateZ"] + 0.5 - values["_Depth"] / 2.0
        out.append({"x1": x1, "y1": y1, "z1": z1, "x2": x1 + values["_Width"], "y2": y1 + values["_Height"],
                    "z2": z1 + values["_Depth"], "score": values["_Confidence"], "n_slices": values["_NumBoxes"],
                    "est_width": values["_EstWidth"], "est_height": values["_EstHeight"]})
    return out


# ------------------------------------------------------------------------------------------
# IMOD point list
# ------------------------------------------------------------------------------------------
def write_imod_coords(path: str | os.PathLike, objects: Sequence[Object3D], one_based: bool = False, *,
                      header: bool = True, class_name: str | None = None) -> int:
    """Object centres ``x y z``, one per line, for IMOD's ``point2model`` (whitespace-separated).

    Centres use the pixel-index convention (:attr:`Object3D.centre`); ``one_based`` adds 1 to all three
    (3dmod's displayed numbering). With ``header`` the first line is one ``#`` comment stating the
    convention. Whether ``point2model`` skips ``#`` lines was not verified here: if it complains, write
    with ``header=False`` or strip the line (``grep -v '^#' objects.txt > points.txt``).
    Returns the number of points written.
    """
    offset = 1.0 if one_based else 0.0
    lines = []
    if header:
        base = "1-based (3dmod numbering: pixel/slice index + 1)" if one_based else "0-based (pixel/slice index)"
        lines.append(f"# x y z object centres in pixels, {base}; x right, y = array row, z = slice index"
                     + (f"; class {class_name}" if class_name is not None else ""))
    chosen = _select(objects, class_name)
    for obj in chosen:
        lines.append(" ".join(_fmt(value + offset, 2) for value in obj.centre))
    write_text_atomic(path, "\n".join(lines) + "\n")
    return len(chosen)


def read_imod_coords(path: str | os.PathLike, one_based: bool | None = None) -> np.ndarray:
    """(N, 3) float64 ``x y z`` points converted to 0-based pixel-index coordinates.

    The base comes from the header comment ("0-based"/"1-based") when present, else from ``one_based``
    (default 0-based). Extra leading columns (point2model's contour/object numbers) are not accepted.
    """
    text = read_text(path)
    detected: bool | None = None
    points = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if detected is None and "1-based" in line:
                detected = True
            elif detected is None and "0-based" in line:
                detected = False
            continue
        parts = line.split()
        if len(parts) != 3:
            raise CryoError(f"expected 3 values x y z, found {len(parts)}", path, number)
        points.append([parse_number(p, float, axis, path, number) for p, axis in zip(parts, "xyz")])
    base_one = detected if detected is not None else bool(one_based)
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return arr - 1.0 if base_one else arr


# ------------------------------------------------------------------------------------------
# RELION STAR
# ------------------------------------------------------------------------------------------
def write_star(path: str | os.PathLike, objects: Sequence[Object3D], pixel_size_a: float | None = None, *,
               source: str | None = None) -> int:
    """RELION-style STAR: ``data_particles`` loop of object centres, class and score.

    ``_rlnCoordinateX/Y/Z``: centre in pixels, 0-based pixel-index convention (:attr:`Object3D.centre`;
    z = slice index); ``_rlnClassNumber``: class index + 1 (RELION numbers classes from 1; the names
    are listed in the header comments); ``_rlnAutopickFigureOfMerit``: object score;
    ``_rlnImagePixelSize`` (Å/px) only when ``pixel_size_a`` is given. Returns the row count.
    """
    names: dict[int, str] = {}
    for obj in objects:
        names.setdefault(int(obj.class_index) + 1, obj.class_name)
    header = ["keras_frcnn_cryo 3D objects (centres) in RELION STAR syntax",
              "coordinates in pixels, 0-based pixel index (pixel i centred at i); x right (array column), "
              "y down (array row), z = slice index, 0-based",
              "_rlnClassNumber = class index + 1; _rlnAutopickFigureOfMerit = mean detector score",
              _pixel_size_line(pixel_size_a)]
    header += [f"class {number} = {name}" for number, name in sorted(names.items())]
    if source:
        header.append(f"source: {source}")
    labels = list(STAR_COLUMNS) + ([STAR_PIXEL_SIZE_COLUMN] if pixel_size_a is not None else [])
    rows = []
    for obj in objects:
        row = [*(_fmt(value, 2) for value in obj.centre), str(int(obj.class_index) + 1),
               _fmt(obj.score, SCORE_DECIMALS)]
        if pixel_size_a is not None:
            row.append(_fmt(pixel_size_a, 4))
        rows.append(row)
    write_text_atomic(path, _comment_block(header) + "\ndata_particles\n\n" + _star_loop(labels, rows))
    return len(rows)


def read_star(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of :func:`write_star`: ``x, y, z`` (0-based pixel index), ``class_index`` (0-based),
    ``class_name`` (from the header comments, else the number as text), ``score``, ``pixel_size_a``.

    Reads the first loop holding ``_rlnCoordinateX`` (any block name).
    """
    names: dict[int, str] = {}
    for raw in read_text(path).splitlines():
        line = raw.strip()
        if line.startswith("# class ") and " = " in line:
            number, _, name = line[len("# class "):].partition(" = ")
            if number.strip().isdigit():
                names[int(number)] = name.strip()
    rows = next((block for block in read_star_blocks(path).values()
                 if isinstance(block, list) and block and "_rlnCoordinateX" in block[0]), [])
    out = []
    for row in rows:
        number = int(_star_float(row.get("_rlnClassNumber", "1"), "_rlnClassNumber", path))
        out.append({
            "x": _star_float(row["_rlnCoordinateX"], "_rlnCoordinateX", path),
            "y": _star_float(row["_rlnCoordinateY"], "_rlnCoordinateY", path),
            "z": _star_float(row.get("_rlnCoordinateZ", "nan"), "_rlnCoordinateZ", path),
            "class_index": number - 1,
            "class_name": names.get(number, str(number)),
            "score": _star_float(row.get("_rlnAutopickFigureOfMerit", "nan"), "_rlnAutopickFigureOfMerit", path),
            "pixel_size_a": _star_float(row.get(STAR_PIXEL_SIZE_COLUMN, "nan"), STAR_PIXEL_SIZE_COLUMN, path),
        })
    return out


# ------------------------------------------------------------------------------------------
# LabelImg
# ------------------------------------------------------------------------------------------
def write_labelimg_for_slices(
    out_dir: str | os.PathLike,
    image_paths_by_slice: Mapping[int, str],
    per_slice: Mapping[int, Any],
    class_names: Sequence[str],
    width: int,
    height: int,
) -> list[str]:
    """One LabelImg XML per slice image (``<image stem>.xml`` in ``out_dir``), boxes = predictions.

    Open the image folder in LabelImg with ``out_dir`` as its save folder, correct the boxes and
    retrain on the XMLs (pascal_voc_parser reads them; ``<path>`` holds the absolute image path).
    Slices without detections get an XML with no objects (after review it says "nothing here").
    Raises CryoError when a slice has detections but no image, or two images share a stem.
    Returns the XML paths in slice order.
    """
    missing = sorted(set(int(z) for z in per_slice) - set(int(z) for z in image_paths_by_slice))
    if missing:
        raise CryoError(f"slices {missing} have detections but no image path")
    stems: dict[str, int] = {}
    written = []
    for z in sorted(int(k) for k in image_paths_by_slice):
        image_path = str(image_paths_by_slice[z])
        stem = os.path.splitext(os.path.basename(image_path))[0]
        if stem in stems:
            raise CryoError(f"slices {stems[stem]} and {z} both map to {stem}.xml", image_path)
        stems[stem] = z
        if z in per_slice:
            boxes, scores, labels = as_slice_detections(per_slice[z])
        else:
            boxes, scores, labels = np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
        names = [str(class_names[int(label)]) for label in labels]
        xml_path = os.path.join(os.fspath(out_dir), stem + ".xml")
        write_labelimg_xml(xml_path, image_path, int(width), int(height), boxes, names, scores)
        written.append(xml_path)
    return written
