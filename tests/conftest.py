"""Shared fixtures: a tiny generated data set and a Config sized for it."""
import hashlib
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_frcnn_cryo.config import RESNET50_BLOCKS, Config  # noqa: E402
from keras_frcnn_cryo.tracking import Object3D  # noqa: E402

# Tiny-image settings: 96-px images, objects 20-50 px, so anchors of 24 and 48 px.
TOY_SIZE = 96
TOY_ANCHORS = [24.0, 48.0]
# The plumbing tests' network: ResNet-50's layout, layer names and code paths with one residual block
# per stage (Config.resnet_blocks) instead of 3/4/6/3, so that building, compiling and stepping it
# costs a fraction. The tests of learning (test_trainer's trained models) and of the architecture
# (test_resnet) keep ResNet-50 itself.
TOY_BLOCKS = [1, 1, 1, 1]
TOY_NET_ARGS = ["--set", "resnet_blocks=[1,1,1,1]"]           # the same, for train_frcnn.py's command line
RESNET50 = list(RESNET50_BLOCKS)


def obj(x1, y1, x2, y2, cls="mito", difficult=False) -> dict:
    """A ground-truth box as metrics.evaluate takes it."""
    return {"class": cls, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "difficult": difficult}


def det(image, x1, y1, x2, y2, score, cls="mito") -> dict:
    """A detection as metrics.evaluate takes it."""
    return {"image": image, "class": cls, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": score}


def objects3d() -> list[Object3D]:
    """Two linked objects: a "mito" (class 0) on slices 3-5 and a "vesicle" (class 1, fractional
    corners) on slices 0-1."""
    first = Object3D(0, "mito", 10.0, 20.0, 3, 30.0, 60.0, 6, 0.8, [3, 4, 5],
                     np.array([[10, 20, 30, 60], [12, 22, 28, 58], [11, 21, 29, 59.5]], float),
                     np.array([0.7, 0.8, 0.9]))
    second = Object3D(1, "vesicle", 100.25, 5.5, 0, 140.75, 45.5, 2, 0.55, [0, 1],
                      np.array([[100.25, 5.5, 140.75, 45.5], [101, 6, 140, 45]], float), np.array([0.5, 0.6]))
    return [first, second]


def no_temp_files(folder) -> bool:
    """True when ``folder`` holds no ``.tmp_*`` file (what an atomic write leaves while in progress)."""
    return not [name for name in os.listdir(folder) if name.startswith(".tmp_")]


def sha256(path) -> str:
    """Hex SHA-256 of a file (to prove a file was left untouched)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_meta(path) -> dict:
    """The metadata of a training state file (trainer.save_training_state's ``meta``)."""
    with np.load(path) as data:
        return json.loads(bytes(data["meta"]).decode())


def state_weights(path, key: str = "w") -> list[np.ndarray]:
    """A training state's weights (key "w"), or their moving averages (key "a": what the model file
    holds under the scratch recipe's Config.weight_ema_decay), in model_all.get_weights() order."""
    meta = state_meta(path)
    with np.load(path) as data:
        return [data[f"{key}{i}"] for i in range(meta["n_weights"] if key == "w" else meta["n_averages"])]


def toy_config(**overrides) -> Config:
    """A Config for 96-px toy images (small anchors, few proposals, faster learning rate, TOY_BLOCKS)."""
    values = dict(class_mapping={"mitochondrion": 0, "bg": 1}, im_size=TOY_SIZE, anchor_box_scales=TOY_ANCHORS,
                  rpn_max_proposals=64, rpn_max_proposals_test=64, num_rois=16, learning_rate=1e-4, seed=0,
                  resnet_blocks=TOY_BLOCKS)
    values.update(overrides)
    return Config(**values)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> str:
    """annotations.txt of 12 toy images (3 groups of 4 slices) with dark double rings."""
    from keras_frcnn_cryo import synthetic
    out = tmp_path_factory.mktemp("toy")
    return synthetic.write_toy_dataset(str(out), n_images=12, size=TOY_SIZE, seed=3)
