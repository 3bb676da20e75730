"""tf.distribute training: a mirrored step over 2 logical CPUs is the single-device step on the same images.

The comparison runs in a fresh Python process (``python tests/test_distribute.py DIR``): the CPU can
only be split into logical devices before TensorFlow starts, which the test session has done long ago.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from keras_frcnn_cryo import distribute
from keras_frcnn_cryo.config import Config
from keras_frcnn_cryo.errors import CryoError

HERE = os.path.dirname(os.path.abspath(__file__))


def _compare(workdir: str) -> dict:
    """Mirrored (2 CPU replicas, global batch 2) against one device (batch 2), both with the default
    Adam: per-image losses, the gradient of one step (Adam's first moment after one step is exactly
    (1 - beta_1) x gradient, so an error in the gradient's scale shows there, as it would not in
    Adam's first update, about lr x sign(gradient)) and the weight change of that step."""
    sys.path.insert(0, HERE)
    from conftest import TOY_ANCHORS, TOY_NET_ARGS, toy_config

    from keras_frcnn_cryo import data_generators, preprocessing, synthetic, tomo_io, train
    from keras_frcnn_cryo.simple_parser import get_data
    from keras_frcnn_cryo.trainer import Trainer, load_training_state, save_training_state

    dataset = synthetic.write_toy_dataset(workdir, n_images=12, size=96, seed=3)
    records, _, mapping = get_data(dataset)
    base = dict(class_mapping=mapping, train_mode="joint", im_size=96, anchor_box_scales=TOY_ANCHORS, batch_size=2)
    gen = data_generators.iter_training_samples(records, toy_config(**base), np.random.default_rng(0),
                                                tomo_io.read_image, preprocessing.prepare_image, augment_images=False)
    samples = [next(gen), next(gen)]
    report = {}
    mirrored = Trainer(toy_config(distribute="mirrored", cpu_replicas=2, **base))
    single = Trainer(toy_config(**base))
    report.update(replicas=mirrored.replicas, devices=[str(d) for d in mirrored.strategy.extended.worker_devices])
    start = [np.array(w) for w in mirrored.models.model_all.get_weights()]
    single.models.model_all.set_weights(start)
    before = [np.array(v) for v in single.rpn_vars + single.cls_vars]
    trainers = (("mirrored", mirrored), ("single", single))
    losses = {name: trainer.train_on_batch(samples, np.random.default_rng(5)) for name, trainer in trainers}
    # per trainable variable, in the optimisers' order (opt_rpn: rpn_vars, opt_cls: cls_vars)
    deltas = {name: [np.array(v) - b for v, b in zip(trainer.rpn_vars + trainer.cls_vars, before)]
              for name, trainer in trainers}
    grads = {name: [np.array(m) / (1.0 - trainer.cfg.adam_beta_1)
                    for m in trainer.opt_rpn._momentums + trainer.opt_cls._momentums] for name, trainer in trainers}
    moved = [i for i, d in enumerate(deltas["single"]) if np.abs(d).max() > 0]
    scale = max(np.abs(deltas["single"][i]).max() for i in moved)
    largest_grad = max(np.abs(g).max() for g in grads["single"])
    # Adam's first step is lr x g / (|g| + eps'), eps' = eps / sqrt(1 - beta_2) = 3.2e-6: where g is
    # small, or where the two runs' sums round differently (a gradient that is a difference of large
    # terms; CPUs whose kernels sum in another order), a tiny gradient difference is a visible step
    # difference. Compare the steps of the elements whose gradient is clearly non-zero (above 1e-3 of
    # the largest) and agrees between the runs to 1 %: there the steps must agree to 1e-2 x eps'/|g|,
    # 5e-5 of lr; an error in the step itself (applied twice, per replica, lr scaled) is of order lr.
    # The share of clearly non-zero elements whose gradient agrees to 1 % is asserted too.
    significant = [np.abs(g) > 1e-3 * largest_grad for g in grads["single"]]
    clear = [s & (np.abs(a - g) <= 1e-2 * np.abs(g))
             for s, a, g in zip(significant, grads["mirrored"], grads["single"])]
    report["adam"] = {
        "losses": losses, "moved": len(moved), "variables": len(before), "largest_delta": float(scale),
        "largest_gradient": float(largest_grad),
        "max_gradient_difference": float(max(np.abs(a - b).max() for a, b in zip(grads["mirrored"], grads["single"]))),
        # the summed gradient magnitude per variable, mirrored over single: 2 where a sum replaces a mean
        "gradient_ratio": float(np.median([np.abs(a).sum() / np.abs(b).sum()
                                           for a, b in zip(grads["mirrored"], grads["single"]) if np.abs(b).sum() > 0])),
        # beyond two float32 steps at each weight's magnitude (a weight near 1 moves in steps of 1.2e-7)
        "max_delta_difference": float(max(
            (np.abs(a - b) - 2 * np.spacing(np.abs(b + w).astype(np.float32)))[c].max(initial=0.0)
            for a, b, c, w in zip(deltas["mirrored"], deltas["single"], clear, before))),
        "compared_elements": int(sum(c.sum() for c in clear)),
        "significant_elements": int(sum(c.sum() for c in significant)),
        "elements": int(sum(d.size for d in deltas["single"])),
        "ratio": float(np.median([np.abs(deltas["mirrored"][i]).sum() / np.abs(deltas["single"][i]).sum()
                                  for i in moved]))}
    # a single-device run's resume state loads into a mirrored run: weights and optimiser slots
    state = os.path.join(workdir, "single_state.npz")
    save_training_state(state, single, 1, 1.0, -1.0, np.random.default_rng(0), [])
    fresh = mirrored                              # zeroed, so that only loading can make it equal single
    fresh.models.model_all.set_weights([np.zeros_like(w) for w in fresh.models.model_all.get_weights()])
    for variable in fresh.opt_rpn.variables:
        variable.assign(np.zeros_like(np.asarray(variable)))
    load_training_state(state, fresh, np.random.default_rng(0))
    report["resume_weights_equal"] = all(np.array_equal(a, b) for a, b in zip(
        fresh.models.model_all.get_weights(), single.models.model_all.get_weights()))
    report["resume_slots_equal"] = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        fresh.opt_rpn.variables, single.opt_rpn.variables))

    # train_frcnn.py's loop under the mirrored strategy, with validation and best-loss saving
    out = os.path.join(workdir, "run")
    code = train.main(train.build_parser().parse_args([
        "-p", dataset, "--train-mode", "joint", "--distribute", "mirrored", "--cpu-replicas", "2", "--batch-size", "2",
        "--num_epochs", "2", "--epoch_length", "2", "--im-size", "96", "--anchor-scales", *map(str, TOY_ANCHORS),
        "-n", "8", "--val-split", "0.3", "--split-file", os.path.join(out, "split.json"), *TOY_NET_ARGS,
        "--output_weight_path", os.path.join(out, "model.weights.h5"),
        "--config_filename", os.path.join(out, "config.pickle")]))
    with open(os.path.join(out, "model_log.csv")) as fh:
        report["fit"] = {"code": code, "files": sorted(os.listdir(out)), "log": fh.read().splitlines()}
    return report


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("distribute")
    done = subprocess.run([sys.executable, os.path.abspath(__file__), str(workdir)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_mirrored_runs_on_two_cpu_replicas(comparison):
    assert comparison["replicas"] == 2 and len(comparison["devices"]) == 2


def test_mirrored_step_equals_single_device_step(comparison):
    result = comparison["adam"]
    for a, b in zip(result["losses"]["mirrored"], result["losses"]["single"]):   # the same two images
        for key in ("rpn_cls", "rpn_regr", "cls_cls", "cls_regr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert result["moved"] > 0.9 * result["variables"]                          # the step trained the model
    # the gradient, element by element, scale included
    assert result["max_gradient_difference"] <= 1e-3 * result["largest_gradient"]
    assert result["gradient_ratio"] == pytest.approx(1.0, abs=1e-3)   # not a sum where a mean belongs, or back
    # and the update Adam made of it
    assert result["compared_elements"] > 0.1 * result["elements"]
    assert result["compared_elements"] > 0.99 * result["significant_elements"]   # gradients agree almost everywhere
    assert result["max_delta_difference"] <= 1e-3 * result["largest_delta"]
    assert result["ratio"] == pytest.approx(1.0, abs=1e-3)


def test_train_frcnn_loop_runs_mirrored_with_validation(comparison):
    fit = comparison["fit"]
    assert fit["code"] == 0
    assert {"model.weights.h5", "model_bestval.weights.h5", "config.pickle", "model_state.npz"} <= set(fit["files"])
    header, *rows = fit["log"]
    assert len(rows) == 2 and "val_ap@0.7" in header
    assert [row.split(",")[header.split(",").index("images")] for row in rows] == ["2", "2"]


def test_single_device_state_resumes_a_mirrored_run(comparison):
    assert comparison["resume_weights_equal"] and comparison["resume_slots_equal"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_local_workers_train_and_only_the_chief_writes(toy_dataset, tmp_path):
    """Two worker processes (TF_CONFIG on 127.0.0.1) train one short run with multiworker; the chief's
    weights load for prediction, the other worker wrote nothing into its output folder."""
    from conftest import TOY_ANCHORS, TOY_NET_ARGS
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    procs = []
    for index in (0, 1):
        out = tmp_path / f"worker{index}"
        out.mkdir()
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(HERE), "train_frcnn.py"), "-p", toy_dataset,
             "--train-mode", "joint", "--distribute", "multiworker", "--batch-size", "2", "--num_epochs", "1",
             "--epoch_length", "4", "--im-size", "96", "--anchor-scales", *map(str, TOY_ANCHORS), "-n", "8",
             *TOY_NET_ARGS,
             "--split-file", str(out / "split.json"),
             "--output_weight_path", str(out / "model.weights.h5"), "--config_filename", str(out / "config.pickle")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "2 replicas in sync" in logs[0] and "2 replicas in sync" in logs[1]
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    assert {"model.weights.h5", "config.pickle", "model_log.csv", "model_state.npz"} <= set(os.listdir(chief))
    assert sorted(os.listdir(other)) == ["split.json"]           # its data split only: no weights, logs, state
    from keras_frcnn_cryo import predict, tomo_io
    from keras_frcnn_cryo.simple_parser import get_data
    detector = predict.load_detector(str(chief / "config.pickle"), str(chief / "model.weights.h5"))
    records, _, _ = get_data(toy_dataset)
    found = detector.detect(tomo_io.read_image(records[0]["filepath"]), min_score=0.0)
    assert found.boxes.shape[1] == 4


def test_batch_must_split_evenly_and_only_joint_distributes():
    with pytest.raises(CryoError, match="does not split evenly"):
        distribute.per_replica(Config(batch_size=3), 2)
    with pytest.raises(CryoError, match="only joint"):
        Config(class_mapping={"m": 0, "bg": 1}, batch_size=2).validate()
    with pytest.raises(CryoError, match="distribute"):
        Config(class_mapping={"m": 0, "bg": 1}, train_mode="joint", distribute="everywhere").validate()


def test_chief_is_read_from_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief()
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    for index, chief in ((0, True), (1, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        assert distribute.is_chief() == chief
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(CryoError, match="TF_CONFIG"):
        distribute.is_chief()


if __name__ == "__main__":
    print(json.dumps(_compare(sys.argv[1])))
