"""The detections CSV (detections_csv.py): writer and reader agree, rows find their images, shard parts merge."""
import csv
import os
from types import SimpleNamespace

import numpy as np
import pytest

from keras_frcnn_cryo import detections_csv
from keras_frcnn_cryo.errors import CryoError


def found(boxes, scores, labels):
    """A model.Detections look-alike (the writer reads only these fields)."""
    return SimpleNamespace(boxes=np.asarray(boxes, float), scores=np.asarray(scores, float),
                           labels=np.asarray(labels, int), class_names=["mito", "vesicle", "bg"])


def test_written_rows_read_back_keyed_to_the_annotated_images(tmp_path):
    root = tmp_path / "in"
    results = {str(root / "tomoA" / "z00.png"): found([[1.5, 2, 10, 12.25]], [0.9], [0]),
               str(root / "tomoB" / "z00.png"): found([[0, 0, 4, 4], [5, 5, 9, 9]], [0.5, 0.125], [1, 0]),
               str(root / "tomoB" / "z01.png"): found(np.zeros((0, 4)), [], [])}
    path = str(tmp_path / detections_csv.DETECTIONS_CSV)
    assert detections_csv.write_detections_csv(path, results, relative_to=str(root)) == 3
    with open(path) as fh:
        rows = list(csv.DictReader(fh))            # the first line is the header: any CSV reader works
    assert [r["image"] for r in rows] == ["tomoA/z00.png", "tomoB/z00.png", "tomoB/z00.png"]
    assert tuple(rows[0]) == detections_csv.CSV_COLUMNS
    truth = ["/data/tomoA/z00.png", "/data/tomoB/z00.png", "/data/tomoB/z01.png"]
    index = detections_csv.ImageIndex(truth, truth[1:])          # tomoA is outside the evaluated split
    read = detections_csv.read_detections_csv(path, index)
    assert (read.n_rows, read.n_other_split, read.min_score) == (3, 1, 0.125)
    assert [(d["image"], d["class"], d["x1"], d["score"]) for d in read.detections] == [
        ("/data/tomoB/z00.png", "vesicle", 0.0, 0.5), ("/data/tomoB/z00.png", "mito", 5.0, 0.125)]
    assert detections_csv.load_detections(path, index, 0.05) == read.detections


def test_image_index_uses_trailing_path_components_for_shared_names():
    index = detections_csv.ImageIndex(["/d/tomoA/z00.png", "/d/tomoB/z00.png", "/d/tomoB/z01.png"],
                                      ["/d/tomoB/z00.png"])
    assert index.lookup("tomoB/z00.png", "dets.csv", 2) == "/d/tomoB/z00.png"
    assert index.lookup("out/tomoA/z00.png", "dets.csv", 2) == "/d/tomoA/z00.png"
    assert index.lookup("z01.png", "dets.csv", 2) == "/d/tomoB/z01.png"
    assert index.lookup("z02.png", "dets.csv", 2) is None
    with pytest.raises(CryoError, match="dets.csv:7.*ambiguous"):
        index.lookup("z00.png", "dets.csv", 7)


def test_shard_parts_are_found_merged_and_checked(tmp_path):
    header = ",".join(detections_csv.CSV_COLUMNS) + "\n"
    part = [detections_csv.shard_csv_name((k, 2)) for k in range(2)]
    assert part == ["detections.shard-0-of-2.csv", "detections.shard-1-of-2.csv"]
    assert detections_csv.shard_csv_name(None) == detections_csv.DETECTIONS_CSV
    (tmp_path / part[0]).write_text(header + "a.png,0,0,4,4,mito,0.9\n")
    with pytest.raises(CryoError, match=r"part\(s\) 1/2 missing"):
        detections_csv.detection_csv_files(str(tmp_path))
    (tmp_path / part[1]).write_text(header + "b.png,0,0,4,4,mito,0.8\n")
    files = detections_csv.detection_csv_files(str(tmp_path))
    assert [os.path.basename(f) for f in files] == part
    index = detections_csv.ImageIndex(["/x/a.png", "/x/b.png"], ["/x/a.png", "/x/b.png"])
    merged = detections_csv.load_detections(str(tmp_path), index, 0.05)
    assert sorted(d["image"] for d in merged) == ["/x/a.png", "/x/b.png"]
    (tmp_path / part[1]).write_text(header + "a.png,1,1,4,4,mito,0.8\n")       # one image in two parts
    with pytest.raises(CryoError, match="a.png has detections in two parts"):
        detections_csv.load_detections(str(tmp_path), index, 0.05)
