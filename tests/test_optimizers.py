"""The hand-written optimizers against keras.optimizers, the tf.Variable step counter, the LR schedule."""

import math

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tf")

SHAPES = [(5, 3), (3,), (4, 2, 2)]
STEPS = 7


def _initial():
    rng = np.random.default_rng(0)
    return [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]


def _gradients():
    rng = np.random.default_rng(1)
    return [[rng.normal(scale=0.5, size=shape).astype(np.float32) for shape in SHAPES] for _ in range(STEPS)]


def _run_ours(tf, make_optimizer, learning_rate):
    variables = [tf.Variable(v) for v in _initial()]
    optimizer = make_optimizer(variables)
    history = []
    for grads in _gradients():
        optimizer.apply([tf.constant(g) for g in grads], variables, learning_rate)
        history.append([v.numpy().copy() for v in variables])
    return optimizer, history


def _run_keras(tf, keras_optimizer):
    variables = [tf.Variable(v) for v in _initial()]
    history = []
    for grads in _gradients():
        keras_optimizer.apply_gradients(zip([tf.constant(g) for g in grads], variables))
        history.append([v.numpy().copy() for v in variables])
    return history


def _assert_histories_match(ours, theirs, atol=1e-6):
    assert len(ours) == len(theirs) == STEPS
    for step, (a, b) in enumerate(zip(ours, theirs), start=1):
        for index, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=f"step {step}, variable {index}")
    # and the updates really moved the variables
    assert not np.allclose(ours[-1][0], _initial()[0])


@pytest.mark.parametrize("lr", [1e-3, 0.05])
def test_adam_matches_keras(tf, lr):
    import keras

    from stages.lib import optimizers

    _, ours = _run_ours(tf, lambda vs: optimizers.Adam(vs), lr)
    theirs = _run_keras(tf, keras.optimizers.Adam(learning_rate=lr))
    _assert_histories_match(ours, theirs)


@pytest.mark.parametrize("weight_decay", [0.01, 0.1])
def test_adam_weight_decay_matches_keras_adamw(tf, weight_decay):
    import keras

    from stages.lib import optimizers

    lr = 0.01
    _, ours = _run_ours(tf, lambda vs: optimizers.Adam(vs, weight_decay=weight_decay), lr)
    theirs = _run_keras(tf, keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay))
    _assert_histories_match(ours, theirs)
    # and the decay made a difference
    _, plain = _run_ours(tf, lambda vs: optimizers.Adam(vs), lr)
    assert not np.allclose(ours[-1][0], plain[-1][0], atol=1e-5)


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.5, True), (0.9, True)])
def test_sgd_matches_keras(tf, momentum, nesterov):
    import keras

    from stages.lib import optimizers

    lr = 0.05
    _, ours = _run_ours(tf, lambda vs: optimizers.SGD(vs, momentum=momentum, nesterov=nesterov), lr)
    theirs = _run_keras(tf, keras.optimizers.SGD(learning_rate=lr, momentum=momentum, nesterov=nesterov))
    _assert_histories_match(ours, theirs)


def test_sgd_weight_decay_matches_keras(tf):
    import keras

    from stages.lib import optimizers

    lr, wd = 0.05, 0.1
    _, ours = _run_ours(tf, lambda vs: optimizers.SGD(vs, momentum=0.9, weight_decay=wd), lr)
    theirs = _run_keras(tf, keras.optimizers.SGD(learning_rate=lr, momentum=0.9, weight_decay=wd))
    _assert_histories_match(ours, theirs)


def test_build_from_params(tf):
    from conftest import PLAIN_TRAIN, make_params

    from stages.lib import optimizers

    variables = [tf.Variable(v) for v in _initial()]
    adam = optimizers.build(make_params(**{**PLAIN_TRAIN, "train__weight_decay": 0.01}).train, variables)
    assert isinstance(adam, optimizers.Adam) and adam.weight_decay == 0.01
    sgd = optimizers.build(
        make_params(
            **{**PLAIN_TRAIN, "train__optimizer": "sgd", "train__momentum": 0.9, "train__nesterov": True}
        ).train,
        variables,
    )
    assert isinstance(sgd, optimizers.SGD) and sgd.momentum == 0.9 and sgd.nesterov


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_step_counter_advances_inside_tf_function(tf, kind):
    """A Python counter would be frozen at trace time; the tf.Variable must advance on every call."""
    from stages.lib import optimizers

    def make(vs):
        return optimizers.Adam(vs) if kind == "adam" else optimizers.SGD(vs, momentum=0.9)

    eager_optimizer, eager = _run_ours(tf, make, 0.01)

    variables = [tf.Variable(v) for v in _initial()]
    optimizer = make(variables)
    assert isinstance(optimizer.iterations, tf.Variable)
    assert optimizer.iterations.dtype == tf.int64

    @tf.function
    def apply(grads, learning_rate):
        optimizer.apply(grads, variables, learning_rate)

    for step, grads in enumerate(_gradients(), start=1):
        apply([tf.constant(g) for g in grads], tf.constant(0.01))
        assert int(optimizer.iterations) == step
        for x, y in zip(variables, eager[step - 1]):
            np.testing.assert_allclose(x.numpy(), y, rtol=0, atol=1e-6)
    assert apply.experimental_get_tracing_count() == 1  # one trace, every step still distinct
    assert int(eager_optimizer.iterations) == STEPS


def test_optimizer_state_is_checkpointed(tmp_path, tf):
    from stages.lib import optimizers

    optimizer, _ = _run_ours(tf, lambda vs: optimizers.Adam(vs), 0.01)
    tf.train.Checkpoint(optimizer=optimizer).write(str(tmp_path / "ckpt"))
    fresh = optimizers.Adam([tf.Variable(v) for v in _initial()])
    tf.train.Checkpoint(optimizer=fresh).read(str(tmp_path / "ckpt")).assert_consumed()
    assert int(fresh.iterations) == STEPS
    for a, b in zip(optimizer.m + optimizer.v, fresh.m + fresh.v):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- learning-rate schedule ----------------------------------------------------------------------


def _lr(step, total=1000, warmup=0, peak=0.1, schedule="constant"):
    from stages.lib import optimizers

    return float(optimizers.learning_rate(step, total, warmup, peak, schedule))


@pytest.mark.parametrize("step", [1, 2, 500, 1000])
def test_constant_schedule(step):
    assert _lr(step) == pytest.approx(0.1, rel=1e-6)


def test_warmup_schedule():
    assert _lr(0, warmup=100) == 0.0
    assert _lr(1, warmup=100) == pytest.approx(0.001, rel=1e-5)
    assert _lr(50, warmup=100) == pytest.approx(0.05, rel=1e-5)
    assert _lr(100, warmup=100) == pytest.approx(0.1, rel=1e-6)
    assert _lr(700, warmup=100) == pytest.approx(0.1, rel=1e-6)
    lrs = [_lr(s, warmup=100) for s in range(1, 101)]
    assert all(a < b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("warmup", [0, 200])
def test_cosine_schedule(warmup):
    total = 1000
    peak = 0.1
    if warmup:
        assert _lr(warmup // 2, total, warmup, peak, "cosine") == pytest.approx(peak / 2, rel=1e-5)
    assert _lr(warmup, total, warmup, peak, "cosine") == pytest.approx(peak, rel=1e-6)
    middle = warmup + (total - warmup) // 2
    assert _lr(middle, total, warmup, peak, "cosine") == pytest.approx(peak / 2, rel=1e-5)
    quarter = warmup + (total - warmup) // 4
    assert _lr(quarter, total, warmup, peak, "cosine") == pytest.approx(
        peak * (1 + math.cos(math.pi / 4)) / 2, rel=1e-5
    )
    assert _lr(total, total, warmup, peak, "cosine") == pytest.approx(0.0, abs=1e-8)
    assert _lr(total - 1, total, warmup, peak, "cosine") < peak * 1e-4
    lrs = [_lr(s, total, warmup, peak, "cosine") for s in range(warmup, total + 1, 10)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_schedule_accepts_a_tensor_step(tf):
    from stages.lib import optimizers

    step = tf.Variable(250, dtype=tf.int64)
    value = optimizers.learning_rate(step, 1000, 0, 0.1, "cosine")
    assert value.dtype == tf.float32
    assert float(value) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-5)
