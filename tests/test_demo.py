"""The demo (README's first command) end to end, at toy size: every promised output, and the picture."""
from __future__ import annotations

import json
import re

import cv2
import pytest

from keras_frcnn_cryo import demo


def test_demo_writes_everything_it_promises(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo_out"
    # no --minutes: the training budget is what the allowance leaves after the time detection is
    # measured to need; an allowance of 0 leaves the floor, shrunk here to 3 seconds
    monkeypatch.setattr(demo, "DEMO_MINUTES", 0.0)
    monkeypatch.setattr(demo, "MIN_TRAIN_MINUTES", 0.05)
    args = demo.build_parser().parse_args(["--out", str(out), "--tomograms", "4", "--size", "96", "--slices", "9",
                                           "--slice-step", "3"])
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    budget = re.search(r"training budget ([0-9.]+) min: what is left of 0 min after [0-9.]+ min so far and "
                       r"([0-9.]+) min reserved for detection on the 6 held-out slices", printed)
    assert budget and float(budget.group(1)) == 0.05 and float(budget.group(2)) > 0, printed
    assert "done in" in printed and "montage.png" in printed
    # a few seconds of training see far fewer images than the detector needs: the last lines say so
    # and name the --minutes that would reach them on this machine
    note = re.search(r"note: +this CPU trained [0-9.]+ images/s, ([0-9]+) in [0-9.]+ min: .*`--minutes ([0-9]+)`",
                     printed)
    assert note and int(note.group(1)) < demo.WANTED_IMAGES and int(note.group(2)) >= 1, printed
    for name in ("model/config.pickle", "model/model_frcnn.weights.h5", "predictions/detections.csv",
                 "evaluation/metrics.json", "evaluation/metrics.md", "montage.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["recipe"] == "scratch" and config["train_mode"] == "joint"     # README's defaults, no flags
    montage = cv2.imread(str(out / "montage.png"))
    assert montage is not None and montage.shape[0] > 96 and montage.shape[1] >= 96
    # two tomograms held out whole (the default), as the split file beside the annotations says
    split = json.loads((out / "data" / "annotations.split.json").read_text())
    held_out = sorted(g for g, s in split["groups"].items() if s == "test")
    assert len(held_out) == 2 and config["test_fraction"] == 0.5
    assert f"held out for the test: {held_out[0]} (3 slices" in printed and "2 held-out tomograms" in printed
    # and their labelled slices (3 each) are all shown, three to a row
    assert montage.shape[1] >= 3 * 96 and montage.shape[0] >= 2 * 96


def test_demo_refuses_a_held_out_share_that_leaves_nothing_to_train(tmp_path, capsys):
    code = demo.console_main(["--out", str(tmp_path / "d"), "--tomograms", "2", "--test-tomograms", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--test-tomograms" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_training_fills_what_the_allowance_leaves():
    assert demo.training_minutes(5.0, 30.0, 30.0) == pytest.approx(4.0)
    assert demo.training_minutes(5.0, 200.0, 100.0) == demo.MIN_TRAIN_MINUTES     # a slow machine: the floor


def test_a_slow_run_is_told_the_minutes_that_reach_the_wanted_images():
    # 141 images in 3.5 min (an AVX2-only CPU's demo): 700 images need 17.4 min, rounded up
    assert demo.minutes_for_images(141, 3.5, 700) == 18
    assert demo.minutes_for_images(0, 3.5, 700) == 2450          # no image seen: no division by zero
    advice = demo.slow_machine_advice(141, 3.5)
    assert "0.67 images/s" in advice and "`--minutes 18`" in advice
    assert demo.slow_machine_advice(demo.WANTED_IMAGES, 4.3) == ""   # enough images: nothing to say


def test_detection_time_of_no_images_is_zero():
    assert demo.time_detection(None, []) == 0.0
