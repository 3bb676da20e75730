"""Tests for keras_frcnn_cryo.simple_parser."""
from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
import pytest

from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.simple_parser import get_data


@pytest.fixture()
def data_dir(tmp_path):
    """tmp_path with imgs/a.png (40 wide x 30 high) and imgs/b.png (20 x 10)."""
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((30, 40), np.uint8))
    cv2.imwrite(str(tmp_path / "imgs" / "b.png"), np.zeros((10, 20), np.uint8))
    return tmp_path


def _write(directory, text: str, name: str = "ann.txt") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def test_parse_merge_relative_paths_and_mapping(data_dir):
    ann = _write(data_dir, "\n".join([
        "# comment",
        "imgs/a.png,1,2,11.5,12,mito",
        "",
        "imgs/a.png, 5 ,5,9,9, vesicle ,tomoA",
        f"{data_dir / 'imgs' / 'b.png'},0,0,20,10,mito",
        "imgs/b.png,2,3,4,5,axon",
    ]))
    records, counts, mapping = get_data(ann)
    assert [os.path.basename(r["filepath"]) for r in records] == ["a.png", "b.png"]
    first = records[0]
    assert first["filepath"] == str(data_dir / "imgs" / "a.png")
    assert (first["width"], first["height"]) == (40, 30)
    assert first["group"] == "tomoA"
    assert first["bboxes"] == [
        {"class": "mito", "x1": 1.0, "y1": 2.0, "x2": 11.5, "y2": 12.0, "difficult": False},
        {"class": "vesicle", "x1": 5.0, "y1": 5.0, "x2": 9.0, "y2": 9.0, "difficult": False},
    ]
    assert records[1]["group"] == ""
    assert len(records[1]["bboxes"]) == 2
    assert mapping == {"axon": 0, "mito": 1, "vesicle": 2, "bg": 3}
    assert list(mapping)[-1] == "bg"
    assert counts == {"axon": 1, "mito": 2, "vesicle": 1, "bg": 0}


def test_image_without_objects_and_relative_to_annotation_dir(data_dir, monkeypatch):
    ann = _write(data_dir, "imgs/a.png,,,,,\nimgs/b.png,1,1,3,3,mito\nimgs/a.png,,,,,,g1\n")
    monkeypatch.chdir("/")  # relative paths must not depend on the working directory
    records, counts, mapping = get_data(ann)
    assert records[0]["bboxes"] == [] and records[0]["group"] == "g1"
    assert counts == {"mito": 1, "bg": 0}
    assert mapping == {"mito": 0, "bg": 1}


def test_duplicate_box_warns_and_is_kept_once(data_dir):
    ann = _write(data_dir, "imgs/a.png,1,1,5,5,mito\nimgs/a.png,1,1,5,5,mito\nimgs/a.png,1,1,5,5,other\n")
    with pytest.warns(UserWarning, match=r"ann.txt:2: duplicate"):
        records, counts, _ = get_data(ann)
    assert len(records[0]["bboxes"]) == 2
    assert counts["mito"] == 1 and counts["other"] == 1


def test_boxes_within_one_pixel_are_clipped(data_dir):
    ann = _write(data_dir, "imgs/a.png,0,0,40.8,31,mito\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records, _, _ = get_data(ann)
    box = records[0]["bboxes"][0]
    assert (box["x1"], box["y1"], box["x2"], box["y2"]) == (0.0, 0.0, 40.0, 30.0)


@pytest.mark.parametrize(
    "line, message",
    [
        ("imgs/a.png,1,2,3,mito", "expected 6 or 7"),
        ("imgs/a.png,1,2,3,4,mito,g,extra", "expected 6 or 7"),
        ("imgs/a.png,1,two,3,4,mito", "y1 is not a number"),
        ("imgs/a.png,1,2,3,nan,mito", "not a finite"),
        ("imgs/a.png,5,2,5,4,mito", "empty box"),
        ("imgs/a.png,1,6,3,4,mito", "empty box"),
        ("imgs/a.png,-1,2,3,4,mito", "negative"),
        ("imgs/a.png,1,2,41.5,4,mito", "outside"),
        ("imgs/a.png,1,2,3,32,mito", "outside"),
        ("imgs/missing.png,1,2,3,4,mito", "image file not found"),
        ("imgs/a.png,1,2,3,4,bg", "reserved"),
        ("imgs/a.png,1,2,3,4,", "all given or all empty"),
        ("imgs/a.png,,2,3,4,mito", "all given or all empty"),
        (",1,2,3,4,mito", "empty file path"),
    ],
)
def test_invalid_lines_name_file_and_line(data_dir, line, message):
    ann = _write(data_dir, "# header\nimgs/b.png,1,1,2,2,mito\n" + line + "\n")
    with pytest.raises(CryoError, match=message) as info:
        get_data(ann)
    assert str(info.value).startswith(f"{ann}:3: ")
    assert info.value.line == 3


def test_conflicting_group_and_unreadable_image(data_dir):
    ann = _write(data_dir, "imgs/a.png,1,1,2,2,mito,g1\nimgs/a.png,1,1,3,3,mito,g2\n")
    with pytest.raises(CryoError, match=r"ann.txt:2: .*conflicts"):
        get_data(ann)
    (data_dir / "imgs" / "bad.png").write_bytes(b"junk" * 10)
    ann = _write(data_dir, "imgs/bad.png,1,1,2,2,mito\n", "ann2.txt")
    with pytest.raises(CryoError, match=r"ann2.txt:1: unreadable image .*bad.png"):
        get_data(ann)


def test_empty_annotation_set_and_missing_file(data_dir):
    ann = _write(data_dir, "# nothing here\n\n")
    with pytest.raises(CryoError, match="no annotated images"):
        get_data(ann)
    with pytest.raises(CryoError, match="not found"):
        get_data(str(data_dir / "absent.txt"))


def test_only_empty_images_warns(data_dir):
    ann = _write(data_dir, "imgs/a.png,,,,,\n")
    with pytest.warns(UserWarning, match="no boxes"):
        records, counts, mapping = get_data(ann)
    assert len(records) == 1 and mapping == {"bg": 0} and counts == {"bg": 0}


def test_windows_line_endings_and_bom(data_dir):
    path = data_dir / "crlf.txt"
    path.write_bytes(b"\xef\xbb\xbfimgs/a.png,1,1,4,4,mito\r\nimgs/b.png,2,2,3,3,mito\r\n")
    records, counts, _ = get_data(str(path))
    assert len(records) == 2 and counts["mito"] == 2
