"""train_frcnn.py -> test_frcnn.py -> measure_map.py through the real scripts, as a user runs them."""
import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import TOY_NET_ARGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, *args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_run(toy_dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    proc = run_script("train_frcnn.py", "-p", toy_dataset, "--num_epochs", "1", "--epoch_length", "4",
                      "--im-size", "96", "--anchor-scales", "24", "48", "-n", "8", "--hf", *TOY_NET_ARGS,
                      "--split-file", work / "split.json", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work


def test_train_outputs(trained_run):
    for name in ("config.pickle", "config.json", "model_frcnn.weights.h5", "model_frcnn_log.csv"):
        assert (trained_run / name).is_file(), name


def test_predict_then_measure(trained_run, toy_dataset):
    images = os.path.join(os.path.dirname(toy_dataset), "images")
    proc = run_script("test_frcnn.py", "-p", images, "--threshold", "0.0", "--output", "results", cwd=trained_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(trained_run / "results" / "detections.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"image", "x1", "y1", "x2", "y2", "class", "score"}
    assert len(os.listdir(trained_run / "results" / "overlays")) == len(os.listdir(images))

    proc = run_script("measure_map.py", "--split", "all", "--output", "eval", cwd=trained_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mAP" in proc.stdout
    direct = json.loads((trained_run / "eval" / "metrics.json").read_text())
    assert set(direct["mAP"]["ap"]) == {"0.5", "0.6", "0.7", "0.8", "0.9"}

    # the same numbers from the CSV, without predicting again (CSV boxes are rounded to 0.01 px)
    proc = run_script("measure_map.py", "--split", "all", "--detections", "results/detections.csv",
                      "--output", "eval_csv", cwd=trained_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from_csv = json.loads((trained_run / "eval_csv" / "metrics.json").read_text())
    for thr in ("0.5", "0.7"):
        assert from_csv["mAP"]["ap"][thr] == pytest.approx(direct["mAP"]["ap"][thr], abs=0.02)
    assert (trained_run / "eval" / "pr_iou0.7.png").is_file() and (trained_run / "eval" / "metrics.md").is_file()

    # test_frcnn.py --shard 0/2 and 1/2 started together into one folder; measure_map.py reads the
    # folder, merges the two parts and gives the numbers of the unsharded CSV
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "test_frcnn.py"), "-p", images, "--threshold",
                               "0.0", "--output", "sharded", "--no-overlays", "--shard", f"{k}/2"],
                              cwd=trained_run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    for shard in procs:
        _, err = shard.communicate(timeout=600)
        assert shard.returncode == 0, err[-2000:]
    parts = sorted(os.listdir(trained_run / "sharded"))
    assert parts == ["detections.shard-0-of-2.csv", "detections.shard-1-of-2.csv"]
    seen = []
    for part in parts:
        with open(trained_run / "sharded" / part) as fh:
            seen.append({row["image"] for row in csv.DictReader(fh)})
    assert not seen[0] & seen[1]
    proc = run_script("measure_map.py", "--split", "all", "--detections", "sharded", "--output", "eval_sharded",
                      cwd=trained_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "merged from 2 --shard parts" in proc.stdout
    merged = json.loads((trained_run / "eval_sharded" / "metrics.json").read_text())
    assert merged["mAP"]["ap"] == from_csv["mAP"]["ap"]


@pytest.mark.parametrize("script, args, needle", [
    ("train_frcnn.py", ["-p", "missing.txt"], "missing.txt"),
    ("train_frcnn.py", ["-p", "bad.txt"], "bad.txt:1"),
    ("test_frcnn.py", ["-p", "empty_dir"], "empty_dir"),
    ("test_frcnn.py", ["-p", "img.png", "--config_filename", "nope.pickle"], "nope.pickle"),
    ("measure_map.py", ["--config_filename", "nope.pickle"], "nope.pickle"),
])
def test_bad_input_is_one_line(tmp_path, script, args, needle):
    (tmp_path / "bad.txt").write_text("only,three,fields\n")
    (tmp_path / "empty_dir").mkdir()
    import cv2
    import numpy as np
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((8, 8), np.uint8))
    proc = run_script(script, *args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
