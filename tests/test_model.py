"""The raw-variable MLP: shapes, Glorot initialisation, seeding, dropout, max-norm, preprocessing."""

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tf")


def _mlp(hidden, seed=0):
    from stages.lib.model import MLP

    return MLP(hidden, seed=seed)


@pytest.mark.parametrize("hidden", [[32], [64, 16], [20, 30, 40]])
def test_one_weight_and_one_bias_per_layer(tf, hidden):
    model = _mlp(hidden)
    sizes = [784, *hidden, 10]
    assert len(model.weights) == len(model.biases) == len(hidden) + 1
    for layer, (w, b) in enumerate(zip(model.weights, model.biases)):
        assert isinstance(w, tf.Variable) and isinstance(b, tf.Variable)
        assert w.shape == (sizes[layer], sizes[layer + 1])
        assert b.shape == (sizes[layer + 1],)
        assert w.dtype == tf.float32 and b.dtype == tf.float32
        assert not np.any(b.numpy())
    assert len(model.trainable_variables) == 2 * (len(hidden) + 1)


def test_glorot_uniform_statistics():
    model = _mlp([256, 128])
    sizes = [784, 256, 128, 10]
    for layer, w in enumerate(model.weights):
        values = w.numpy()
        fan_in, fan_out = sizes[layer], sizes[layer + 1]
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        assert values.min() >= -limit and values.max() <= limit
        # The range is used: extremes near both ends.
        assert values.min() < -0.95 * limit and values.max() > 0.95 * limit
        std = limit / np.sqrt(3.0)
        n = values.size
        assert abs(values.mean()) < 5 * std / np.sqrt(n)  # mean 0 within 5 standard errors
        assert values.std() == pytest.approx(std, rel=0.04 if n > 2000 else 0.1)


def test_same_seed_same_weights_different_seed_different():
    a, b, c = _mlp([32, 16], seed=7), _mlp([32, 16], seed=7), _mlp([32, 16], seed=8)
    for wa, wb, wc in zip(a.weights, b.weights, c.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
        assert not np.allclose(wa.numpy(), wc.numpy())
    # layers are seeded apart: no two layers share their leading values
    firsts = [w.numpy().ravel()[:10] for w in a.weights]
    assert not np.allclose(firsts[0] / np.abs(firsts[0]).max(), firsts[1] / np.abs(firsts[1]).max())


def test_logits_shape_and_inference_path(tf):
    from stages.lib.model import predict_logits
    from stages.lib.preprocessing import to_model_input

    model = _mlp([32])
    images = np.random.default_rng(0).integers(0, 256, size=(7, 784), dtype=np.uint8)
    x = to_model_input(images)
    assert x.dtype == tf.float32 and x.shape == (7, 784)
    assert float(tf.reduce_max(x)) <= 1.0 and float(tf.reduce_min(x)) >= 0.0
    np.testing.assert_allclose(x.numpy(), images / 255.0, rtol=1e-6)
    logits = model(x)
    assert logits.shape == (7, 10) and logits.dtype == tf.float32
    np.testing.assert_allclose(
        model.logits_for_images(tf.constant(images)).numpy(), logits.numpy(), rtol=1e-5, atol=1e-6
    )
    batched = predict_logits(model, images, batch_size=3)
    assert batched.shape == (7, 10)
    np.testing.assert_allclose(batched, logits.numpy(), rtol=1e-5, atol=1e-6)
    # to_model_input also takes [B, 28, 28]
    np.testing.assert_array_equal(to_model_input(images.reshape(-1, 28, 28)).numpy(), x.numpy())


def test_dropout_only_with_rates_and_a_seed(tf):
    model = _mlp([64, 64])
    x = tf.random.stateless_uniform([16, 784], seed=[3, 4])
    plain = model(x).numpy()
    np.testing.assert_array_equal(model(x).numpy(), plain)  # evaluation path is deterministic
    seed = tf.constant([1, 2], tf.int64)
    np.testing.assert_array_equal(model(x, 0.5, 0.5).numpy(), plain)  # rates without a seed: no dropout
    np.testing.assert_array_equal(model(x, 0.0, 0.0, seed=seed).numpy(), plain)  # a seed without rates
    dropped = model(x, 0.5, 0.5, seed=seed).numpy()
    assert not np.allclose(dropped, plain)
    np.testing.assert_array_equal(model(x, 0.5, 0.5, seed=seed).numpy(), dropped)  # same seed, same mask
    assert not np.allclose(model(x, 0.5, 0.5, seed=tf.constant([1, 3], tf.int64)).numpy(), dropped)
    assert not np.allclose(model(x, 0.5, 0.0, seed=seed).numpy(), plain)  # input dropout alone
    assert not np.allclose(model(x, 0.0, 0.5, seed=seed).numpy(), plain)  # hidden dropout alone


@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf", "xla"])
def test_dropout_is_inverted(tf, jit_compile):
    """Both random-number algorithms (philox in TF kernels, threefry under XLA) drop at the given rate."""
    from stages.lib.model import RNG_TF, RNG_XLA, dropout

    alg = RNG_XLA if jit_compile else RNG_TF
    x = tf.ones([200, 500])
    masked = tf.function(lambda: dropout(x, 0.25, tf.constant([5, 6], tf.int64), alg), jit_compile=jit_compile)
    y = masked().numpy()
    np.testing.assert_array_equal(masked().numpy(), y)  # seeded: the same mask again
    kept = y != 0
    assert kept.mean() == pytest.approx(0.75, abs=0.01)
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert y.mean() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("max_norm", [0.5, 1.0])
def test_apply_max_norm_bounds_every_hidden_column(tf, max_norm):
    model = _mlp([40, 30])
    for w in model.weights:
        w.assign(w * 10.0)  # columns far above the cap
    last_before = model.weights[-1].numpy().copy()
    small = np.full([40], 1e-3, np.float32)  # one column below the cap must stay as it is
    model.weights[1][:, 0].assign(small)
    model.apply_max_norm(max_norm)
    for w in model.weights[:-1]:
        norms = np.linalg.norm(w.numpy(), axis=0)
        assert norms.max() <= max_norm * (1 + 1e-5)
    np.testing.assert_allclose(np.linalg.norm(model.weights[0].numpy(), axis=0), max_norm, rtol=1e-5)
    np.testing.assert_array_equal(model.weights[1].numpy()[:, 0], small)
    np.testing.assert_array_equal(model.weights[-1].numpy(), last_before)  # the logits layer is not capped


@pytest.mark.parametrize("deskew", [False, True])
def test_architecture_and_restore(tmp_path, tf, deskew):
    from stages.lib import model as mlp

    model = mlp.MLP([24, 12], seed=3, deskew=deskew)
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    mlp.save_architecture(model, tmp_path)
    restored = mlp.restore(tmp_path)
    assert restored.hidden_units == [24, 12] and restored.deskew is deskew
    for a, b in zip(model.trainable_variables, restored.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_model_json_without_deskew_restores_a_plain_model(tmp_path, tf):
    """model.json files written before the deskew option existed still load, as not deskewing."""
    import json

    from stages.lib import model as mlp

    model = _mlp([8], seed=1)
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    (tmp_path / "model.json").write_text(json.dumps({"input_size": 784, "hidden_units": [8], "num_classes": 10}))
    assert mlp.restore(tmp_path).deskew is False


def test_a_deskewing_model_deskews_on_every_inference_path(tf):
    from stages.lib.model import MLP, predict_logits
    from stages.lib.preprocessing import to_model_input

    images = np.random.default_rng(2).integers(0, 256, size=(5, 784), dtype=np.uint8) * (
        np.random.default_rng(3).random((5, 784)) < 0.15
    ).astype(np.uint8)
    model = MLP([32], seed=4, deskew=True)
    expected = model(to_model_input(images, deskew=True)).numpy()
    plain = model(to_model_input(images)).numpy()
    assert np.abs(expected - plain).max() > 1e-3  # deskewing these images changes the logits
    np.testing.assert_allclose(model(model.inputs(images)).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.logits_for_images(tf.constant(images)).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(predict_logits(model, images, batch_size=2), expected, rtol=1e-5, atol=1e-5)
