"""Per-image training-iteration time and prediction time at given input sizes, on this machine.

    python benchmarks/speed_train_predict.py --sizes 600 300 --steps 8 --predict 10 \
        [--modes alternating joint] [--norms group frozen_bn] [--adam fused keras] [--groupnorm ours keras] \
        [--variant "" "pool_size=14 num_rois=16"]

For each size: a synthetic cryo-ET slice (from keras_frcnn_cryo.synthetic) resized to that shorter
side; the detector's first training iteration (which traces the compiled steps) and its training
iteration timed over ``--steps`` images after warm-up, for each
training mode (alternating: RPN step + proposals + classifier step with a second backbone pass, the
paper's; joint: one backbone pass and one update, see keras_frcnn_cryo.train) and backbone
normalisation (group: from scratch; frozen_bn: as with ImageNet weights); prediction (Detector.detect: preprocessing, backbone, RPN,
300 proposals through the conv5 head, NMS) timed over ``--predict`` calls after warm-up; and, as a
reference measured in the same run, one Adam training step of a bare keras.applications ResNet-50
(include_top=False, weights=None) at the same size. Medians are printed in seconds.
``--groupnorm keras`` also times the GroupNorm rows with keras.layers.GroupNormalization in place of
the package's resnet.GroupNormalization (same weights and values, statistics per channel): the peer
in the same run. ``--adam keras`` also times the detector's training with stock keras.optimizers.Adam in place of the
package's optimizer.FusedAdam (same formula, one fused kernel per variable): the peer in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_frcnn_cryo import data_generators, preprocessing, synthetic  # noqa: E402
from keras_frcnn_cryo.cli import set_seed  # noqa: E402
from keras_frcnn_cryo.config import Config, apply_overrides  # noqa: E402


@contextlib.contextmanager
def group_norm_layer(which: str):
    """Models built inside use keras.layers.GroupNormalization for the "group" backbone when ``which``
    is "keras" (the peer), the package's resnet.GroupNormalization when "ours"."""
    from keras_frcnn_cryo import resnet
    ours = resnet.GroupNormalization
    if which == "keras":
        import keras
        resnet.GroupNormalization = keras.layers.GroupNormalization
    try:
        yield
    finally:
        resnet.GroupNormalization = ours


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bare_resnet_step(size: int):
    """One Adam step of keras.applications ResNet-50 (no top) on a size x size image, compiled."""
    import keras
    import tensorflow as tf
    net = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3))
    opt = keras.optimizers.Adam(1e-5)
    x = tf.random.normal((1, size, size, 3))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(net(x, training=True)))
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return loss
    return lambda: step().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[600, 300])
    parser.add_argument("--steps", type=int, default=8, help="timed training iterations per size")
    parser.add_argument("--predict", type=int, default=10, help="timed predictions per size")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare ResNet-50 reference")
    parser.add_argument("--modes", nargs="+", default=["alternating", "joint"], choices=["alternating", "joint"])
    parser.add_argument("--norms", nargs="+", default=["group", "frozen_bn"], choices=["group", "frozen_bn", "batch", "ws"])
    parser.add_argument("--adam", nargs="+", default=["fused"], choices=["fused", "keras"],
                        help="optimiser of the timed training: the package's FusedAdam and/or stock Keras Adam")
    parser.add_argument("--groupnorm", nargs="+", default=["ours"], choices=["ours", "keras"],
                        help="GroupNorm layer of the group rows: the package's and/or keras.layers.GroupNormalization")
    parser.add_argument("--variant", nargs="+", default=[""], metavar="'FIELD=VALUE ...'",
                        help="Config settings timed as separate rows (space-separated FIELD=VALUE, as --set; '' = defaults)")
    args = parser.parse_args()
    set_seed(0)
    import keras

    from keras_frcnn_cryo.hardware import cpu_description
    from keras_frcnn_cryo.model import Detector
    from keras_frcnn_cryo.train import Trainer

    class KerasAdamTrainer(Trainer):
        """The peer: training with stock keras.optimizers.Adam (the same values)."""

        def _adam(self) -> keras.optimizers.Optimizer:
            return keras.optimizers.Adam(learning_rate=self.cfg.learning_rate, beta_1=self.cfg.adam_beta_1,
                                         beta_2=self.cfg.adam_beta_2)

    volume = synthetic.generate_tomogram(shape=(12, 640, 640), seed=1, n_mito=3)
    z = max(volume["slice_boxes"], key=lambda k: len(volume["slice_boxes"][k]))
    image = volume["tomogram"][z]
    boxes = volume["slice_boxes"][z]
    record = {"filepath": "slice", "width": image.shape[1], "height": image.shape[0], "imageset": "train",
              "bboxes": [dict(b, difficult=False) for b in boxes]}
    import tensorflow as tf
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, load {os.getloadavg()}; image {image.shape[1]}x{image.shape[0]} "
          f"float32 with {len(boxes)} mitochondria")
    print(cpu_description())
    print(f"{'size':>5} {'mode':>12} {'norm':>16} {'adam':>6} {'first iter (s)':>15} {'train iter (s)':>15} "
          f"{'bare ResNet-50 step (s)':>24} {'ratio':>6} {'predict (s)':>12}  variant")
    for size in args.sizes:
        bare_s = float("nan") if args.no_bare else median_time(bare_resnet_step(size), args.steps)
        rows = [(norm, gn) for norm in args.norms for gn in (args.groupnorm if norm == "group" else ["ours"])]
        for norm, gn in rows:
            label = f"{norm} ({gn})" if norm == "group" else norm
            with group_norm_layer(gn):
                for mode, adam, variant in [(m, a, v) for m in args.modes for a in args.adam for v in args.variant]:
                    cfg = Config(class_mapping={"mitochondrion": 0, "bg": 1}, im_size=size, train_mode=mode,
                                 backbone_norm=norm)
                    apply_overrides(cfg, variant.split())
                    trainer = (Trainer if adam == "fused" else KerasAdamTrainer)(cfg)
                    rng = np.random.default_rng(0)
                    gen = data_generators.iter_training_samples([record], cfg, rng, lambda _: image,
                                                                preprocessing.prepare_image, augment_images=False)
                    started = time.perf_counter()
                    trainer.train_on_sample(next(gen), rng)       # the first step traces the compiled steps
                    first_s = time.perf_counter() - started
                    train_s = median_time(lambda: trainer.train_on_sample(next(gen), rng), args.steps)
                    detector = Detector(cfg, models=trainer.models)
                    predict_s = median_time(lambda: detector.detect(image, min_score=0.0), args.predict)
                    print(f"{size:>5} {mode:>12} {label:>16} {adam:>6} {first_s:>15.2f} {train_s:>15.3f} {bare_s:>24.3f} {train_s / bare_s:>6.2f} "
                          f"{predict_s:>12.3f}  {variant or 'defaults'}", flush=True)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
