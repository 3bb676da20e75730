"""Per-slice prediction latency of our Detector against torchvision's Faster R-CNN, in the same run.

    python benchmarks/speed_predict.py                      # about 5 minutes on 2 loaded cores
    python benchmarks/speed_predict.py --norms frozen_bn --repeats 20 --extras
    python benchmarks/speed_predict.py --im-size 128 --repeats 1 --warmup 0 --no-peer   # smoke test
    python benchmarks/speed_predict.py --only-trained --trained RUN/config.pickle RUN/model_frcnn.weights.h5 \
        --trained-images RUN/../data/images/tomo_01_z00*.png --proposals 300 64 --min-scores 0 0.05

Input: one 600 x 600 float32 slice of the synthetic tomogram of benchmarks/tomogram.py (so
Config.im_size 600 means no resizing). Ours: ``Detector.detect`` on that slice with untrained
weights (latency does not depend on them), i.e. the whole per-slice path: preprocessing (grid
bilateral filter, histogram equalisation), ResNet-50 conv1-4, RPN, proposals (NMS 0.7), RoI max
pooling and the conv5 head on every proposal, per-class NMS. The head runs conv5 once per proposal,
so the number of proposals reaching it matters: timed with the paper's 300
(``Config.rpn_max_proposals_test``) and with a smaller cap (``--proposals``), for each backbone
normalisation in ``--norms`` ("frozen_bn": what ImageNet-initialised training gives, the paper's
setting; "group": the from-scratch default). The number of RoIs the RPN actually passed to the head
is printed beside each figure. Each figure is the median of ``--repeats`` calls after ``--warmup``.
Every row runs in float32; the rows of ``--bf16-rows`` (default frozen_bn at 300 and 64 proposals,
GroupNorm at 300) run again with ``Config.inference_precision = "bfloat16"`` (the package's
mixed_bfloat16 Detector, same weights as the float32 one), to be read next to them: faster only on
CPUs with bfloat16 units (AVX512-BF16, AMX).

Peer: torchvision ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` in eval mode,
transform min_size 600, torch.set_num_threads(2), on the same slice, run by
benchmarks/speed_predict_peer.py with the peer virtual environment's python (``--peer-python``,
default benchmarks/.venv-peer/bin/python; see benchmarks/README.md) as a subprocess of this run;
if that environment is missing only our figures are printed. Its default 1000 proposals and 300.

Targets from the issue: <= 0.3 s per slice for ours, and at least 2x faster than torchvision.

``--extras`` (optional, separate section): the backbone and the head alone, as the Detector runs
them (tf.function) and with XLA (``jit_compile=True``), in float32 and with the bfloat16 models
(``build_models(cfg, precision="bfloat16")``); the bfloat16 Detector against the same steps written
out by hand; and per-slice latency of a batch of 4 slices (predict_volume's default). XLA and the
by-hand path change no package code: they show what a change there could give.

``--trained CONFIG WEIGHTS --trained-images ...`` (optional section): a trained detector on real
slices, for each ``--proposals`` cap, ``--min-scores`` floor (Config.rpn_min_score_test, proposals
below it skip the head) and precision: seconds per slice and the mean number of RoIs the head got.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from keras_frcnn_cryo.hardware import cpu_description  # noqa: E402
from parallel_training import limit_threads  # noqa: E402
from tomogram import random_ellipsoids, render_slab

TARGET_SECONDS_PER_SLICE = 0.3
TARGET_SPEEDUP = 2.0
PEER_SCRIPT = os.path.join(HERE, "speed_predict_peer.py")
DEFAULT_PEER_PYTHON = os.path.join(HERE, ".venv-peer", "bin", "python")
CLASS_MAPPING = {"mitochondrion": 0, "bg": 1}
EXTRA_BATCH = 4                      # predict_volume's default batch (VolumeOptions.batch_size)
PEER_LINE = re.compile(r"^RESULT proposals=(\d+) median_s=([0-9.]+) cpu_s=([0-9.]+) runs=(\d+)$")


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> tuple[float, float]:
    """Medians of the wall time and of the process CPU time (all threads; s) of ``repeats`` calls of
    ``fn`` after ``warmup`` untimed calls. CPU time is less sensitive than wall time to other jobs."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return float(np.median(walls)), float(np.median(cpus))


def load_text() -> str:
    """'load average a b c' of the last 1, 5, 15 minutes."""
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def make_slice(size: int, seed: int) -> np.ndarray:
    """(size, size) float32 synthetic tomogram slice (noise + dark membrane-bounded ellipsoids)."""
    rng = np.random.default_rng(seed)
    shape = (64, size, size)
    return render_slab(rng, shape, shape[0] // 2, shape[0] // 2 + 1, random_ellipsoids(rng, shape, 6))[0]


def rois_to_head(detector, image: np.ndarray) -> int:
    """Number of proposals the RPN passes to the head for ``image`` (as Detector.detect makes them)."""
    from keras_frcnn_cryo import preprocessing
    x_img, _ = preprocessing.prepare_image(image, detector.cfg)
    rpn_cls, rpn_regr, _ = detector.models.model_rpn(x_img[None].astype(np.float32), training=False)
    rois, _ = detector.proposals(np.asarray(rpn_cls[0], np.float32), np.asarray(rpn_regr[0], np.float32),
                              x_img.shape[1], x_img.shape[0])
    return int(rois.shape[0])


def trained_section(config_path: str, weights: str, image_paths: list[str], caps: list[int],
                    min_scores: list[float], precisions: list[str], repeats: int, warmup: int) -> None:
    """A trained detector on real slices: per-slice latency and RoIs reaching the head, for each
    test-time proposal cap, proposal score floor (Config.rpn_min_score_test) and precision.

    With untrained weights every slice sends the full cap to the head; a trained RPN scores most
    proposals near 0 on slices with few objects, which is what the score floor uses. The slices are
    read as the model's config says (tomo_io.image_source: three slabs of the tomogram for a model
    trained on slabs), as test_frcnn.py reads them."""
    from keras_frcnn_cryo import predict, tomo_io
    from keras_frcnn_cryo.config import load_config

    cfg = load_config(config_path)
    source = tomo_io.image_source(cfg)    # slab channels when the model was trained on them
    images = [source(path) for path in image_paths]
    source.close()
    print(f"\ntrained model {weights} on {len(images)} slices ({images[0].shape[1]}x{images[0].shape[0]} px); "
          f"per slice: median over slices of the median of {repeats} calls; detection_views {cfg.detection_views} (each "
          f"view is one full detection; the paper detects once); {load_text()}")
    print(f"  {'precision':<9} {'max proposals':>13} {'min score':>9} {'mean RoIs to head':>18} {'s per slice':>12}")
    for precision in precisions:
        detector = predict.load_detector(config_path, weights, precision=precision)
        for cap in caps:
            for floor in min_scores:
                detector.cfg.rpn_max_proposals_test, detector.cfg.rpn_min_score_test = cap, floor
                per_image = [median_seconds(lambda im=im: detector.detect(im, 0.0), repeats, warmup)[0]
                             for im in images]
                rois = np.mean([rois_to_head(detector, im) for im in images])
                print(f"  {precision:<9} {cap:>13} {floor:>9g} {rois:>18.1f} {np.median(per_image):>12.3f}",
                      flush=True)


def run_peer(python: str, image_path: str, size: int, max_size: int, proposals: list[int], repeats: int,
             warmup: int, threads: int) -> dict[int, tuple[float, float]]:
    """Run speed_predict_peer.py in the peer environment; {proposals: (median wall s, median cpu s)}."""
    command = [python, PEER_SCRIPT, "--image", image_path, "--size", str(size), "--max-size", str(max_size),
               "--repeats", str(repeats), "--warmup", str(warmup), "--threads", str(threads),
               "--proposals", *[str(p) for p in proposals]]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    results = {}
    for line in done.stdout.splitlines():
        match = PEER_LINE.match(line.strip())
        if match:
            results[int(match.group(1))] = (float(match.group(2)), float(match.group(3)))
        else:
            print(f"  peer: {line}")
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-5:]
        print(f"  peer failed (exit {done.returncode}): " + " | ".join(tail))
    return results


def manual_path(models, cfg) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Detector.detect's steps written out (prepare, backbone + RPN, proposals, head), casting the
    features and outputs to float32 between them, so a model of any dtype policy runs; per-class
    decoding and NMS (milliseconds) are left out. Returns image -> (objectness map, class probabilities)."""
    import tensorflow as tf

    from keras_frcnn_cryo import preprocessing, roi_helpers
    from keras_frcnn_cryo.anchors import to_feature_units

    rpn_fn = tf.function(lambda x: models.model_rpn(x, training=False), reduce_retracing=True)
    head_fn = tf.function(lambda f, r: models.classifier_head([f, r], training=False), reduce_retracing=True)

    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x_img, _ = preprocessing.prepare_image(image, cfg)
        rpn_cls, rpn_regr, features = rpn_fn(tf.constant(x_img[None], tf.float32))
        rpn_cls = tf.cast(rpn_cls, tf.float32).numpy()
        rois, _ = roi_helpers.rpn_to_roi(rpn_cls[0], tf.cast(rpn_regr, tf.float32).numpy()[0], cfg,
                                         x_img.shape[1], x_img.shape[0], max_proposals=cfg.rpn_max_proposals_test)
        rois_feat = tf.constant(to_feature_units(rois, cfg)[None], tf.float32)
        probs, _ = head_fn(features, rois_feat)
        return rpn_cls, tf.cast(probs, tf.float32).numpy()[0]
    return run


def parse_rows(rows: list[str]) -> dict[str, list[int]]:
    """["frozen_bn:300", "group:300"] -> {"frozen_bn": [300], "group": [300]}; ValueError if malformed."""
    out: dict[str, list[int]] = {}
    for row in rows:
        norm, _, cap = row.partition(":")
        if not norm or not cap.isdigit() or int(cap) < 1:
            raise ValueError(f"--bf16-rows takes NORM:PROPOSALS (e.g. frozen_bn:300), got {row!r}")
        out.setdefault(norm, []).append(int(cap))
    return out


def extras(image: np.ndarray, size: int, proposals: int, repeats: int, warmup: int) -> None:
    """Optional section: XLA on backbone and head, bfloat16 parts and by hand, batch of 4."""
    import tensorflow as tf

    from keras_frcnn_cryo.config import Config
    from keras_frcnn_cryo.model import BASE_CHANNELS, Detector, build_models

    failures = (tf.errors.OpError, ValueError, TypeError, NotImplementedError)
    cfg = Config(class_mapping=CLASS_MAPPING, im_size=size, backbone_norm="frozen_bn", rpn_max_proposals_test=proposals)
    print(f"\nextras ({load_text()}), backbone_norm frozen_bn, rpn_max_proposals {proposals}; wall (cpu) s:")
    x_img = tf.random.normal((1, size, size, 3))
    feat = tf.random.normal((1, -(-size // cfg.rpn_stride), -(-size // cfg.rpn_stride), BASE_CHANNELS))
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, feat.shape[1] * 0.7, (proposals, 2))
    rois = tf.constant(np.concatenate([corner, corner + rng.uniform(2, feat.shape[1] * 0.3, (proposals, 2))],
                                      axis=1)[None].astype(np.float32))

    def timed(label: str, fn: Callable[[], object], per: int = 1) -> None:
        try:
            wall, cpu = median_seconds(fn, repeats, warmup)
        except failures as exc:
            print(f"  {label:<58} failed: {exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:160]}")
            return
        print(f"  {label:<58} {wall / per:7.3f} ({cpu / per:.3f})", flush=True)

    def parts(models, tag: str) -> None:
        for jit in (False, True):
            base = tf.function(lambda x: models.base(x, training=False), jit_compile=jit)
            head = tf.function(lambda f, r: models.classifier_head([f, r], training=False), jit_compile=jit)
            kind = "XLA jit_compile" if jit else "tf.function"
            timed(f"backbone conv1-4 {size}x{size}, {tag}, {kind}", lambda fn=base: fn(x_img)[0, 0, 0, 0].numpy())
            timed(f"head alone ({proposals} RoIs), {tag}, {kind}", lambda fn=head: fn(feat, rois)[0].numpy())

    models = build_models(cfg)
    parts(models, "float32")
    detector = Detector(cfg, models=models)
    timed(f"Detector.detect_many, batch of {EXTRA_BATCH}, per slice, float32",
          lambda: detector.detect_many([image] * EXTRA_BATCH, 0.0), per=EXTRA_BATCH)

    bf16_models = build_models(cfg, precision="bfloat16")
    bf16_models.model_all.set_weights(models.model_all.get_weights())   # same weights as the float32 model
    parts(bf16_models, "mixed_bfloat16")
    bf16_detector = Detector(cfg, models=bf16_models)
    timed("Detector.detect, bfloat16 models", lambda: bf16_detector.detect(image, 0.0))
    f32_path, bf16_path = manual_path(models, cfg), manual_path(bf16_models, cfg)
    timed("detect steps by hand, float32", lambda: f32_path(image))
    timed("detect steps by hand, mixed_bfloat16 (+ casts)", lambda: bf16_path(image))
    (obj32, probs32), (obj16, probs16) = f32_path(image), bf16_path(image)
    shared = min(len(probs32), len(probs16))
    print(f"  bfloat16 vs float32, same weights: max |objectness difference| {np.abs(obj32 - obj16).max():.3g}, "
          f"max |class probability difference| over the first {shared} RoIs "
          f"{np.abs(probs32[:shared] - probs16[:shared]).max():.3g} (untrained weights; RoIs may differ)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--im-size", type=int, default=600, help="Config.im_size; the slice is this size")
    parser.add_argument("--proposals", type=int, nargs="+", default=[300, 64],
                        help="Config.rpn_max_proposals_test values for ours (300 is the paper's)")
    parser.add_argument("--norms", nargs="+", default=["frozen_bn", "group"], help="Config.backbone_norm values")
    parser.add_argument("--bf16-rows", nargs="*", default=["frozen_bn:300", "frozen_bn:64", "group:300"],
                        metavar="NORM:PROPOSALS",
                        help="rows run again with inference_precision bfloat16 (norms not in --norms are "
                             "skipped; none: give the option alone)")
    parser.add_argument("--peer-proposals", type=int, nargs="+", default=[1000, 300],
                        help="torchvision rpn_post_nms_top_n_test values (1000 is its default)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--peer-threads", type=int, default=2, help="torch.set_num_threads for the peer")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra-op threads for ours (0: TensorFlow's default, all cores); "
                             "with --peer-threads the same, a like-for-like comparison on a shared machine")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--extras", action="store_true", help="also XLA, bfloat16 and batch-of-4 timings")
    parser.add_argument("--seed", type=int, default=0)
    trained = parser.add_argument_group("a trained model on real slices (optional section)")
    trained.add_argument("--trained", nargs=2, metavar=("CONFIG", "WEIGHTS"), default=None,
                         help="config.pickle and weights of a trained detector")
    trained.add_argument("--trained-images", nargs="+", default=[], help="slices (PNG/TIF/MRC) to time it on")
    trained.add_argument("--min-scores", type=float, nargs="+", default=[0.0, 0.05],
                         help="Config.rpn_min_score_test values (0: the paper's, no floor)")
    trained.add_argument("--trained-precisions", nargs="+", default=["float32", "bfloat16"])
    trained.add_argument("--only-trained", action="store_true", help="skip the untrained rows and the peer")
    args = parser.parse_args()
    if args.trained and not args.trained_images:
        parser.error("--trained needs --trained-images")
    try:
        bf16_rows = parse_rows(args.bf16_rows)
    except ValueError as exc:
        parser.error(str(exc))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow as tf

    if args.threads:
        limit_threads(args.threads)
    from keras_frcnn_cryo import preprocessing
    from keras_frcnn_cryo.cli import set_seed
    from keras_frcnn_cryo.config import Config
    from keras_frcnn_cryo.model import Detector

    set_seed(args.seed)
    print(f"{platform.node()} {platform.machine()}, {cpu_description()}, TensorFlow {tf.__version__} "
          f"(intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}), "
          f"{load_text()} (1/5/15 min), {time.strftime('%Y-%m-%d %H:%M')}")
    if args.only_trained:
        if not args.trained:
            parser.error("--only-trained needs --trained")
        trained_section(*args.trained, args.trained_images, args.proposals, args.min_scores,
                        args.trained_precisions, args.repeats, args.warmup)
        return
    image = make_slice(args.im_size, args.seed)
    print(f"input: one {args.im_size}x{args.im_size} float32 synthetic slice; median of {args.repeats} calls "
          f"after {args.warmup} warm-up calls; untrained weights")
    prep_cfg = Config(class_mapping=CLASS_MAPPING, im_size=args.im_size)
    prep, prep_cpu = median_seconds(lambda: preprocessing.prepare_image(image, prep_cfg), args.repeats, 1)
    print(f"\nours: keras_frcnn_cryo Detector.detect (preprocessing included: prepare_image alone {prep:.3f} s, "
          f"cpu {prep_cpu:.3f} s)")
    print(f"  {'backbone_norm':<14} {'precision':<9} {'rpn_max_proposals':>17} {'RoIs to head':>13} "
          f"{'s per slice':>12} {'cpu s':>7}")
    ours: dict[tuple[str, str, int], tuple[float, float]] = {}
    for norm in args.norms:
        cfg = Config(class_mapping=CLASS_MAPPING, im_size=args.im_size, backbone_norm=norm)
        detector = Detector(cfg)
        runs = [(detector, cap) for cap in args.proposals]
        if bf16_rows.get(norm):
            bf16 = Detector(Config(class_mapping=CLASS_MAPPING, im_size=args.im_size, backbone_norm=norm,
                                   inference_precision="bfloat16"))
            bf16.models.model_all.set_weights(detector.models.model_all.get_weights())   # same weights
            runs += [(bf16, cap) for cap in bf16_rows[norm]]
        for det, cap in runs:
            det.cfg.rpn_max_proposals_test = cap
            key = (norm, det.precision, cap)
            ours[key] = median_seconds(lambda det=det: det.detect(image, 0.0), args.repeats, args.warmup)
            print(f"  {norm:<14} {det.precision:<9} {cap:>17} {rois_to_head(det, image):>13} {ours[key][0]:>12.3f} "
                  f"{ours[key][1]:>7.3f}", flush=True)

    peer: dict[int, tuple[float, float]] = {}
    if args.no_peer:
        print("\npeer: skipped (--no-peer)")
    elif not os.path.isfile(args.peer_python):
        print(f"\npeer: {args.peer_python} not found, so no torchvision figure (set it up as benchmarks/README.md "
              "says)")
    else:
        print(f"\npeer: torchvision fasterrcnn_resnet50_fpn, eval, min_size {args.im_size}, "
              f"{args.peer_threads} threads ({load_text()})")
        with tempfile.TemporaryDirectory(prefix="frcnn_speed_") as tmp:
            image_path = os.path.join(tmp, "slice.npy")
            np.save(image_path, image)
            peer = run_peer(args.peer_python, image_path, args.im_size, prep_cfg.im_max_size, args.peer_proposals,
                            args.repeats, args.warmup, args.peer_threads)
        print(f"  {'rpn_post_nms_top_n_test':>32} {'':>13} {'s per slice':>12} {'cpu s':>7}")
        for proposals, (seconds, cpu) in peer.items():
            print(f"  {proposals:>32} {'':>13} {seconds:>12.3f} {cpu:>7.3f}")

    print(f"\nsummary ({load_text()}):")
    paper_cap = Config().rpn_max_proposals_test
    for (norm, precision, cap), (seconds, cpu) in ours.items():
        verdict = "met" if seconds <= TARGET_SECONDS_PER_SLICE else "NOT met"
        line = (f"  ours {norm} {precision}, {cap} proposals: {seconds:.3f} s/slice "
                f"(target <= {TARGET_SECONDS_PER_SLICE} s: {verdict})")
        if precision != "float32" and (norm, "float32", cap) in ours:
            f32_seconds, f32_cpu = ours[(norm, "float32", cap)]
            line += f"; vs float32: {f32_seconds / seconds:.2f}x wall, {f32_cpu / cpu:.2f}x cpu"
        for proposals, (peer_seconds, peer_cpu) in peer.items():
            line += f"; vs torchvision@{proposals}: {peer_seconds / seconds:.2f}x wall, {peer_cpu / cpu:.2f}x cpu"
        paper = cap == paper_cap and norm == "frozen_bn" and precision == "float32"
        print(line + (" [paper setting]" if paper else ""))
    if peer:
        print(f"  speed-up target: >= {TARGET_SPEEDUP:.0f}x faster than torchvision (ratios: torchvision time / ours; "
              "> 1 means ours is faster)")
    if args.extras:
        extras(image, args.im_size, args.proposals[0], args.repeats, args.warmup)
    if args.trained:
        trained_section(*args.trained, args.trained_images, args.proposals, args.min_scores,
                        args.trained_precisions, args.repeats, args.warmup)


if __name__ == "__main__":
    main()
