"""Tests for keras_frcnn_cryo.masks_to_boxes (masks -> boxes -> annotations.txt + LabelImg XML)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import deque

import cv2
import mrcfile
import numpy as np
import pytest

from keras_frcnn_cryo import masks_to_boxes as m2b
from keras_frcnn_cryo import pascal_voc_parser, simple_parser
from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.masks_to_boxes import (
    boxes_from_mask,
    is_instance_mask,
    mask_components,
    masks_to_records,
    write_annotations,
)
from keras_frcnn_cryo.tomo_io import read_sidecar

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a Lucchi++ folder (images/ and masks/ of slice_NNNN.png) to check the command on real EM masks
LUCCHI = os.environ.get("LUCCHI_PP_DIR", "")


def _sorted(boxes) -> list[list[float]]:
    return sorted(np.asarray(boxes, np.float64).reshape(-1, 4).tolist())


def _record_boxes(record) -> list[list[float]]:
    return _sorted([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in record["bboxes"]])


def _hand_mask() -> np.ndarray:
    """20 x 30 binary mask (0/255) with known objects, boxes given in HAND_BOXES."""
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:8] = 255        # blob A: columns 3..7, rows 2..4 -> [3, 2, 8, 5], area 15
    mask[8:12, 20:26] = 255     # blob B: [20, 8, 26, 12], area 24
    mask[15:20, 0:3] = 255      # blob touching the left and bottom border: [0, 15, 3, 20], area 15
    mask[5, 12] = 255           # diagonal 8-connected pair: one object [12, 5, 14, 7], area 2
    mask[6, 13] = 255
    mask[16:18, 15] = 255       # tiny blob: [15, 16, 16, 18], area 2 ... plus one pixel below-right
    mask[18, 16] = 255          # -> one object [15, 16, 17, 19], area 3
    return mask


HAND_BOXES = {(3, 2, 8, 5): 15, (20, 8, 26, 12): 24, (0, 15, 3, 20): 15, (12, 5, 14, 7): 2, (15, 16, 17, 19): 3}


# ------------------------------------------------------------------------------------------
# single masks
# ------------------------------------------------------------------------------------------
def test_binary_components_by_hand():
    boxes, areas = mask_components(_hand_mask())
    found = {tuple(int(v) for v in box): int(area) for box, area in zip(boxes, areas)}
    assert found == HAND_BOXES
    assert boxes.dtype == np.float64 and boxes.shape == (5, 4)


def test_min_size_drops_small_objects_only():
    mask = _hand_mask()
    assert len(boxes_from_mask(mask, min_size=0)) == 5
    kept = _sorted(boxes_from_mask(mask, min_size=3))  # area 2 dropped, area 3 kept (>=)
    assert kept == _sorted([b for b, a in HAND_BOXES.items() if a >= 3])
    assert _sorted(boxes_from_mask(mask, min_size=16)) == [[20, 8, 26, 12]]


def test_four_connected_would_split_the_diagonal_pair():
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = 1
    assert _sorted(boxes_from_mask(mask)) == [[1, 1, 4, 4]]


def test_instance_mask_touching_objects():
    mask = np.zeros((10, 12), np.int32)
    mask[2:6, 1:5] = 7           # object 7: [1, 2, 5, 6]
    mask[3:8, 5:9] = 3           # object 3 touches object 7 along column 4|5: [5, 3, 9, 8]
    mask[0:2, 10:12] = 12        # object 12 in the corner: [10, 0, 12, 2]
    assert is_instance_mask(mask)
    assert _sorted(boxes_from_mask(mask)) == [[1, 2, 5, 6], [5, 3, 9, 8], [10, 0, 12, 2]]
    assert _sorted(boxes_from_mask(mask, instance=True)) == [[1, 2, 5, 6], [5, 3, 9, 8], [10, 0, 12, 2]]
    # read as binary, the touching pair merges
    assert _sorted(boxes_from_mask(mask, instance=False)) == [[1, 2, 9, 8], [10, 0, 12, 2]]


def test_instance_label_in_two_pieces_gives_two_boxes():
    mask = np.zeros((10, 10), np.uint16)
    mask[1:3, 1:3] = 5
    mask[7:9, 6:10] = 5          # same label, disconnected
    mask[4:6, 4:6] = 9
    boxes, areas = mask_components(mask, instance=True)
    assert _sorted(boxes) == [[1, 1, 3, 3], [4, 4, 6, 6], [6, 7, 10, 9]]
    assert sorted(areas.tolist()) == [4, 4, 8]


def test_single_label_reads_the_same_both_ways():
    mask = _hand_mask() // 255 * 4
    assert not is_instance_mask(mask)
    assert _sorted(boxes_from_mask(mask, instance=True)) == _sorted(boxes_from_mask(mask, instance=False))


def test_empty_and_float_masks():
    assert boxes_from_mask(np.zeros((5, 5), np.uint8)).shape == (0, 4)
    assert boxes_from_mask(np.zeros((5, 5), np.uint8), instance=True).shape == (0, 4)
    floats = np.zeros((5, 5), np.float32)
    floats[1:3, 1:4] = 1.0
    assert _sorted(boxes_from_mask(floats)) == [[1, 1, 4, 3]]
    floats[0, 0] = 0.4
    with pytest.raises(CryoError, match="non-integer"):
        boxes_from_mask(floats)


# ------------------------------------------------------------------------------------------
# folders of PNG masks
# ------------------------------------------------------------------------------------------
def _folders(tmp_path, masks: dict[str, np.ndarray], image_names: list[str] | None = None):
    images_dir, masks_dir = tmp_path / "images", tmp_path / "masks"
    images_dir.mkdir(exist_ok=True)
    masks_dir.mkdir(exist_ok=True)
    for name, mask in masks.items():
        cv2.imwrite(str(masks_dir / f"{name}.png"), mask)
    for name in image_names if image_names is not None else list(masks):
        shape = masks[name].shape if name in masks else (20, 30)
        cv2.imwrite(str(images_dir / f"{name}.tif"), np.full(shape, 90, np.uint8))
    return str(masks_dir), str(images_dir)


def test_folders_to_annotations_and_xml(tmp_path):
    instance = np.zeros((20, 30), np.uint8)
    instance[2:6, 1:5] = 1
    instance[3:8, 5:9] = 2
    masks_dir, images_dir = _folders(tmp_path, {"s_2": _hand_mask(), "s_10": instance,
                                                "s_1": np.zeros((20, 30), np.uint8)})
    out = tmp_path / "out"
    records = masks_to_records(masks_dir, images_dir, str(out), min_size=3)
    assert [os.path.basename(r["filepath"]) for r in records] == ["s_1.tif", "s_2.tif", "s_10.tif"]
    assert [r["n_dropped"] for r in records] == [0, 1, 0]
    assert not out.exists()  # masks_to_records writes nothing for image folders
    ann = write_annotations(records, str(out))
    text = open(ann).read().splitlines()
    assert "../images/s_1.tif,,,,," in text
    assert "../images/s_2.tif,3,2,8,5,mitochondrion" in text
    parsed, counts, mapping = simple_parser.get_data(ann)
    assert mapping == {"mitochondrion": 0, "bg": 1} and counts["mitochondrion"] == 4 + 2
    by_name = {os.path.basename(r["filepath"]): r for r in parsed}
    assert _record_boxes(by_name["s_2.tif"]) == _sorted([b for b, a in HAND_BOXES.items() if a >= 3])
    assert _record_boxes(by_name["s_10.tif"]) == [[1, 2, 5, 6], [5, 3, 9, 8]]
    assert by_name["s_1.tif"]["bboxes"] == []
    voc, _, _ = pascal_voc_parser.get_data(str(out))
    voc_by_name = {os.path.basename(r["filepath"]): r for r in voc}
    for name in by_name:
        assert _record_boxes(voc_by_name[name]) == _record_boxes(by_name[name])
    assert sorted(os.listdir(out)) == ["annotations.txt", "s_1.xml", "s_10.xml", "s_2.xml"]


def test_mask_without_image_and_image_without_mask(tmp_path):
    masks_dir, images_dir = _folders(tmp_path, {"a": _hand_mask(), "b": _hand_mask()}, image_names=["a", "c"])
    out = tmp_path / "out"
    with pytest.raises(CryoError, match=r"masks/b\.png: mask has no image"):
        masks_to_records(masks_dir, images_dir, str(out))
    os.remove(os.path.join(masks_dir, "b.png"))
    with pytest.warns(UserWarning, match="without a mask"):
        records = masks_to_records(masks_dir, images_dir, str(out))
    assert [os.path.basename(r["filepath"]) for r in records] == ["a.tif"]


def test_shape_mismatch_names_both_files_and_writes_nothing(tmp_path, capsys):
    masks_dir, images_dir = _folders(tmp_path, {"a": _hand_mask()})
    cv2.imwrite(os.path.join(images_dir, "a.tif"), np.zeros((21, 30), np.uint8))
    out = tmp_path / "out"
    with pytest.raises(CryoError, match=r"masks/a\.png: mask is 30 x 20 px .*images/a\.tif is 30 x 21"):
        masks_to_records(masks_dir, images_dir, str(out))
    assert m2b.console_main(["--masks", masks_dir, "--images", images_dir, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "a.png" in err[0] and "a.tif" in err[0]
    assert not out.exists() or os.listdir(out) == []


def test_empty_folder_and_bad_options(tmp_path):
    (tmp_path / "masks").mkdir()
    (tmp_path / "images").mkdir()
    with pytest.raises(CryoError, match="no image files"):
        masks_to_records(str(tmp_path / "masks"), str(tmp_path / "images"), str(tmp_path / "out"))
    masks_dir, images_dir = _folders(tmp_path, {"a": _hand_mask()})
    with pytest.raises(CryoError, match="reserved"):
        masks_to_records(masks_dir, images_dir, str(tmp_path / "out"), class_name="bg")
    with pytest.raises(CryoError, match="min-size"):
        masks_to_records(masks_dir, images_dir, str(tmp_path / "out"), min_size=-1)


# ------------------------------------------------------------------------------------------
# MRC segmentations
# ------------------------------------------------------------------------------------------
def _write_mrc(path, data, voxel=None):
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(data)
        if voxel is not None:
            mrc.voxel_size = voxel
    return str(path)


def _segmentation() -> tuple[np.ndarray, dict[int, list[list[float]]]]:
    seg = np.zeros((4, 24, 32), np.int16)
    seg[1, 2:6, 3:9] = 1              # slice 1: [3, 2, 9, 6]
    seg[1, 10:20, 20:31] = 1          # slice 1: [20, 10, 31, 20]
    seg[2, 0:4, 0:4] = 1              # slice 2: border blob [0, 0, 4, 4]
    seg[2, 23, 31] = 1                # slice 2: single pixel [31, 23, 32, 24]
    return seg, {0: [], 1: [[3, 2, 9, 6], [20, 10, 31, 20]], 2: [[0, 0, 4, 4], [31, 23, 32, 24]], 3: []}


def test_mrc_segmentation_with_mrc_images(tmp_path):
    seg, expected = _segmentation()
    image = np.random.default_rng(0).normal(0, 1, seg.shape).astype(np.float32)
    seg_path = _write_mrc(tmp_path / "tomo_seg.mrc", seg)
    img_path = _write_mrc(tmp_path / "tomo.mrc", image, voxel=8.0)
    out = tmp_path / "out"
    records = masks_to_records(seg_path, img_path, str(out))
    assert [os.path.basename(r["filepath"]) for r in records] == [f"tomo_z{z:04d}.png" for z in range(4)]
    for z, record in enumerate(records):
        assert _record_boxes(record) == _sorted(expected[z])
        assert record["group"] == "tomo" and (record["width"], record["height"]) == (32, 24)
        assert os.path.isfile(record["filepath"])  # the exported PNG exists
        assert cv2.imread(record["filepath"], cv2.IMREAD_UNCHANGED).shape == (24, 32)
        assert read_sidecar(record["filepath"])["z"] == z
    ann = write_annotations(records, str(out))
    lines = open(ann).read().splitlines()
    assert "tomo_z0000.png,,,,,,tomo" in lines and "tomo_z0001.png,3,2,9,6,mitochondrion,tomo" in lines
    parsed, _, _ = simple_parser.get_data(ann)
    assert [_record_boxes(r) for r in parsed] == [_sorted(expected[z]) for z in range(4)]
    assert all(r["group"] == "tomo" for r in parsed)
    with_min = masks_to_records(seg_path, img_path, str(tmp_path / "out2"), min_size=2)
    assert _record_boxes(with_min[2]) == [[0, 0, 4, 4]]


def test_mrc_segmentation_with_png_folder(tmp_path):
    seg, expected = _segmentation()
    seg_path = _write_mrc(tmp_path / "seg.mrc", seg.astype(np.float32))
    images = tmp_path / "images"
    images.mkdir()
    for z in (0, 1, 2, 10):  # natural order: 0, 1, 2, 10 -> slices 0..3
        cv2.imwrite(str(images / f"img_{z}.png"), np.zeros((24, 32), np.uint8))
    records = masks_to_records(seg_path, str(images), str(tmp_path / "out"))
    assert [os.path.basename(r["filepath"]) for r in records] == ["img_0.png", "img_1.png", "img_2.png", "img_10.png"]
    assert [_record_boxes(r) for r in records] == [_sorted(expected[z]) for z in range(4)]
    os.remove(images / "img_10.png")
    with pytest.raises(CryoError, match="4 slices but .* 3 images"):
        masks_to_records(seg_path, str(images), str(tmp_path / "out"))
    cv2.imwrite(str(images / "img_3.png"), np.zeros((25, 32), np.uint8))
    with pytest.raises(CryoError, match=r"seg\.mrc slice 3 .*img_3\.png"):
        masks_to_records(seg_path, str(images), str(tmp_path / "out"))


def test_mrc_shape_mismatch_and_png_masks_for_mrc_images(tmp_path):
    seg, _ = _segmentation()
    seg_path = _write_mrc(tmp_path / "seg.mrc", seg)
    img_path = _write_mrc(tmp_path / "tomo.mrc", np.zeros((4, 24, 30), np.float32))
    out = tmp_path / "out"
    with pytest.raises(CryoError, match=r"seg\.mrc: segmentation is \(4, 24, 32\).*tomo\.mrc is \(4, 24, 30\)"):
        masks_to_records(seg_path, img_path, str(out))
    assert not out.exists()  # checked before any slice was exported
    masks_dir, _ = _folders(tmp_path, {"a": _hand_mask()})
    with pytest.raises(CryoError, match="MRC segmentation"):
        masks_to_records(masks_dir, img_path, str(out))


def test_cli_mrc_instance_flag(tmp_path, capsys):
    seg = np.zeros((2, 10, 12), np.int16)
    seg[0, 2:6, 1:5] = 1
    seg[0, 2:6, 5:9] = 1  # same value, touching: one object even with --instance
    seg_path = _write_mrc(tmp_path / "s.mrc", seg)
    img_path = _write_mrc(tmp_path / "v.mrc", np.random.default_rng(1).normal(0, 1, (2, 10, 12)).astype(np.float32))
    out = tmp_path / "out"
    assert m2b.console_main(["--masks", seg_path, "--images", img_path, "--out", str(out), "--instance",
                     "--class-name", "vesicle"]) == 0
    assert "1 box(es)" in capsys.readouterr().out
    parsed, counts, _ = simple_parser.get_data(str(out / "annotations.txt"))
    assert counts == {"vesicle": 1, "bg": 0} and _record_boxes(parsed[0]) == [[1, 2, 9, 6]]


# ------------------------------------------------------------------------------------------
# real data: Lucchi++ slices
# ------------------------------------------------------------------------------------------
def _reference_components(mask: np.ndarray) -> list[tuple[list[int], set]]:
    """Brute-force 8-connected flood fill: [(box [x1, y1, x2, y2] exclusive, pixel set)]."""
    todo = set(zip(*np.nonzero(mask)))
    found = []
    while todo:
        seed = todo.pop()
        pixels, queue = {seed}, deque([seed])
        while queue:
            row, col = queue.popleft()
            for d_row in (-1, 0, 1):
                for d_col in (-1, 0, 1):
                    neighbour = (row + d_row, col + d_col)
                    if neighbour in todo:
                        todo.remove(neighbour)
                        pixels.add(neighbour)
                        queue.append(neighbour)
        rows = [p[0] for p in pixels]
        cols = [p[1] for p in pixels]
        found.append(([min(cols), min(rows), max(cols) + 1, max(rows) + 1], pixels))
    return found


@pytest.mark.skipif(not (LUCCHI and os.path.isdir(os.path.join(LUCCHI, "masks"))),
                    reason="set LUCCHI_PP_DIR to a Lucchi++ folder (images/, masks/) to run")
def test_cli_on_lucchi_slices(tmp_path):
    names = ["slice_0000.png", "slice_0081.png", "slice_0162.png"]
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for name in names:
            shutil.copy(os.path.join(LUCCHI, sub, name), tmp_path / sub / name)
    out = tmp_path / "out"
    min_size = 50
    done = subprocess.run(
        [sys.executable, "-m", "keras_frcnn_cryo.masks_to_boxes", "--masks", str(tmp_path / "masks"),
         "--images", str(tmp_path / "images"), "--out", str(out), "--min-size", str(min_size)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    records, _, _ = simple_parser.get_data(str(out / "annotations.txt"))
    assert [os.path.basename(r["filepath"]) for r in records] == names
    for record in records:
        mask = cv2.imread(os.path.join(LUCCHI, "masks", os.path.basename(record["filepath"])), cv2.IMREAD_UNCHANGED)
        reference = _reference_components(mask > 0)
        expected = _sorted([box for box, pixels in reference if len(pixels) >= min_size])
        boxes = _record_boxes(record)
        assert boxes == expected and len(boxes) > 5
        # each box is tight: its component reaches all four edges and nothing of it lies outside
        by_box = {tuple(box): pixels for box, pixels in reference}
        for x1, y1, x2, y2 in boxes:
            pixels = by_box[(x1, y1, x2, y2)]
            rows = {p[0] for p in pixels}
            cols = {p[1] for p in pixels}
            assert min(rows) == y1 and max(rows) == y2 - 1 and min(cols) == x1 and max(cols) == x2 - 1
            assert mask[int(y1):int(y2), int(x1):int(x2)].astype(bool).sum() >= len(pixels)
        voc, _, _ = pascal_voc_parser.get_data(str(out / (os.path.splitext(os.path.basename(record["filepath"]))[0]
                                                         + ".xml")))
        assert _record_boxes(voc[0]) == boxes
