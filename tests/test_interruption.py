"""Training survives SIGKILL (mid-epoch and inside a save) and stops cleanly when the loss turns NaN.

One chain of real train_frcnn.py runs on the toy images converted to 1-bit, 16-bit, float32 TIFF and RGB
files (so training on every supported image type is exercised too):

1. a fresh run, SIGKILLed in the middle of epoch 2;
2. ``--resume``, SIGKILLed inside the weights save at the end of epoch 2 (the run is started through a
   small driver that patches ``os.replace`` to hang on the weights file, so the kill lands after the
   new weights were written under their temporary name and before the rename; the driver also forgets
   the best loss on resume so that this epoch certainly saves);
3. ``--resume`` again, which finishes the run (exit 0);
4. ``--resume --learning-rate 1e10`` for one more epoch: the loss becomes NaN within two steps, training
   stops with one ``error:`` line, exit 2, and the weights and config on disk stay those of epoch 2.

After every kill the best model file is loaded with ``model.load_model_weights`` and compared with the
checkpoint of the last completed epoch (``*_state.npz``): the file on disk is always a whole model.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TOY_ANCHORS, TOY_NET_ARGS, TOY_SIZE, sha256, state_meta, state_weights

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
WAIT_S = 300            # longest wait for a training run to reach a point (tracing takes ~30 s on 2 cores)
EPOCH_LENGTH = 4

# Runs train_frcnn.py's entry point with two test-only patches (see the module docstring).
SAVE_HANG_DRIVER = r'''
import math, os, sys, time
from keras_frcnn_cryo import train
from keras_frcnn_cryo.cli import run_cli

real_replace = os.replace
def replace_or_hang(src, dst, *args, **kwargs):
    if str(dst).endswith(".weights.h5") and not os.path.basename(str(dst)).startswith(".tmp_"):
        print("SAVE-IN-PROGRESS", dst, flush=True)
        time.sleep(3600)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace_or_hang

real_load = train.load_training_state
def load_forgetting_best(*args, **kwargs):
    state = real_load(*args, **kwargs)
    state["best_loss"] = math.inf
    return state
train.load_training_state = load_forgetting_best
sys.exit(run_cli(train.main, train.build_parser(), sys.argv[1:]))
'''


class Watched:
    """A subprocess whose stdout and stderr are collected while it runs (tqdm writes no newlines)."""

    def __init__(self, cmd: list[str], cwd: Path):
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.chunks: dict[str, list[bytes]] = {"out": [], "err": []}
        self.readers = [threading.Thread(target=self._pump, args=(stream, key), daemon=True)
                        for stream, key in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for reader in self.readers:
            reader.start()

    def _pump(self, stream, key: str) -> None:
        while chunk := os.read(stream.fileno(), 65536):
            self.chunks[key].append(chunk)

    @property
    def stdout(self) -> str:
        return b"".join(self.chunks["out"]).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return b"".join(self.chunks["err"]).decode("utf-8", "replace")

    def wait_for(self, pattern: str, stream: str) -> re.Match:
        """Block until ``pattern`` appears in stdout or stderr; fail if the process ends first."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            found = re.search(pattern, self.stdout if stream == "out" else self.stderr)
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"never saw {pattern!r}; exit {self.proc.returncode}\n{self.stdout[-2000:]}\n{self.stderr[-3000:]}")

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.finish()

    def finish(self, timeout: float = WAIT_S) -> int:
        self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return self.proc.returncode


def visible_files(folder: Path) -> set[str]:
    return {name for name in os.listdir(folder) if not name.startswith(".")}


def same_weights(first: list[np.ndarray], second: list[np.ndarray]) -> bool:
    return len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second))


@pytest.fixture(scope="module")
def mixed_type_dataset(toy_dataset, tmp_path_factory) -> Path:
    """The toy set with slice z00 of each group as 1-bit PNG, z01 16-bit PNG, z02 float32 TIFF, z03 RGB PNG."""
    root = tmp_path_factory.mktemp("mixed")
    source = Path(toy_dataset).parent
    (root / "images").mkdir()
    lines = []
    for line in Path(toy_dataset).read_text().splitlines():
        rel, rest = line.split(",", 1)
        name = Path(rel).stem
        grey = cv2.imread(str(source / rel), cv2.IMREAD_UNCHANGED)
        kind = name[-3:]
        if kind == "z02":
            rel = f"images/{name}.tif"
            cv2.imwrite(str(root / rel), grey.astype(np.float32) * 0.02 - 1.7)
        elif kind == "z00":
            cv2.imwrite(str(root / rel), (grey > np.median(grey)).astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])
        elif kind == "z01":
            cv2.imwrite(str(root / rel), grey.astype(np.uint16) * 257)
        else:
            cv2.imwrite(str(root / rel), np.dstack([grey, grey // 2, 255 - grey]))
        lines.append(f"{rel},{rest}")
    (root / "annotations.txt").write_text("\n".join(lines) + "\n")
    assert cv2.imread(str(root / "images" / "toy_g000_z02.tif"), cv2.IMREAD_UNCHANGED).dtype == np.float32
    assert (root / "images" / "toy_g000_z00.png").read_bytes()[24] == 1   # PNG bit depth
    return root / "annotations.txt"


def train_command(annotations: Path, work: Path, *extra: str, driver: str | None = None) -> list[str]:
    args = ["-p", str(annotations), "--im-size", str(TOY_SIZE), "--anchor-scales", *(f"{s:g}" for s in TOY_ANCHORS),
            "-n", "8", "--epoch_length", str(EPOCH_LENGTH), "--learning-rate", "1e-4", "--hf", *TOY_NET_ARGS,
            "--test-split", "0", "--split-file", str(work / "split.json"),
            "--output_weight_path", str(work / "model.weights.h5"), "--config_filename", str(work / "config.pickle"),
            *extra]
    if driver is not None:
        return [sys.executable, "-c", driver, *args]
    return [sys.executable, str(ROOT / "train_frcnn.py"), *args]


def test_training_survives_sigkill_and_stops_on_nan(mixed_type_dataset, tmp_path):
    from keras_frcnn_cryo.config import load_config
    from keras_frcnn_cryo.model import build_models, load_model_weights

    work = tmp_path
    weights, state, log = work / "model.weights.h5", work / "model_state.npz", work / "model_log.csv"
    run_files = {"config.pickle", "config.json", "model.weights.h5", "model_raw.weights.h5", "model_log.csv",
                 "model_state.npz", "split.json"}

    def log_epochs() -> list[str]:
        return [row.split(",")[0] for row in log.read_text().splitlines()[1:]]

    # 1. fresh run, SIGKILL once epoch 2 has taken 1-3 of its 4 steps
    run = Watched(train_command(mixed_type_dataset, work, "--num_epochs", "2"), work)
    run.wait_for(r"epoch 2/2:\s*\d+%\|[^|]*\|\s*[1-3]/4", "err")
    assert run.kill() == -signal.SIGKILL
    assert "saving weights" in run.stdout and "epoch 2:" not in run.stdout, run.stdout[-2000:]
    assert visible_files(work) == run_files and not [n for n in os.listdir(work) if n.startswith(".tmp_")]
    assert state_meta(state)["epoch"] == 1 and log_epochs() == ["1"]
    models = build_models(load_config(str(work / "config.pickle")))
    load_model_weights(models, str(weights))
    assert same_weights(models.model_all.get_weights(), state_weights(state, "a"))   # the epoch-1 model, whole
    load_model_weights(models, str(work / "model_raw.weights.h5"))
    assert same_weights(models.model_all.get_weights(), state_weights(state))        # and its raw weights
    epoch1_weights = sha256(weights)

    # 2. --resume, SIGKILL inside the weights save at the end of epoch 2
    run = Watched(train_command(mixed_type_dataset, work, "--num_epochs", "2", "--resume",
                                driver=SAVE_HANG_DRIVER), work)
    run.wait_for(r"SAVE-IN-PROGRESS", "out")
    assert run.kill() == -signal.SIGKILL
    assert "resuming after epoch 1" in run.stdout
    assert sha256(weights) == epoch1_weights                 # the rename never happened
    load_model_weights(models, str(weights))
    assert visible_files(work) == run_files
    leftovers = [n for n in os.listdir(work) if n.startswith(".tmp_")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".weights.h5"), leftovers   # the unrenamed new weights
    assert state_meta(state)["epoch"] == 1 and log_epochs() == ["1"]

    # 3. --resume completes the run
    run = Watched(train_command(mixed_type_dataset, work, "--num_epochs", "2", "--resume"), work)
    assert run.finish() == 0, run.stderr[-3000:]
    assert "resuming after epoch 1" in run.stdout and "epoch 2:" in run.stdout and "epoch 1:" not in run.stdout
    assert f"removed {leftovers[0]}, a partial file" in run.stdout               # the killed save's leftover
    assert not [n for n in os.listdir(work) if n.startswith(".tmp_")]
    assert state_meta(state)["epoch"] == 2 and log_epochs() == ["1", "2"]
    load_model_weights(models, str(weights))
    if "saving weights" in run.stdout:
        assert same_weights(models.model_all.get_weights(), state_weights(state, "a"))
    else:
        assert sha256(weights) == epoch1_weights
    good = {name: sha256(work / name) for name in ("model.weights.h5", "config.pickle", "config.json")}

    # 4. one more epoch at learning rate 1e10: NaN, a clear stop, the epoch-2 files untouched
    run = Watched(train_command(mixed_type_dataset, work, "--num_epochs", "3", "--resume",
                                "--learning-rate", "1e10"), work)
    assert run.finish() == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), run.stderr[-3000:]
    assert "NaN" in errors[0] and "epoch 3" in errors[0] and f"kept in {weights}" in errors[0], errors[0]
    assert "Traceback" not in run.stderr
    assert {name: sha256(work / name) for name in good} == good
    assert state_meta(state)["epoch"] == 2 and log_epochs() == ["1", "2"]
    load_model_weights(models, str(weights))
    assert all(np.isfinite(w).all() for w in models.model_all.get_weights())
    shutil.rmtree(work, ignore_errors=True)   # ~1.5 GB of checkpoints and leftovers


def test_nan_classifier_loss_alone_stops_training(toy_dataset, tmp_path, monkeypatch, capsys):
    """A NaN classifier loss with a finite RPN loss stops training too (a skipped classifier step,
    pos_fraction nan, does not). Training steps are stubbed: what is under test is train.main's check,
    the message, and that the epoch-1 weights on disk are left alone."""
    from keras_frcnn_cryo import train
    from keras_frcnn_cryo.cli import run_cli
    from keras_frcnn_cryo.trainer import Trainer

    finite = {"rpn_cls": 0.6, "rpn_regr": 0.2, "cls_cls": 0.7, "cls_regr": 0.3, "cls_acc": 0.5, "pos_fraction": 0.25}
    skipped = dict(finite, cls_cls=float("nan"), cls_regr=float("nan"), cls_acc=float("nan"), pos_fraction=float("nan"))
    broken = dict(finite, cls_cls=float("nan"))
    schedule = [finite, skipped, broken]          # epoch 1: a step and a skipped classifier; epoch 2: NaN
    monkeypatch.setattr(Trainer, "train_on_batch", lambda self, samples, rng: [schedule.pop(0) for _ in samples])
    weights = tmp_path / "model.weights.h5"
    argv = ["-p", toy_dataset, "--im-size", str(TOY_SIZE), "--anchor-scales", *(f"{s:g}" for s in TOY_ANCHORS),
            "--num_epochs", "2", "--epoch_length", "2", "--output_weight_path", str(weights), *TOY_NET_ARGS,
            "--config_filename", str(tmp_path / "config.pickle"), "--split-file", str(tmp_path / "split.json")]
    assert run_cli(train.main, train.build_parser(), argv) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), captured.err[-2000:]
    assert "NaN" in errors[0] and "epoch 2" in errors[0] and f"kept in {weights}" in errors[0]
    assert "epoch 1: loss" in captured.out and not schedule
    saved = {name: sha256(tmp_path / name) for name in ("model.weights.h5", "config.pickle")}

    # the same NaN in the first epoch: nothing was saved, and the message says so
    schedule[:] = [broken]
    fresh = str(tmp_path / "fresh" / "model.weights.h5")
    assert run_cli(train.main, train.build_parser(), [a if a != str(weights) else fresh for a in argv]) == 2
    assert "no weights were saved yet" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists() or os.listdir(tmp_path / "fresh") == []
    assert {name: sha256(tmp_path / name) for name in saved} == saved
