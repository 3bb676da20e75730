"""textio: the CSV and JSON primitives every reader and writer shares."""
import json
import os

import numpy as np
import pytest

from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.textio import csv_text, jsonable, parse_number, read_csv_rows, read_json, write_json
from keras_frcnn_cryo.tracking import Object3D


def test_csv_text_starts_with_its_header_and_reads_back(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(csv_text(["a", "b"], [["1", "x,y"], ["2", ""]]))
    assert path.read_text().splitlines()[0] == "a,b"
    header, rows = read_csv_rows(path, ["a"], "test")
    assert header == ["a", "b"]
    assert rows == [(2, {"a": "1", "b": "x,y"}), (3, {"a": "2", "b": ""})]


def test_read_csv_rows_skips_comments_and_byte_order_mark_keeps_line_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeff# written by an older version\n a , b \n\n1, 2\n".encode("utf-8"))
    header, rows = read_csv_rows(path, ["a", "b"], "test")
    assert header == ["a", "b"] and rows == [(4, {"a": "1", "b": "2"})]


@pytest.mark.parametrize("content, expected", [
    (b"", ("t.csv", "empty test file", "a,b")),
    (b"a,c\n1,2\n", ("t.csv:1", "lacks column(s) b", "header: a,c")),
    (b"a,b\n1,2\n1,2,3\n", ("t.csv:3", "expected 2 comma-separated fields, found 3")),
    (b"a,b\n\xff\xfe,1\n", ("t.csv", "not a UTF-8 text file")),
])
def test_read_csv_rows_errors_name_file_and_line(tmp_path, content, expected):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(CryoError) as info:
        read_csv_rows(path, ["a", "b"], "test")
    for part in expected:
        assert part in str(info.value)
    with pytest.raises(CryoError, match="test file not found"):
        read_csv_rows(tmp_path / "absent.csv", ["a"], "test")


def test_parse_number():
    assert parse_number("3", int, "n", "f.csv", 2) == 3 and parse_number("0.25", float, "x", "f.csv", 2) == 0.25
    with pytest.raises(CryoError, match=r"f\.csv:7: n is not an integer: '1\.5'"):
        parse_number("1.5", int, "n", "f.csv", 7)
    with pytest.raises(CryoError, match=r"f\.csv:7: x is not a finite number"):
        parse_number("inf", float, "x", "f.csv", 7)


def test_json_round_trip_is_strict_and_atomic(tmp_path):
    obj = Object3D(0, "mito", 1.0, 2.0, 3, 10.0, 12.0, 6, 0.8, [3, 4, 5], np.array([[1.0, 2.0, 10.0, 12.0]] * 3),
                   np.array([0.9, 0.8, 0.7]))
    path = tmp_path / "sub" / "any.json"
    os.makedirs(path.parent)
    write_json(path, {"x": np.float32(0.5), "n": np.int64(3), "ok": np.bool_(True), "bad": float("nan"),
                      "arr": np.arange(2), 0.7: (1, 2), "o": obj})
    data = json.loads(path.read_text())       # strict JSON: the standard parser reads it
    assert data["x"] == 0.5 and data["n"] == 3 and data["ok"] is True and data["bad"] is None
    assert data["arr"] == [0, 1] and data["0.7"] == [1, 2]
    assert data["o"]["slices"] == [3, 4, 5] and data["o"]["z2"] == 6
    assert read_json(path) == data and os.listdir(path.parent) == ["any.json"]
    assert jsonable({"inf": np.float64("inf")}) == {"inf": None}
    path.write_text("{broken")
    with pytest.raises(CryoError, match="malformed JSON"):
        read_json(path)
