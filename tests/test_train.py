"""Training (train.py): train_frcnn.py's loop, its options, outputs, resume, time budget and learning-rate schedule."""
import os

import cv2
import numpy as np
import pytest
from conftest import TOY_NET_ARGS, state_meta, state_weights, toy_config

from keras_frcnn_cryo import tomo_io, train
from keras_frcnn_cryo.config import load_config
from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.simple_parser import get_data
from keras_frcnn_cryo.trainer import Trainer, training_generators


def test_record_pixel_size(toy_dataset, tmp_path):
    records, _, _ = get_data(toy_dataset)
    cfg = toy_config(im_size=192)
    assert "unknown" in train.record_pixel_size(cfg, records) and cfg.network_pixel_size_angstrom is None
    note = train.record_pixel_size(cfg, records, apix=10.0)
    assert cfg.pixel_size_angstrom == 10.0 and cfg.network_pixel_size_angstrom == pytest.approx(5.0)
    assert "10 A/px" in note
    with pytest.raises(CryoError, match="--apix"):
        train.record_pixel_size(cfg, records, apix=-1.0)
    # from PNG sidecars (binning included), as exported slices and the synthetic generator write them
    image = tmp_path / "s_z0001.png"
    cv2.imwrite(str(image), np.zeros((96, 96), np.uint8))
    tomo_io.write_sidecar(str(image), tomo_io.slice_sidecar("t.mrc", "tomogram", 1, (4, 192, 192), (96, 96), 4.0,
                                                            binning=2))
    train.record_pixel_size(cfg, [{"filepath": str(image), "width": 96, "height": 96}])
    assert cfg.pixel_size_angstrom == 8.0 and cfg.network_pixel_size_angstrom == pytest.approx(4.0)


def test_main_writes_config_weights_and_log(toy_dataset, tmp_path, capsys):
    args = train.build_parser().parse_args([
        "-p", toy_dataset, "--num_epochs", "2", "--epoch_length", "2", "--im-size", "96", *TOY_NET_ARGS,
        "--anchor-scales", "24", "48", "-n", "8", "--config_filename", str(tmp_path / "config.pickle"),
        "--output_weight_path", str(tmp_path / "model.weights.h5"), "--val-split", "0.3",
        "--split-file", str(tmp_path / "split.json"),
        "--set", "eval_iou_thresholds=[0.5, 0.9]"])       # best-on-validation still uses AP@0.7 (val_selection_iou)
    assert train.main(args) == 0
    out = capsys.readouterr().out
    for name in ("config.pickle", "config.json", "model.weights.h5", "model_log.csv", "split.json",
                 "model_bestval.weights.h5"):
        assert (tmp_path / name).is_file(), name
    assert "saving weights" in out and "validation: loss" in out
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    log = (tmp_path / "model_log.csv").read_text().splitlines()
    assert len(log) == 3 and "val_ap@0.7" in log[0]


def test_bad_arguments(toy_dataset, tmp_path):
    def run(*extra):
        return train.main(train.build_parser().parse_args(["-p", toy_dataset, *extra]))
    with pytest.raises(CryoError, match="parser = .* use one of simple, pascal_voc"):
        run("-o", "coco")
    with pytest.raises(CryoError, match="must end with"):
        run("--output_weight_path", str(tmp_path / "model.hdf5"))
    with pytest.raises(CryoError, match="not found"):
        run("--input_weight_path", str(tmp_path / "nope.h5"), "--output_weight_path", str(tmp_path / "m.weights.h5"))
    with pytest.raises(CryoError, match="not found"):
        train.main(train.build_parser().parse_args(["-p", str(tmp_path / "none.txt"),
                                                    "--output_weight_path", str(tmp_path / "m.weights.h5")]))


def test_resume_continues_from_the_last_epoch(toy_dataset, tmp_path, capsys):
    """Joint mode (the scratch recipe's) with two images per step: one step per epoch of 2 images."""
    base = ["-p", toy_dataset, "--epoch_length", "2", "--batch-size", "2", "--im-size", "96", *TOY_NET_ARGS,
            "--anchor-scales", "24", "48", "-n", "8",
            "--config_filename", str(tmp_path / "config.pickle"), "--split-file", str(tmp_path / "split.json"),
            "--output_weight_path", str(tmp_path / "model.weights.h5")]
    with pytest.raises(CryoError, match="no training state"):
        train.main(train.build_parser().parse_args(base + ["--num_epochs", "1", "--resume"]))
    assert train.main(train.build_parser().parse_args(base + ["--num_epochs", "1"])) == 0
    assert (tmp_path / "model_state.npz").is_file()
    meta = state_meta(tmp_path / "model_state.npz")          # both random streams are in the state
    steps_rng, data_rng = training_generators(load_config(str(tmp_path / "config.pickle")).seed)
    assert meta["data_rng"]["bit_generator"] == "PCG64" and meta["rng"] != meta["data_rng"]
    assert meta["data_rng"] != data_rng.bit_generator.state      # the stream drew from it ...
    data_rng.bit_generator.state = meta["data_rng"]               # ... and its state restores
    capsys.readouterr()
    assert train.main(train.build_parser().parse_args(base + ["--num_epochs", "2", "--resume"])) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 1" in out and "epoch 2:" in out and "epoch 1:" not in out
    log = (tmp_path / "model_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2"]
    assert [row.split(",")[-1] for row in log[1:]] == ["2", "2"]              # images column
    with pytest.raises(CryoError, match="only joint training takes"):      # the paper's mode takes one image
        train.main(train.build_parser().parse_args(base + ["--num_epochs", "3", "--train-mode", "alternating"]))
    at = base.index("--batch-size")
    del base[at:at + 2]
    with pytest.raises(CryoError, match="made with --train-mode joint"):
        train.main(train.build_parser().parse_args(base + ["--num_epochs", "3", "--resume", "--train-mode",
                                                           "alternating"]))


def test_time_budget_stops_after_the_epoch(toy_dataset, tmp_path, capsys):
    args = train.build_parser().parse_args([
        "-p", toy_dataset, "--num_epochs", "50", "--epoch_length", "1", "--im-size", "96", *TOY_NET_ARGS,
        "--anchor-scales", "24", "48", "-n", "8", "--time-budget", "0.001",
        "--config_filename", str(tmp_path / "config.pickle"),
        "--split-file", str(tmp_path / "split.json"), "--output_weight_path", str(tmp_path / "model.weights.h5")])
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "time budget of 0.001 min used after epoch 1: stopping" in out and "epoch 2:" not in out


def test_scheduled_learning_rate():
    cfg = toy_config(learning_rate=1e-4)
    assert train.scheduled_learning_rate(cfg, 0.0) == train.scheduled_learning_rate(cfg, 0.99) == 1e-4  # paper: constant
    cfg = toy_config(learning_rate=1e-4, lr_drop_fraction=0.75, lr_drop_factor=0.1)
    assert train.scheduled_learning_rate(cfg, 0.74) == 1e-4
    assert train.scheduled_learning_rate(cfg, 0.75) == pytest.approx(1e-5)
    assert train.scheduled_learning_rate(cfg, 1.5) == pytest.approx(1e-5)


def test_lr_drop_reaches_the_optimisers(toy_dataset, tmp_path, capsys):
    base = ["-p", toy_dataset, "--epoch_length", "1", "--im-size", "96", *TOY_NET_ARGS,
            "--anchor-scales", "24", "48", "-n", "8",
            "--recipe", "paper", "--learning-rate", "1e-4", "--config_filename", str(tmp_path / "config.pickle"),
            "--split-file", str(tmp_path / "split.json"), "--output_weight_path", str(tmp_path / "model.weights.h5")]
    seen = []
    original = Trainer.set_learning_rate

    def spy(self, rate):
        original(self, rate)
        seen.append((rate, float(self.opt_rpn.learning_rate), float(self.opt_cls.learning_rate)))
    Trainer.set_learning_rate = spy
    try:
        assert train.main(train.build_parser().parse_args(base + ["--num_epochs", "4", "--lr-drop", "0.5"])) == 0
    finally:
        Trainer.set_learning_rate = original
    out = capsys.readouterr().out
    assert "learning rate 0.0001 -> 1e-05 from epoch 3, image 1 (50 % of the run passed)" in out
    assert out.count("learning rate 0.0001 ->") == 1        # dropped once, not again every epoch
    assert len(seen) == 1 and all(v == pytest.approx(1e-5) for v in seen[0])
    assert load_config(str(tmp_path / "config.pickle")).lr_drop_fraction == 0.5   # recorded with the run
    with pytest.raises(CryoError, match="--lr-drop must lie in"):
        train.main(train.build_parser().parse_args(base + ["--num_epochs", "1", "--lr-drop", "1.5"]))


def test_weight_averages_are_saved_validated_and_resumed(toy_dataset, tmp_path, capsys):
    """With Config.weight_ema_decay the model file and the best-on-validation file hold the weights'
    averages, *_raw.weights.h5 the step's own weights, the training state both; resume goes on with them."""
    from keras_frcnn_cryo import predict
    base = ["-p", toy_dataset, "--epoch_length", "2", "--im-size", "96", *TOY_NET_ARGS, "--anchor-scales", "24", "48",
            "-n", "8", "--config_filename", str(tmp_path / "config.pickle"), "--split-file", str(tmp_path / "split.json"),
            "--output_weight_path", str(tmp_path / "model.weights.h5"), "--val-split", "0.3",
            "--set", "weight_ema_decay=0.5", "--set", "weight_ema_interval=1"]
    assert train.main(train.build_parser().parse_args(base + ["--num_epochs", "1"])) == 0
    state = tmp_path / "model_state.npz"

    def weights_of(name):
        return predict.load_detector(str(tmp_path / "config.pickle"), str(tmp_path / name)).models.model_all.get_weights()

    averages, own = state_weights(state, "a"), state_weights(state)
    assert state_meta(state)["average_updates"] == 2 and len(averages) == len(own)
    assert any(not np.allclose(a, w) for a, w in zip(averages, own))
    for name, expected in (("model.weights.h5", averages), ("model_bestval.weights.h5", averages),
                           ("model_raw.weights.h5", own)):
        assert all(np.allclose(a, b) for a, b in zip(weights_of(name), expected)), name
    capsys.readouterr()
    assert train.main(train.build_parser().parse_args(base + ["--num_epochs", "2", "--resume"])) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert state_meta(state)["average_updates"] == 4        # the averages went on from the state's
