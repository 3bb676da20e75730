"""Prediction on images and on MRC volumes: outputs, completeness marker, bad input."""
import csv
import os

import numpy as np
import pytest
from conftest import toy_config

from keras_frcnn_cryo import pictures, predict, tomo_io, writers
from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.model import Detector


@pytest.fixture(scope="module")
def detector():
    import keras
    keras.utils.set_random_seed(0)
    return Detector(toy_config(rpn_max_proposals=16, rpn_max_proposals_test=16))


@pytest.fixture()
def tomogram(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "cell.mrc")
    tomo_io.write_volume(path, rng.normal(size=(6, 64, 64)).astype(np.float32), pixel_size_a=20.0)
    return path


def volume_options(**kw):
    return predict.VolumeOptions(**{"batch_size": 4, "overlay_slices": 2, **kw})


def test_tomogram_outputs(detector, tomogram, tmp_path):
    out = str(tmp_path / "out")
    summary = predict.predict_volume(detector, tomogram, out, threshold=0.0, options=volume_options(labelimg=True))
    names = set(os.listdir(out))
    for suffix in ("_boxes2d.csv", "_boxes2d.json", "_objects3d.csv", "_objects3d.json", ".cbox", ".coords",
                   ".star", "_overview.png", ".done.json"):
        assert "cell" + suffix in names, suffix
    assert len(os.listdir(os.path.join(out, "cell_overlays"))) == 2
    rows = writers.read_boxes2d_csv(os.path.join(out, "cell_boxes2d.csv"))
    assert summary["slices_processed"] == 6 and len(rows) == summary["detections"] > 0
    assert {r["slice"] for r in rows} <= set(range(6))
    assert all(0 <= r["x1"] < r["x2"] <= 64 and 0 <= r["y1"] < r["y2"] <= 64 for r in rows)
    done = writers.read_json(os.path.join(out, "cell.done.json"))
    assert done["pixel_size_a"] == 20.0
    assert 0.0 <= done["snr_estimate"] < 0.05                       # the volume is white noise
    boxes_json = writers.read_json(os.path.join(out, "cell_boxes2d.json"))
    assert boxes_json["snr_estimate"] == done["snr_estimate"] and "0-based" in boxes_json["convention"]["z"]
    lab = os.listdir(os.path.join(out, "cell_labelimg"))
    assert any(n.endswith(".xml") for n in lab) and any(n.endswith(".png") for n in lab)


def test_volume_of_another_pixel_size_is_resized_to_the_training_scale(detector, tomogram, tmp_path, capsys,
                                                                       monkeypatch):
    seen = []
    original = detector.detect_many
    monkeypatch.setattr(detector, "detect_many", lambda images, min_score=None, pixel_size_a=None:
                        seen.append(pixel_size_a) or original(images, min_score, pixel_size_a))
    monkeypatch.setattr(detector.cfg, "network_pixel_size_angstrom", 10.0)
    monkeypatch.setattr(detector.cfg, "pixel_size_angstrom", 10.0)
    summary = predict.predict_volume(detector, tomogram, str(tmp_path / "o"), threshold=0.0,
                                     options=volume_options(binning=2))
    assert set(seen) == {40.0}                                        # 20 A/px binned 2x
    assert "40 A/px" in capsys.readouterr().out and detector.input_scale(40.0) == 4.0
    rows = writers.read_boxes2d_csv(os.path.join(str(tmp_path / "o"), "cell_boxes2d.csv"))
    assert len(rows) == summary["detections"] and all(r["x2"] <= 64 and r["y2"] <= 64 for r in rows)
    monkeypatch.setattr(detector.cfg, "match_pixel_size", False)       # --no-pixel-size-match
    assert detector.input_scale(40.0) is None


def test_binning_maps_boxes_to_input_pixels(detector, tomogram, tmp_path, monkeypatch):
    """Detections made on 2x-binned slices are written in the pixels of the file itself."""
    from keras_frcnn_cryo.model import Detections

    def fake_many(images, min_score=None, pixel_size_a=None):
        assert images[0].shape == (32, 32)
        return [Detections(np.array([[4.0, 5.0, 10.0, 12.0]]), np.array([0.9]), np.array([0]), ["m", "bg"])
                for _ in images]
    monkeypatch.setattr(detector, "detect_many", fake_many)
    out = str(tmp_path / "binned")
    predict.predict_volume(detector, tomogram, out, 0.5, volume_options(binning=2))
    rows = writers.read_boxes2d_csv(os.path.join(out, "cell_boxes2d.csv"))
    assert [(r["x1"], r["y1"], r["x2"], r["y2"]) for r in rows[:1]] == [(8.0, 10.0, 20.0, 24.0)]
    objects = writers.read_objects3d_csv(os.path.join(out, "cell_objects3d.csv"))
    assert len(objects) == 1 and (objects[0]["z1"], objects[0]["z2"]) == (0, 6)


def test_tomogram_boxes_refined_by_their_track(detector, tomogram, tmp_path, monkeypatch):
    """With track_refine_window / track_rescore set, NAME_boxes2d holds each slice's box averaged with
    its track's neighbours and scored by the track; a box on no track keeps its own, x the untracked weight."""
    from keras_frcnn_cryo.model import Detections
    calls = []

    def fake_many(images, min_score=None, pixel_size_a=None):
        out = []
        for _ in images:
            z = len(calls)
            calls.append(z)
            boxes, scores = [[10.0 + (3.0 if z == 2 else 0.0), 10.0, 30.0, 30.0]], [0.5 if z == 2 else 0.9]
            if z == 5:
                boxes.append([40.0, 40.0, 50.0, 50.0]); scores.append(0.8)                 # on one slice only
            out.append(Detections(np.array(boxes), np.array(scores), np.zeros(len(boxes), int), ["m", "bg"]))
        return out
    monkeypatch.setattr(detector, "detect_many", fake_many)
    for name, value in (("track_refine_window", 1), ("track_rescore", True), ("track_untracked_weight", 0.5)):
        monkeypatch.setattr(detector.cfg, name, value)
    out = str(tmp_path / "refined")
    predict.predict_volume(detector, tomogram, out, 0.0, volume_options())
    rows = writers.read_boxes2d_csv(os.path.join(out, "cell_boxes2d.csv"))
    track = [r for r in rows if r["x2"] < 35]
    assert [r["slice"] for r in track] == list(range(6))
    assert all(r["score"] == pytest.approx((0.9 * 5 + 0.5) / 6, abs=1e-4) for r in track)
    assert track[2]["x1"] == pytest.approx(10 + 3 * 0.5 / 2.3, abs=0.01)        # pulled back towards 10
    assert track[0]["x1"] == pytest.approx(10.0)
    lone = [r for r in rows if r["x1"] >= 40]
    assert len(lone) == 1 and lone[0]["score"] == pytest.approx(0.4, abs=1e-4)


def test_tilt_series_gets_boxes_per_tilt(detector, tmp_path):
    path = str(tmp_path / "ts.st")
    tomo_io.write_volume(path, np.random.default_rng(1).normal(size=(3, 64, 64)).astype(np.float32),
                         image_stack=True)
    (tmp_path / "ts.tlt").write_text("-3\n0\n3\n")
    out = str(tmp_path / "out")
    summary = predict.predict_volume(detector, path, out, 0.0, volume_options())
    assert summary["kind"] == "tilt_series" and "ts_objects3d.csv" not in os.listdir(out)
    assert writers.read_json(os.path.join(out, "ts_boxes2d.json"))["angles"] == [-3.0, 0.0, 3.0]


def test_bad_z_range_writes_nothing(detector, tomogram, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CryoError, match="outside the volume"):
        predict.predict_volume(detector, tomogram, str(out), 0.5, volume_options(z_range=(4, 9)))
    assert not out.exists() or not os.listdir(out)


def test_folder_goes_past_a_bad_file_and_resumes(detector, tomogram, tmp_path, monkeypatch, capsys):
    folder = os.path.dirname(tomogram)
    (tmp_path / "broken.mrc").write_bytes(b"not an mrc file at all")
    monkeypatch.setattr(predict, "load_detector", lambda *a: detector)
    parser = predict.build_parser()
    out = str(tmp_path / "res")
    args = parser.parse_args(["-p", folder, "--output", out, "--threshold", "0.0", "--overlay-slices", "1"])
    with pytest.raises(CryoError, match="1 of 2 volumes failed"):
        predict.main(args)
    assert os.path.isfile(os.path.join(out, "cell.done.json"))
    assert "broken.mrc" in capsys.readouterr().err
    os.remove(tmp_path / "broken.mrc")
    args = parser.parse_args(["-p", folder, "--output", out, "--resume"])
    assert predict.main(args) == 0
    assert "skipped (--resume)" in capsys.readouterr().out


def test_images_csv(detector, tmp_path, monkeypatch):
    import cv2
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"s_{i}.png"), np.random.default_rng(i).integers(0, 255, (40, 50)).astype(np.uint8))
    csv_path = predict.predict_images(detector, tomo_io.list_images(str(folder)), str(tmp_path / "o"), 0.0,
                                      root=str(folder))
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    assert {r["image"] for r in rows} <= {"s_0.png", "s_1.png"} and rows
    assert sorted(os.listdir(tmp_path / "o" / "overlays")) == ["s_0.png", "s_1.png"]
    with pytest.raises(CryoError, match="threshold"):
        predict.predict_images(detector, [], str(tmp_path / "o"), 1.5)
    # overlays use their own display threshold: nothing drawn above every score, all of the CSV below it
    drawn = []
    original = pictures.render_overlay

    def spy(image, boxes, labels, scores, names, min_score=0.0):
        drawn.append(int((np.asarray(scores) >= min_score).sum()))
        return original(image, boxes, labels, scores, names, min_score=min_score)

    monkeypatch.setattr(pictures, "render_overlay", spy)
    predict.predict_images(detector, tomo_io.list_images(str(folder)), str(tmp_path / "o2"), 0.0,
                           root=str(folder), overlay_threshold=1.0)
    assert drawn == [0, 0]
    drawn.clear()
    predict.predict_images(detector, tomo_io.list_images(str(folder)), str(tmp_path / "o3"), 0.0,
                           root=str(folder), overlay_threshold=0.0)
    assert sum(drawn) == len(rows)


# ------------------------------------------------------------------------------------------
# --shard K/N: N copies into one output folder
# ------------------------------------------------------------------------------------------
def test_parse_shard_and_parts_are_disjoint_and_complete():
    assert predict.parse_shard("1/4") == (1, 4) and predict.parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(CryoError, match="--shard wants K/N"):
            predict.parse_shard(bad)
    paths = [f"/d/t_{i}.mrc" for i in (10, 2, 1, 33, 4)]
    parts = [predict.shard_inputs(paths, (k, 3)) for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(paths)                          # complete
    assert sum(len(p) for p in parts) == len(set(sum(parts, [])))           # disjoint
    assert parts[0] == ["/d/t_1.mrc", "/d/t_10.mrc"]                        # natural order, dealt round-robin
    assert predict.shard_inputs(paths[::-1], (0, 3)) == parts[0]             # independent of listing order
    assert predict.shard_inputs(paths, None) == paths


def shard_folder(tmp_path):
    import cv2
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(3):
        tomo_io.write_volume(str(folder / f"cell_{i}.mrc"), rng.normal(size=(3, 48, 48)).astype(np.float32))
        cv2.imwrite(str(folder / f"s_{i}.png"), rng.integers(0, 255, (40, 50)).astype(np.uint8))
    return folder


def test_shards_write_one_folder_and_a_killed_part_resumes(detector, tmp_path, monkeypatch, capsys):
    from keras_frcnn_cryo.detections_csv import detection_csv_files
    folder, out = shard_folder(tmp_path), str(tmp_path / "res")
    monkeypatch.setattr(predict, "load_detector", lambda *a: detector)
    parser = predict.build_parser()

    def run(shard, *extra):
        return predict.main(parser.parse_args(["-p", str(folder), "--output", out, "--threshold", "0.0",
                                               "--overlay-slices", "1", "--shard", shard, *extra]))
    assert run("0/2") == 0
    with pytest.raises(CryoError, match=r"part\(s\) 1/2 missing"):
        detection_csv_files(out)
    assert run("1/2") == 0
    done = sorted(n for n in os.listdir(out) if n.endswith(predict.DONE_SUFFIX))
    assert done == [f"cell_{i}.done.json" for i in range(3)]
    found = detection_csv_files(out)        # the image CSVs' parts, then each tomogram's boxes (measure_map reads all)
    assert [os.path.basename(p) for p in found] == ["detections.shard-0-of-2.csv", "detections.shard-1-of-2.csv",
                                                    *(f"cell_{i}_boxes2d.csv" for i in range(3))]
    parts = found[:2]
    images = []
    for part in parts:
        with open(part) as fh:
            images.append({r["image"] for r in csv.DictReader(fh)})
    assert images[0] | images[1] == {"s_0.png", "s_1.png", "s_2.png"} and not images[0] & images[1]
    # a worker killed mid-volume left no marker for it: the rerun with --resume does that volume only
    os.remove(os.path.join(out, "cell_1.done.json"))
    capsys.readouterr()
    assert run("1/2", "--resume") == 0
    printed = capsys.readouterr().out
    assert "cell_1:" in printed and "cell_0" not in printed and "complete, its images skipped" in printed
    assert os.path.isfile(os.path.join(out, "cell_1.done.json"))
    # a whole-folder run beside the parts would count images twice: refused
    open(os.path.join(out, "detections.csv"), "w").write("image,x1,y1,x2,y2,class,score\n")
    with pytest.raises(CryoError, match="both detections.csv and --shard parts"):
        detection_csv_files(out)


def test_bad_shard_is_one_line_error(tmp_path, capsys):
    from keras_frcnn_cryo.cli import run_cli
    shard_folder(tmp_path)
    assert run_cli(predict.main, predict.build_parser(), ["-p", str(tmp_path / "in"), "--shard", "2/2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --shard wants K/N with 0 <= K < N "
                                                            "(e.g. 0/4 ... 3/4), got '2/2'"]


def test_views_option_reaches_the_detector(detector, tmp_path):
    """--views (test_frcnn.py and measure_map.py) overrides the config's detection_views; the default keeps it."""
    from keras_frcnn_cryo import evaluation
    from keras_frcnn_cryo.config import save_config
    config_path, weights = str(tmp_path / "config.pickle"), str(tmp_path / "m.weights.h5")
    save_config(detector.cfg, config_path)
    detector.models.model_all.save_weights(weights)
    for parser in (predict.build_parser(), evaluation.build_parser()):
        args = parser.parse_args(["-p", str(tmp_path), "--views", "dihedral"])
        assert args.views == "dihedral" and parser.parse_args(["-p", "x"]).views is None
        with pytest.raises(SystemExit):
            parser.parse_args(["-p", "x", "--views", "rot45"])
    assert predict.load_detector(config_path, weights, views="transpose").cfg.detection_views == "transpose"
    assert predict.load_detector(config_path, weights).cfg.detection_views == "none"


def test_tomogram_boxes_beyond_the_lamella_are_dropped(detector, tmp_path, monkeypatch, capsys):
    """With track_clip_to_specimen, boxes on the slices outside the specimen (white noise above and
    below a lamella of structured slices 6..13) are dropped before linking; the summary says where
    the specimen is and how many boxes went. Off, every slice keeps its box."""
    import cv2
    from keras_frcnn_cryo.model import Detections
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(20, 64, 64)).astype(np.float32)
    for z in range(6, 14):
        volume[z] += 4.0 * cv2.GaussianBlur(rng.normal(size=(64, 64)).astype(np.float32), (0, 0), 4.0) * 8.0
    path = str(tmp_path / "lamella.mrc")
    tomo_io.write_volume(path, volume, pixel_size_a=20.0)

    def fake_many(images, min_score=None, pixel_size_a=None):
        return [Detections(np.array([[10.0, 10.0, 30.0, 30.0]]), np.array([0.9]), np.array([0]), ["m", "bg"])
                for _ in images]
    monkeypatch.setattr(detector, "detect_many", fake_many)
    monkeypatch.setattr(detector.cfg, "track_clip_to_specimen", True)
    out = str(tmp_path / "clipped")
    summary = predict.predict_volume(detector, path, out, 0.5, volume_options())
    rows = writers.read_boxes2d_csv(os.path.join(out, "lamella_boxes2d.csv"))
    kept = sorted(r["slice"] for r in rows)
    first, stop = summary["specimen_slices"]
    assert abs(first - 6) <= 1 and abs(stop - 14) <= 1 and kept == list(range(first, stop))
    assert summary["boxes_outside_specimen"] == 20 - len(kept)
    objects = writers.read_objects3d_csv(os.path.join(out, "lamella_objects3d.csv"))
    assert [(o["z1"], o["z2"]) for o in objects] == [(first, stop)]
    assert "the specimen fills slices" in capsys.readouterr().out
    monkeypatch.setattr(detector.cfg, "track_clip_to_specimen", False)
    summary = predict.predict_volume(detector, path, str(tmp_path / "all"), 0.5, volume_options())
    assert summary["detections"] == 20 and "specimen_slices" not in summary
