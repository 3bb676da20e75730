"""Scale-out on this machine: training images per second with 1 and 2 replicas (tf.distribute), and
prediction volumes per minute with 1 and 2 shards (test_frcnn.py --shard).

    python benchmarks/scaling.py [--out runs/scaling] [--size 256] [--steps 12] [--volumes 4] \
        [--configs 1 4 5] [--no-prediction]

Training (joint mode, from scratch, the synthetic generator's slices at ``--size`` px), each
configuration in a fresh process through trainer.Trainer (what train_frcnn.py runs):
  * one device, --batch-size 1 (today's default),
  * one device, --batch-size 2,
  * --distribute mirrored --batch-size 2 over 2 replicas: the machine's GPUs when it has 2 or more,
    else 2 logical CPU devices (--cpu-replicas 2).
After warm-up steps (until two in a row need no new trace of the step), ``--steps`` steps are
timed; images per second = images / seconds. Two more configurations time the input pipeline with
the step: the recipe's slab channels read from the tomograms, augmented and preprocessed inside the
timed loop, either between steps (prefetch_images 0) or one background thread ahead (the default 2).

Prediction: ``--volumes`` synthetic tomograms (MRC) through test_frcnn.py with a model trained for a
few images (speed does not depend on how well it detects); one process over all volumes, then two
processes at once with --shard 1/2 and 2/2 into one output folder.

On a 2-core CPU, replicas and shards share the same two cores: they can add no arithmetic, only
overlap; the figures say how much that costs or gains. The same script runs unchanged on a GPU
machine. Prints the CPU (flags) and every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from keras_frcnn_cryo.hardware import cpu_description  # noqa: E402


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"1 device, batch 1": {}, "1 device, batch 2": {"batch_size": 2},
           "mirrored, 2 replicas, batch 2": {"batch_size": 2, "distribute": "mirrored"},
           # the input pipeline: images read (slab channels), augmented and preprocessed inside the
           # timed loop, in the step's thread or one thread ahead (data_generators.Prefetch)
           "1 device, batch 1, images prepared between steps": {"stream": True, "prefetch_images": 0},
           "1 device, batch 1, images prefetched": {"stream": True, "prefetch_images": 2}}


def train_child(annotations: str, values: dict, steps: int) -> dict:
    """Time ``steps`` joint steps of a Trainer with Config ``values`` (this process only)."""
    import tensorflow as tf

    from keras_frcnn_cryo import data_generators, preprocessing, recipes, tomo_io, train
    from keras_frcnn_cryo.trainer import Trainer, training_generators
    if values.get("distribute") == "mirrored" and len(tf.config.list_physical_devices("GPU")) < 2:
        values = {**values, "cpu_replicas": 2}
    stream = values.pop("stream", False)
    if not stream:
        values = {**values, "input_channels": "repeat"}   # images read outside the timed loop
    cfg = recipes.config_for("scratch", annotation_path=annotations, **values)
    train_records, _ = train.prepare(cfg)
    trainer = Trainer(cfg)
    rng, data_rng = training_generators(0)
    source = tomo_io.image_source(cfg)
    gen = data_generators.Prefetch(data_generators.iter_training_samples(
        train_records, cfg, data_rng, source, preprocessing.prepare_image), data_rng, cfg.prefetch_images)
    traces, quiet = -1, 0
    while quiet < 2:            # warm up until two steps in a row needed no new trace of the step
        trainer.train_on_batch([next(gen) for _ in range(cfg.batch_size)], rng)
        count = trainer.joint_step.experimental_get_tracing_count()
        quiet, traces = (quiet + 1 if count == traces else 0), count
    if stream:        # as train.fit runs: the next images come from the stream inside the loop
        time.sleep(2.0)                  # let the prefetch queue fill as it would during the warm-up
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_on_batch([next(gen) for _ in range(cfg.batch_size)], rng)
    else:             # the step alone: images prepared before the clock starts
        samples = [[next(gen) for _ in range(cfg.batch_size)] for _ in range(steps)]
        started = time.perf_counter()
        for batch in samples:
            trainer.train_on_batch(batch, rng)
    seconds = time.perf_counter() - started
    gen.close()
    source.close()
    devices = "GPU" if tf.config.list_physical_devices("GPU") and not cfg.cpu_replicas else "CPU"
    return {"replicas": trainer.replicas, "devices": devices, "images": steps * cfg.batch_size, "seconds": seconds}


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd[:3])} ... failed:\n{done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/scaling")
    parser.add_argument("--size", type=int, default=256, help="slice size (px)")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per configuration")
    parser.add_argument("--volumes", type=int, default=4, help="tomograms for the prediction part")
    parser.add_argument("--configs", nargs="+", type=int, metavar="N",
                        help="only these training configurations (default all): 1 batch 1, 2 batch 2, 3 mirrored, "
                        "4 images prepared between steps, 5 images prefetched")
    parser.add_argument("--no-prediction", action="store_true", help="skip the prediction part")
    parser.add_argument("--child", help=argparse.SUPPRESS)      # one training configuration (JSON)
    args = parser.parse_args()
    annotations = os.path.join(args.out, "data", "annotations.txt")
    if args.child:
        print("RESULT " + json.dumps(train_child(annotations, json.loads(args.child), args.steps)), flush=True)
        return
    from keras_frcnn_cryo import synthetic
    print(f"machine: {cpu_description()}", flush=True)
    synthetic.write_dataset(os.path.join(args.out, "data"), max(args.volumes, 3), seed=11,
                            shape=(24, args.size, args.size), pixel_size_a=40.0, slice_step=2)
    for number, (name, values) in enumerate(CONFIGS.items(), start=1):
        if args.configs and number not in args.configs:
            continue
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--out", args.out, "--size", str(args.size),
                               "--steps", str(args.steps), "--child", json.dumps(values)],
                              capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"error: training configuration {name!r} failed:\n{done.stderr[-2000:]}")
        result = json.loads(lines[-1][len("RESULT "):])
        print(f"training, {name}: {result['replicas']} replica(s) on {result['devices']}, "
              f"{result['images']} images in {result['seconds']:.1f} s = "
              f"{result['images'] / result['seconds']:.2f} images/s", flush=True)

    if args.no_prediction:
        return
    model = os.path.join(args.out, "model")
    run([sys.executable, os.path.join(ROOT, "train_frcnn.py"), "-p", annotations, "--num_epochs", "1",
         "--epoch_length", "4", "--output_weight_path", os.path.join(model, "model.weights.h5"),
         "--config_filename", os.path.join(model, "config.pickle")])
    volumes = os.path.join(args.out, "data", "tomograms")
    names = sorted(n for n in os.listdir(volumes) if n.endswith(".mrc"))[:args.volumes]
    chosen = os.path.join(args.out, "volumes")
    os.makedirs(chosen, exist_ok=True)
    for name in names:
        target = os.path.join(chosen, name)
        if not os.path.exists(target):
            os.symlink(os.path.abspath(os.path.join(volumes, name)), target)
    base = [sys.executable, os.path.join(ROOT, "test_frcnn.py"), "-p", chosen, "--config_filename",
            os.path.join(model, "config.pickle"), "--no-overlays"]
    for shards in (1, 2):
        out = os.path.join(args.out, f"predict_{shards}")
        started = time.perf_counter()
        procs = [subprocess.Popen(base + ["--output", out] + (["--shard", f"{k}/{shards}"] if shards > 1 else []),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for k in range(shards)]
        errors = [proc.communicate()[1] for proc in procs]
        seconds = time.perf_counter() - started
        if any(proc.returncode for proc in procs):
            sys.exit(f"error: prediction with {shards} shard(s) failed:\n{errors[0][-2000:]}")
        print(f"prediction, {shards} shard(s): {len(names)} volumes in {seconds:.1f} s = "
              f"{60.0 * len(names) / seconds:.2f} volumes/min (processes start TensorFlow and load the model: "
              "included)", flush=True)


if __name__ == "__main__":
    main()
