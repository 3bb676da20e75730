"""optimizer.FusedAdam against keras.optimizers.Adam: same updates, same state."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_frcnn_cryo.optimizer import FusedAdam

SHAPES = [(3, 3, 4, 8), (8,), (5, 7)]


def _train(opt_class, steps: int = 6, amsgrad: bool = False):
    """Variables and optimiser after ``steps`` compiled updates with a rate change half-way."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
    grads = [[tf.constant(rng.normal(size=s).astype("float32") * (k + 1)) for s in SHAPES] for k in range(steps)]
    opt = opt_class(learning_rate=1e-2, beta_1=0.9, beta_2=0.999, amsgrad=amsgrad)
    opt.build(variables)

    @tf.function(autograph=False)
    def step(gs):
        opt.apply_gradients(zip(gs, variables))

    for k, gs in enumerate(grads):
        if k == steps // 2:
            opt.learning_rate = 3e-3     # the way Trainer.set_learning_rate changes it
        step(gs)
    return variables, opt


@pytest.mark.parametrize("amsgrad", [False, True])
def test_fused_adam_matches_keras_adam(amsgrad):
    ours, opt = _train(FusedAdam, amsgrad=amsgrad)
    ref, ref_opt = _train(keras.optimizers.Adam, amsgrad=amsgrad)
    start = np.random.default_rng(0).normal(size=SHAPES[0]).astype("float32")
    assert np.max(np.abs(np.asarray(ours[0]) - start)) > 1e-2        # the weights did move
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # same state variables in the same order (training states save and restore them by position)
    assert [v.shape for v in opt.variables] == [v.shape for v in ref_opt.variables]
    # the kernel forms 1 - beta2 in float32 (1 - 0.99900001 = 0.00099999), Keras in float64 (0.001):
    # v differs by about 1e-5 relative, a rounding of beta2 and not another formula
    for a, b in zip(opt.variables, ref_opt.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=5e-5, atol=1e-6)
    assert int(opt.iterations) == 6


def test_trainer_uses_the_fused_adam_with_the_configs_values():
    from types import SimpleNamespace

    from conftest import toy_config
    from keras_frcnn_cryo.train import Trainer
    opt = Trainer._adam(SimpleNamespace(cfg=toy_config(learning_rate=3e-5, adam_beta_1=0.8)))
    assert isinstance(opt, FusedAdam)
    assert (float(opt.learning_rate), opt.beta_1, opt.beta_2) == (pytest.approx(3e-5), 0.8, 0.999)
