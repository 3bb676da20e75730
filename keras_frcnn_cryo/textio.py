"""Plain-text formats every output and reader shares: CSV with a header line, strict JSON.

One home for reading a text file (UTF-8, a byte-order mark tolerated), CSV rows with their line
numbers, numbers parsed with file:line errors, and JSON conversion of numpy values (NaN and Inf
become null, so the files are strict JSON that any tool parses). Writers go through
:func:`keras_frcnn_cryo.atomic.write_text_atomic`, so a file under its final name is complete.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .errors import CryoError, parse_float

__all__ = ["read_text", "csv_text", "read_csv_rows", "parse_number", "jsonable", "write_json", "read_json"]


def read_text(path: str | os.PathLike, what: str = "") -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped); CryoError naming the file when
    it is missing or not UTF-8. ``what`` names the kind of file in the not-found message."""
    if not os.path.isfile(path):
        raise CryoError(f"{what + ' ' if what else ''}file not found", path)
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CryoError(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})", path) from None


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """CSV text whose first line is the header ``columns`` (what pandas.read_csv and csv.DictReader expect)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def read_csv_rows(path: str | os.PathLike, columns: Sequence[str], what: str
                  ) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, {column: text})]) of a CSV whose header holds ``columns``.

    Blank lines and ``#`` comment lines (files written before CSVs started with their header) are
    skipped; names and values are stripped; line numbers are the file's (1-based). CryoError naming
    ``path`` (and the line) for a missing or non-UTF-8 file, no header, a missing column, or a row
    with the wrong number of fields. ``what`` names the kind of file in the messages.
    """
    text = read_text(path, what)
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise CryoError(f"empty {what} file (expected a header {','.join(columns)})", path)
    header_line, header_text = lines[0]
    header = [name.strip() for name in next(csv.reader([header_text]))]
    missing = [c for c in columns if c not in header]
    if missing:
        raise CryoError(f"{what} CSV lacks column(s) {', '.join(missing)} (needs {','.join(columns)}; "
                        f"header: {','.join(header)})", path, header_line)
    rows = []
    for number, line in lines[1:]:
        values = next(csv.reader([line]))
        if len(values) != len(header):
            raise CryoError(f"expected {len(header)} comma-separated fields, found {len(values)}", path, number)
        rows.append((number, {key: value.strip() for key, value in zip(header, values)}))
    return header, rows


def parse_number(text: str, kind: type, column: str, path: str | os.PathLike, line: int) -> int | float:
    """``int(text)`` or a finite ``float(text)`` (``kind``); CryoError naming ``path:line`` and ``column``."""
    if kind is float:
        return parse_float(text, column, path, line)
    try:
        return int(text)
    except ValueError:
        raise CryoError(f"{column} is not an integer: {text!r}", path, line) from None


def _key(key: Any) -> str:
    if isinstance(key, (float, np.floating)):
        return f"{float(key):g}"         # IoU thresholds: 0.5 -> "0.5"
    return str(key)


def jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy scalars and arrays to Python, tuples to lists, keys to strings (floats
    as %g), NaN and Inf to None, objects with ``to_dict()`` (tracking.Object3D) to their dict."""
    if hasattr(obj, "to_dict") and not isinstance(obj, Mapping):
        return jsonable(obj.to_dict())
    if isinstance(obj, Mapping):
        return {_key(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict UTF-8 JSON (via :func:`jsonable`), atomically."""
    write_text_atomic(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; CryoError naming the file when it is missing or malformed."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CryoError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None
