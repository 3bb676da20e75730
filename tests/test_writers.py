"""Writers: each output is read back by its reader; format details checked against hand-made references."""
import csv
import json
import os
import re

import cv2
import numpy as np
import pytest
from conftest import no_temp_files, objects3d

from keras_frcnn_cryo import writers
from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.pascal_voc_parser import parse_annotation


# ------------------------------------------------------------------------------------------
def test_boxes2d_csv_and_json_roundtrip(tmp_path):
    per_slice = {4: (np.array([[1.5, 2.25, 30.0, 40.125], [0, 0, 5, 5]]), np.array([0.5, 0.9]), np.array([0, 1])),
                 0: (np.array([[7.0, 8.0, 9.0, 10.0]]), np.array([0.25]), np.array([1]))}
    rows = writers.boxes2d_rows(per_slice, ["mito", "other, with comma"])
    assert [r["slice"] for r in rows] == [0, 4, 4] and [r["score"] for r in rows] == [0.25, 0.9, 0.5]
    path = tmp_path / "boxes.csv"
    assert writers.write_boxes2d_csv(path, rows) == 3
    text = path.read_text()
    assert text.startswith("slice,x1,y1,x2,y2,class,score\n") and "#" not in text   # the header comes first
    with open(path, newline="") as fh:                                                 # as other tools read it
        assert [row["slice"] for row in csv.DictReader(fh)] == ["0", "4", "4"]
    back = writers.read_boxes2d_csv(path)
    assert back == rows
    # tuples are accepted as rows
    writers.write_boxes2d_csv(path, [(2, 1, 2, 3, 4, "mito", 0.5)])
    assert writers.read_boxes2d_csv(path) == [{"slice": 2, "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0,
                                               "class": "mito", "score": 0.5}]
    json_path = tmp_path / "boxes.json"
    writers.write_boxes2d_json(json_path, rows, pixel_size_a=None, source="tomo.mrc")
    assert writers.read_boxes2d_json(json_path) == rows
    data = json.loads(json_path.read_text())
    assert data["source"] == "tomo.mrc" and "0-based" in data["convention"]["z"]
    assert no_temp_files(tmp_path)


def test_boxes2d_csv_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("# c\nslice,x1,y1,x2,y2,class,score\n0,1,2,3,4,mito,0.5\nzero,1,2,3,4,mito,0.5\n")
    with pytest.raises(CryoError, match=r"bad\.csv:4: slice is not an integer"):
        writers.read_boxes2d_csv(path)
    path.write_text("slice,x1,y1,x2,class,score\n")
    with pytest.raises(CryoError, match="lacks column"):
        writers.read_boxes2d_csv(path)
    with pytest.raises(CryoError, match="not found"):
        writers.read_boxes2d_csv(tmp_path / "absent.csv")


# ------------------------------------------------------------------------------------------
def test_objects3d_csv_and_json_roundtrip(tmp_path):
    objects = objects3d()
    path = tmp_path / "objects.csv"
    assert writers.write_objects3d_csv(path, objects) == 2
    assert path.read_text().startswith(",".join(writers.OBJECTS3D_COLUMNS) + "\n")
    rows = writers.read_objects3d_csv(path)
    assert list(rows[0]) == list(writers.OBJECTS3D_COLUMNS)
    assert rows[0] == {"class": "mito", "score": 0.8, "x1": 10.0, "y1": 20.0, "z1": 3, "x2": 30.0, "y2": 60.0,
                       "z2": 6, "n_slices": 3, "first_slice": 3, "last_slice": 5}
    assert rows[1]["x1"] == 100.25 and rows[1]["last_slice"] == 1
    json_path = tmp_path / "objects.json"
    writers.write_objects3d_json(json_path, objects, pixel_size_a=13.5)
    back = writers.read_objects3d_json(json_path)
    assert [o.to_dict() for o in back] == [o.to_dict() for o in objects]
    metadata = json.loads(json_path.read_text())
    assert metadata["pixel_size_a"] == 13.5 and "0-based" in metadata["convention"]["z"]


# ------------------------------------------------------------------------------------------
def _pystardb_like_loops(text):
    """Block parsing the way pyStarDB does it (used by crYOLO and napari-boxmanager), rewritten here:
    after each ``data_`` line the first run of ``_`` lines (optionally after ``loop_``) is the header,
    and a loop's rows run from the next line to the first blank line."""
    lines = text.split("\n")
    out = {}
    for start, line in enumerate(lines):
        match = re.match(r"^data_(\S*)\s*$", line)
        if not match:
            continue
        index = start + 1
        while not lines[index].startswith("_"):
            index += 1
        is_loop = lines[index - 1].strip() == "loop_"
        labels = []
        while index < len(lines) and lines[index].startswith("_"):
            labels.append(lines[index].split()[0] if is_loop else lines[index].split())
            index += 1
        if not is_loop:
            out[match.group(1)] = dict(labels)
            continue
        rows = []
        while lines[index].strip():
            rows.append(lines[index].split())
            index += 1
        out[match.group(1)] = (labels, rows)
    return out


def test_cbox_layout_roundtrip_and_boxmanager_centres(tmp_path):
    objects = objects3d()
    path = tmp_path / "tomo.cbox"
    assert writers.write_cbox(path, objects, pixel_size_a=2.6) == 2
    text = path.read_text()
    before_first_block = text[:text.index("data_")]
    assert all(line.startswith("#") or not line for line in before_first_block.splitlines())
    assert "0-based" in before_first_block
    # no comment or blank line inside a header or between header and rows
    blocks = _pystardb_like_loops(text)
    assert blocks["global"] == {"_cbox_format_version": "1.0"}
    labels, rows = blocks["cryolo"]
    assert labels == list(writers.CBOX_COLUMNS)
    assert len(rows) == 2 and all(len(row) == 11 for row in rows)
    # napari-boxmanager: centre = _CoordinateX + _Width / 2 (pixel-index convention), z = _CoordinateZ
    first = dict(zip(labels, rows[0]))
    assert float(first["_CoordinateX"]) + float(first["_Width"]) / 2 == pytest.approx(19.5)   # (10 + 30) / 2 - 0.5
    assert float(first["_CoordinateY"]) + float(first["_Height"]) / 2 == pytest.approx(39.5)
    assert float(first["_CoordinateZ"]) == 4.0 and float(first["_Depth"]) == 3.0
    assert float(first["_EstWidth"]) == 18.0 and float(first["_NumBoxes"]) == 3 and first["_Angle"] == "<NA>"
    assert blocks["cryolo_include"] == (["_slice_index"], [["1"], ["4"]])   # centre slices 0.5 -> 1 and 4
    back = writers.read_cbox(path)
    for obj, got in zip(objects, back):
        for key in ("x1", "y1", "x2", "y2", "z1", "z2", "score"):
            assert got[key] == pytest.approx(getattr(obj, key), abs=1e-3)
        assert got["n_slices"] == obj.n_slices
    # one class per file
    assert writers.write_cbox(path, objects, class_name="vesicle") == 1
    assert len(writers.read_cbox(path)) == 1
    assert no_temp_files(tmp_path)


def test_cbox_reader_reads_a_cryolo_style_2d_file(tmp_path):
    path = tmp_path / "crYOLO.cbox"
    path.write_text("\ndata_global\n\n_cbox_format_version 1.0\n\ndata_cryolo\n\nloop_\n_CoordinateX #1\n"
                    "_CoordinateY #2\n_CoordinateZ #3\n_Width #4\n_Height #5\n_Depth #6\n_EstWidth #7\n"
                    "_EstHeight #8\n_Confidence #9\n_NumBoxes #10\n_Angle #11\n"
                    "3373.5\t3875.5\t<NA>\t220\t220\t<NA>\t227\t217\t0.86\t<NA>\t<NA>\n\n")
    (got,) = writers.read_cbox(path)
    assert (got["x1"], got["y1"], got["x2"], got["y2"]) == (3374.0, 3876.0, 3594.0, 4096.0)
    assert np.isnan(got["z1"]) and got["score"] == 0.86 and got["est_width"] == 227


def test_star_blocks_reader_errors(tmp_path):
    path = tmp_path / "bad.star"
    path.write_text("data_x\nloop_\n_a #1\n_b #2\n1 2 3\n")
    with pytest.raises(CryoError, match=r"bad\.star:5: row has 3 values for 2 labels"):
        writers.read_star_blocks(path)
    path.write_text("1 2\n")
    with pytest.raises(CryoError, match="before the first data_"):
        writers.read_star_blocks(path)


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("one_based", [False, True])
def test_imod_coords_roundtrip(tmp_path, one_based):
    objects = objects3d()
    path = tmp_path / "points.txt"
    assert writers.write_imod_coords(path, objects, one_based=one_based) == 2
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and ("1-based" if one_based else "0-based") in lines[0]
    offset = 1 if one_based else 0
    assert [float(v) for v in lines[1].split()] == [19.5 + offset, 39.5 + offset, 4.0 + offset]
    points = writers.read_imod_coords(path)
    np.testing.assert_allclose(points, [obj.centre for obj in objects], atol=0.005)
    # without the header the reader needs to be told the base
    writers.write_imod_coords(path, objects, one_based=one_based, header=False)
    assert not path.read_text().startswith("#")
    np.testing.assert_allclose(writers.read_imod_coords(path, one_based=one_based),
                               [obj.centre for obj in objects], atol=0.005)


def test_star_roundtrip(tmp_path):
    objects = objects3d()
    path = tmp_path / "particles.star"
    assert writers.write_star(path, objects, pixel_size_a=13.5) == 2
    text = path.read_text()
    assert "data_particles" in text and "0-based" in text
    labels, rows = _pystardb_like_loops(text)["particles"]
    assert labels == [*writers.STAR_COLUMNS, "_rlnImagePixelSize"]
    assert rows[0][3] == "1" and rows[1][3] == "2"          # RELION classes count from 1
    back = writers.read_star(path)
    for obj, got in zip(objects, back):
        assert (got["x"], got["y"], got["z"]) == pytest.approx(obj.centre, abs=0.005)
        assert got["class_index"] == obj.class_index and got["class_name"] == obj.class_name
        assert got["score"] == pytest.approx(obj.score) and got["pixel_size_a"] == 13.5
    writers.write_star(path, objects)
    assert "_rlnImagePixelSize" not in path.read_text()
    assert np.isnan(writers.read_star(path)[0]["pixel_size_a"])


# ------------------------------------------------------------------------------------------
def test_labelimg_for_slices_roundtrip(tmp_path):
    image_dir = tmp_path / "slices"
    image_dir.mkdir()
    paths = {}
    for z in (0, 1, 2):
        paths[z] = str(image_dir / f"tomo_z{z:03d}.png")
        cv2.imwrite(paths[z], np.zeros((64, 80), np.uint8))
    per_slice = {0: (np.array([[4, 5, 20, 30], [40, 10, 80, 64]], float), np.array([0.9, 0.6]), np.array([0, 1])),
                 2: (np.array([[1, 2, 3, 4]], float), np.array([0.7]), np.array([0]))}
    out = tmp_path / "xml"
    written = writers.write_labelimg_for_slices(out, paths, per_slice, ["mito", "vesicle"], 80, 64)
    assert [os.path.basename(p) for p in written] == ["tomo_z000.xml", "tomo_z001.xml", "tomo_z002.xml"]
    record = parse_annotation(written[0])
    assert record["filepath"] == os.path.abspath(paths[0]) and (record["width"], record["height"]) == (80, 64)
    assert [(b["class"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in record["bboxes"]] == [
        ("mito", 4, 5, 20, 30), ("vesicle", 40, 10, 80, 64)]
    assert parse_annotation(written[1])["bboxes"] == []
    with pytest.raises(CryoError, match="no image path"):
        writers.write_labelimg_for_slices(out, {0: paths[0]}, per_slice, ["mito", "vesicle"], 80, 64)
