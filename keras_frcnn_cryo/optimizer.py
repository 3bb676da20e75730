"""Adam for the training steps: Keras' Adam with one fused TensorFlow kernel per variable.

The paper trains with Adam (lr 1e-5, beta1 0.9, beta2 0.999). Keras 3's Adam updates each variable
with about a dozen separate element-wise operations; for the 222 variables of ResNet-50 plus the
heads that is a large graph for TensorFlow to trace and optimise, so every new Trainer's first step
waits for it. Here every variable is updated by TensorFlow's ``ResourceApplyAdam`` kernel, one op,
with the same formula (Kingma and Ba, the bias correction folded into the step size, epsilon added
to sqrt(v)):

    m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
    w <- w - lr sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + epsilon)

Measured on a 2-core AVX2 CPU (BENCHMARKS.md, ``benchmarks/speed_train_predict.py --adam keras
fused``): the first training step 28-32 % faster in joint mode (16.6 s against 23.0 s at 192 px),
the steps after it as fast as with Keras' Adam (1.79 s against 1.78 s): TensorFlow already overlaps
Keras' separate update ops with the backward pass. The optimiser's variables (iterations, m and v per
variable, learning rate) are Keras Adam's own, so training states and the resume path are
unchanged, and results agree with keras.optimizers.Adam to float32 rounding (tests/test_optimizer.py). Anything the fused kernel does not cover (another Keras
backend, sparse gradients, AMSGrad) goes through Keras' own update.
"""
from __future__ import annotations

import keras
import tensorflow as tf


class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam whose per-variable update is one ``ResourceApplyAdam`` (TensorFlow backend).

    Shapes: any dense float variable; ``gradient`` of the variable's shape. Works inside
    ``tf.function`` and under tf.distribute (``Strategy.extended.update`` hands each replica's copy).
    """

    def update_step(self, gradient, variable, learning_rate):  # noqa: D102 (see the class docstring)
        if (keras.backend.backend() != "tensorflow" or self.amsgrad or isinstance(gradient, tf.IndexedSlices)
                or not hasattr(variable, "handle")):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle, v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))
