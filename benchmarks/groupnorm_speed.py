"""GroupNorm from per-channel statistics (resnet.GroupNormalization) against keras' own layer, same run.

    python benchmarks/groupnorm_speed.py                    # about 2 minutes on 2 idle cores
    python benchmarks/groupnorm_speed.py --im-size 384 --threads 1 --repeats 10

Both layers hold the same weights and compute the same values (tests/test_resnet.py). Timed, each
as the median of ``--repeats`` calls of a tf.function after two warm-up calls, float32:

* one layer on the activation shapes of ResNet-50 at a ``--im-size`` square input (conv1: stride 2,
  64 channels; conv2_x: stride 4, 64 and 256; conv3_x: stride 8, 128 and 512; conv4_x: stride 16,
  256 and 1024; the conv5 head: 16 RoIs of 7 x 7, 512 and 2048), forward alone and forward with the
  gradient of a loss (what a training step does);
* the whole shared backbone (``resnet.nn_base``, conv1-conv4, 23 residual blocks in GroupNorm mode)
  built with each layer: a forward pass (prediction) and a forward and backward pass (training).

Prints the CPU, its speed flags, the threads and the load average first: compare ratios from one
run, not seconds across machines.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_frcnn_cryo.hardware import cpu_description, import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_frcnn_cryo import resnet  # noqa: E402
from speed_train_predict import group_norm_layer, median_time  # noqa: E402  (benchmarks/ is the script's folder)

GROUPS = 32


def layer_shapes(im_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """(stage, activation shape) of the GroupNorm layers of ResNet-50 at an im_size square input."""
    def side(stride: int) -> int:
        return -(-im_size // stride)
    return [("conv1", (1, side(2), side(2), 64)),
            ("conv2_x", (1, side(4), side(4), 64)), ("conv2_x", (1, side(4), side(4), 256)),
            ("conv3_x", (1, side(8), side(8), 128)), ("conv3_x", (1, side(8), side(8), 512)),
            ("conv4_x", (1, side(16), side(16), 256)), ("conv4_x", (1, side(16), side(16), 1024)),
            ("conv5 head, 16 RoIs", (16, 7, 7, 512)), ("conv5 head, 16 RoIs", (16, 4, 4, 2048))]


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms after two warm-up calls."""
    return 1e3 * median_time(fn, repeats)


def timed_pair(make, x: tf.Tensor, repeats: int) -> dict[str, float]:
    """Forward and forward+gradient ms of the layer or model ``make()`` returns, on x."""
    net = make()
    forward = tf.function(lambda: net(x))

    @tf.function
    def with_gradient():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(net(x)))
        return tape.gradient(loss, [x, *net.trainable_weights])

    return {"forward": median_ms(forward, repeats), "forward+backward": median_ms(with_gradient, repeats)}


def backbone(which: str) -> keras.Model:
    """nn_base in GroupNorm mode built with the package's layer ("ours") or keras' ("keras")."""
    with group_norm_layer(which):
        keras.utils.set_random_seed(0)
        image = keras.Input((None, None, 3))
        return keras.Model(image, resnet.nn_base(image, norm="group", groups=GROUPS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--im-size", type=int, default=288, help="square input side (the scratch recipe's 288)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: all cores)")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    print(f"machine: {cpu_description()}; threads {args.threads or os.cpu_count()}; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; TensorFlow {tf.__version__}, Keras {keras.__version__}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    rng = np.random.default_rng(0)
    peers = (("keras", keras.layers.GroupNormalization), ("ours", resnet.GroupNormalization))
    print(f"\none layer, {GROUPS} groups, ms (median of {args.repeats}); ratio = keras / ours")
    print(f"{'stage':22s} {'shape':>20s} {'keras fwd':>10s} {'ours fwd':>9s} {'ratio':>6s} "
          f"{'keras f+b':>10s} {'ours f+b':>9s} {'ratio':>6s}")
    for stage, shape in layer_shapes(args.im_size):
        x = tf.constant(rng.normal(size=shape).astype(np.float32))
        got = {}
        for name, cls in peers:
            def make(cls=cls):
                layer = cls(groups=GROUPS, epsilon=resnet.BN_EPSILON)
                layer.build(shape)
                return layer
            got[name] = timed_pair(make, x, args.repeats)
        k, o = got["keras"], got["ours"]
        print(f"{stage:22s} {str(shape):>20s} {k['forward']:10.2f} {o['forward']:9.2f} "
              f"{k['forward'] / o['forward']:6.2f} {k['forward+backward']:10.2f} {o['forward+backward']:9.2f} "
              f"{k['forward+backward'] / o['forward+backward']:6.2f}", flush=True)
    x = tf.constant(rng.normal(size=(1, args.im_size, args.im_size, 3)).astype(np.float32))
    print(f"\nbackbone conv1-conv4 (nn_base, GroupNorm), one {args.im_size} x {args.im_size} image, ms")
    whole = {name: timed_pair(lambda name=name: backbone(name), x, max(3, args.repeats // 4)) for name, _ in peers}
    for kind in ("forward", "forward+backward"):
        k, o = whole["keras"][kind], whole["ours"][kind]
        print(f"{kind:18s} keras {k:8.1f}  ours {o:8.1f}  ratio {k / o:5.2f}", flush=True)


if __name__ == "__main__":
    main()
