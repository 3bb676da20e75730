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


def _labelled_slice(folder, name, tomogram, z, binning=1):
    """An annotated PNG path whose sidecar says it shows slice z of ``tomogram`` (binned)."""
    from keras_frcnn_cryo import tomo_io

    folder.mkdir(parents=True, exist_ok=True)
    png = str(folder / name)
    tomo_io.write_sidecar(png, tomo_io.slice_sidecar(tomogram, "tomogram", z, (10, 64, 64),
                                                     (64 // binning, 64 // binning), 20.0, binning=binning))
    return png


def test_tomogram_csv_rows_reach_the_labelled_slices(tmp_path):
    """test_frcnn.py's NAME_boxes2d.csv (tomogram pixels, every slice) scores the PNGs whose sidecars
    name tomogram NAME and a slice: divided by their binning; slices nobody labelled are left out."""
    from keras_frcnn_cryo import writers

    z4 = _labelled_slice(tmp_path / "png", "tomoA_z04.png", "../tomograms/tomoA.mrc", 4)
    z6 = _labelled_slice(tmp_path / "png", "tomoA_z06_bin2.png", "../tomograms/tomoA.mrc", 6, binning=2)
    other = _labelled_slice(tmp_path / "png", "tomoB_z04.png", "../tomograms/tomoB.mrc", 4)
    plain = str(tmp_path / "png" / "plain.png")
    out = tmp_path / "out"
    out.mkdir()
    rows = [{"slice": z, "x1": 8.0, "y1": 4.0, "x2": 24.0, "y2": 20.0, "class": "mito", "score": s}
            for z, s in ((4, 0.9), (5, 0.8), (6, 0.7), (7, 0.6))]
    writers.write_boxes2d_csv(str(out / "tomoA_boxes2d.csv"), rows)
    index = detections_csv.ImageIndex([z4, z6, other, plain], [z4, z6, plain])
    read = detections_csv.read_tomogram_csv(str(out / "tomoA_boxes2d.csv"), index)
    assert (read.n_rows, read.unlabelled_slices, read.min_score) == (4, 2, 0.7)
    assert [(d["image"], d["x1"], d["y2"], d["score"]) for d in read.detections] == [
        (z4, 8.0, 20.0, 0.9), (z6, 4.0, 10.0, 0.7)]
    # a folder of tomogram outputs alone is a detections source; with a detections.csv, both are read
    assert detections_csv.detection_csv_files(str(out)) == [str(out / "tomoA_boxes2d.csv")]
    assert detections_csv.load_detections(str(out), index, 0.05) == read.detections
    (out / "detections.csv").write_text(",".join(detections_csv.CSV_COLUMNS) + "\nplain.png,0,0,4,4,mito,0.5\n")
    merged = detections_csv.load_detections(str(out), index, 0.05)
    assert [d["image"] for d in merged] == [plain, z4, z6]
    # the same slice from the slice-by-slice CSV and from the tomogram: say so, do not count it twice
    (out / "detections.csv").write_text(",".join(detections_csv.CSV_COLUMNS) + "\ntomoA_z04.png,0,0,4,4,mito,0.5\n")
    with pytest.raises(CryoError, match="tomoA_z04.png has detections in two files"):
        detections_csv.load_detections(str(out), index, 0.05)
    # a tomogram no annotated image comes from is reported, not silently dropped
    writers.write_boxes2d_csv(str(tmp_path / "tomoC_boxes2d.csv"), rows[:1])
    lone = detections_csv.read_tomogram_csv(str(tmp_path / "tomoC_boxes2d.csv"), index)
    assert lone.detections == [] and list(lone.unannotated.values()) == [1]


def test_tomogram_csv_slice_shown_twice_is_an_error(tmp_path):
    from keras_frcnn_cryo import writers

    first = _labelled_slice(tmp_path / "a", "z04.png", "/data/tomoA.mrc", 4)
    second = _labelled_slice(tmp_path / "b", "z04.png", "/data/tomoA.mrc", 4)
    path = str(tmp_path / "tomoA_boxes2d.csv")
    writers.write_boxes2d_csv(path, [{"slice": 4, "x1": 0, "y1": 0, "x2": 4, "y2": 4, "class": "mito", "score": 1}])
    with pytest.raises(CryoError, match="slice 4 of tomogram tomoA is shown by several annotated images"):
        detections_csv.read_tomogram_csv(path, detections_csv.ImageIndex([first, second], [first, second]))


@pytest.mark.parametrize("lowest, noted", [(0.0509, False), (0.5, True)])
def test_note_on_a_cut_score_range_only_when_cut_above_the_floor(tmp_path, capsys, lowest, noted):
    """A CSV written with --threshold 0.05 has no score below 0.05 by construction: no note; one
    written at 0.5 truncates the PR curves: a note that says how to write the full one."""
    path = tmp_path / "dets.csv"
    path.write_text(",".join(detections_csv.CSV_COLUMNS) + f"\na.png,0,0,4,4,mito,0.9\na.png,5,5,9,9,mito,{lowest}\n")
    detections_csv.load_detections(str(path), detections_csv.ImageIndex(["/x/a.png"], ["/x/a.png"]), 0.05)
    assert ("holds no score below" in capsys.readouterr().out) == noted
