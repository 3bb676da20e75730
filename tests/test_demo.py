"""The demo (README's first command) end to end, at toy size: every promised output, and the picture."""
from __future__ import annotations

import json

import cv2

from keras_frcnn_cryo import demo


def test_demo_writes_everything_it_promises(tmp_path, capsys):
    out = tmp_path / "demo_out"
    args = demo.build_parser().parse_args(["--out", str(out), "--tomograms", "3", "--size", "96", "--slices", "9",
                                           "--slice-step", "3", "--minutes", "0.05"])
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    assert "done in" in printed and "montage.png" in printed
    for name in ("model/config.pickle", "model/model_frcnn.weights.h5", "predictions/detections.csv",
                 "evaluation/metrics.json", "evaluation/metrics.md", "montage.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["recipe"] == "scratch" and config["train_mode"] == "joint"     # README's defaults, no flags
    montage = cv2.imread(str(out / "montage.png"))
    assert montage is not None and montage.shape[0] > 96 and montage.shape[1] >= 96
    # the held-out tomogram's labelled slices (3 of them) are all shown, side by side
    assert montage.shape[1] >= 3 * 96
