"""The custom training loop on tiny synthetic data: it learns, it is reproducible, it catches divergence,
and n steps in one tf.function call equal n calls of one step."""

import numpy as np
import pytest
from conftest import TINY_TRAIN, make_params, make_trainer, tiny_data

from stages.lib import cli

pytestmark = pytest.mark.usefixtures("tf")


@pytest.fixture(scope="module")
def data():
    return tiny_data(512, 128)


def _run(data, seed_everything=True, **overrides):
    import tensorflow as tf

    from stages.lib import training

    p = make_params(**{**TINY_TRAIN, **overrides})
    if seed_everything:  # as stages/train.py does
        tf.keras.utils.set_random_seed(p.train.seed)
    records = []
    result = training.run(*data, p.model, p.train, on_epoch=records.append)
    return p, result, records


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager-graph", "xla"])
def test_run_learns_the_synthetic_classes(data, jit_compile):
    from stages.lib import training

    p, result, records = _run(data, train__jit_compile=jit_compile)
    history = result.history
    assert records == history
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["val_accuracy"] >= 0.95
    assert max(r["val_accuracy"] for r in history) == result.best_val_accuracy
    assert history[result.best_epoch - 1]["val_accuracy"] == result.best_val_accuracy
    for r in history:
        assert set(r) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"}
        assert 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["loss"])
        assert r["learning_rate"] == pytest.approx(p.train.learning_rate)
    # The returned model is the best epoch's.
    _, accuracy = training.evaluate_arrays(result.model, *data[1])
    assert accuracy == result.best_val_accuracy


def test_run_keeps_the_best_epoch_not_the_last(data):
    """With a schedule that wrecks the last epochs, the returned weights are those of the best epoch."""
    from stages.lib import training

    # sgd at a high rate with warm-up: epoch 1 learns, later epochs blow up towards chance level
    p, result, _ = _run(data, train__optimizer="sgd", train__learning_rate=5.0, train__epochs=3, train__warmup_epochs=1)
    accuracies = [r["val_accuracy"] for r in result.history]
    _, accuracy = training.evaluate_arrays(result.model, *data[1])
    assert accuracy == max(accuracies) == result.best_val_accuracy
    assert result.best_epoch == 1 + int(np.argmax(accuracies))


def test_schedule_and_regularisers_run(data):
    """Every train.* option switched on at once: cosine with warm-up ends at lr 0, and it still learns."""
    _, result, _ = _run(
        data,
        train__epochs=4,
        train__lr_schedule="cosine",
        train__warmup_epochs=1,
        train__learning_rate=0.003,
        train__label_smoothing=0.1,
        train__dropout_input=0.1,
        train__dropout_hidden=0.2,
        train__max_norm=3.0,
        train__augment_shift=1,
        train__weight_decay=0.01,
        train__jit_compile=False,
    )
    assert result.history[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-9)
    assert result.history[0]["learning_rate"] == pytest.approx(0.003 * 0.5 * (1 + np.cos(0)), rel=1e-5)
    assert result.best_val_accuracy >= 0.9
    for w in result.model.weights[:-1]:
        assert np.linalg.norm(w.numpy(), axis=0).max() <= 3.0 * (1 + 1e-5)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager-graph", "xla"])
def test_same_params_same_weights(data, deterministic_ops, jit_compile):
    overrides = dict(train__jit_compile=jit_compile, train__dropout_hidden=0.2, train__augment_shift=1, train__epochs=2)
    _, first, _ = _run(data, **overrides)
    _, second, _ = _run(data, **overrides)
    assert [r["loss"] for r in first.history] == [r["loss"] for r in second.history]
    for a, b in zip(first.model.trainable_variables, second.model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    if jit_compile:
        return  # another XLA compile buys nothing more
    # and the seed matters
    _, other, _ = _run(data, train__seed=1, **overrides)
    assert not np.array_equal(first.model.weights[0].numpy(), other.model.weights[0].numpy())


def test_enormous_learning_rate_is_reported_as_divergence(data):
    with pytest.raises(cli.UserError, match="diverged") as caught:
        _run(data, model__hidden_units=[32, 32, 32], train__learning_rate=1e6, train__jit_compile=False)
    message = str(caught.value)
    assert "train.learning_rate" in message and "epoch 1" in message


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_exploding_but_finite_loss_is_reported_as_divergence(data, optimizer):
    with pytest.raises(cli.UserError, match="diverged"):
        _run(data, train__learning_rate=1e6, train__optimizer=optimizer, train__jit_compile=False)


@pytest.mark.parametrize("jit_compile, atol", [(False, 1e-6), (True, 1e-5)], ids=["eager-graph", "xla"])
def test_multi_step_call_equals_single_steps(data, jit_compile, atol):
    """steps(n) in one call must do exactly what n calls of steps(1) do: same batches, same per-step
    randomness (dropout, shifts: seeded by the step counter, which must not be frozen at trace time)."""
    import tensorflow as tf

    p = make_params(
        **{
            **TINY_TRAIN,
            "train__jit_compile": jit_compile,
            "train__dropout_input": 0.1,
            "train__dropout_hidden": 0.2,
            "train__augment_shift": 2,
            "train__label_smoothing": 0.1,
            "train__max_norm": 2.0,
            "train__lr_schedule": "cosine",
        }
    )
    n = 6
    together, apart = make_trainer(p, data[0], 32), make_trainer(p, data[0], 32)
    losses_together, correct_together = together.steps(tf.constant(n, tf.int32))
    losses_apart, correct_apart = [], 0
    for _ in range(n):
        losses, correct = apart.steps(tf.constant(1, tf.int32))
        losses_apart.append(losses.numpy())
        correct_apart += int(correct)
    assert int(together.optimizer.iterations) == int(apart.optimizer.iterations) == n
    assert losses_together.shape == (n,)
    np.testing.assert_allclose(losses_together.numpy(), np.concatenate(losses_apart), rtol=0, atol=atol)
    assert abs(int(correct_together) - correct_apart) <= (0 if not jit_compile else 1)
    for a, b in zip(together.model.trainable_variables, apart.model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=atol)
    if jit_compile:
        return  # each trainer costs an XLA compile: the split below is covered without it
    # a third trainer taking 3 + 3 steps lands on the same weights as well
    third = make_trainer(p, data[0], 32)
    third.steps(tf.constant(3, tf.int32))
    third.steps(tf.constant(3, tf.int32))
    for a, b in zip(together.model.trainable_variables, third.model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=atol)


def test_batches_are_full_and_each_epoch_a_fresh_permutation():
    from stages.lib import training

    n, batch_size = 100, 32
    labels = np.arange(n, dtype=np.int64)
    images = np.zeros([n, 784], np.uint8)
    iterator = iter(training.batches(images, labels, batch_size, seed=0))
    epochs = []
    for _ in range(2):
        seen = []
        for _ in range(n // batch_size):
            batch_images, batch_labels = next(iterator)
            assert batch_images.shape == (batch_size, 784) and batch_images.dtype == np.uint8
            seen.extend(batch_labels.numpy().tolist())
        assert len(set(seen)) == len(seen) == 96  # no repeats within an epoch; the partial batch is dropped
        epochs.append(seen)
    assert epochs[0] != epochs[1]
    again = iter(training.batches(images, labels, batch_size, seed=0))
    assert next(again)[1].numpy().tolist() == epochs[0][:batch_size]


def test_shift_images_moves_pixels(tf):
    from stages.lib import training

    image = np.zeros([28, 28], np.float32)
    image[10:14, 10:14] = 1.0
    x = tf.constant(np.tile(image.reshape(1, 784), [64, 1]))
    shifted = training.shift_images(x, 2, tf.constant([0, 1], tf.int64)).numpy().reshape(-1, 28, 28)
    assert shifted.shape == (64, 28, 28)
    np.testing.assert_array_equal(shifted.sum(axis=(1, 2)), 16.0)  # nothing falls off the edge here
    rows = [np.argwhere(s)[:, 0].min() for s in shifted]
    cols = [np.argwhere(s)[:, 1].min() for s in shifted]
    assert set(rows) == set(cols) == {8, 9, 10, 11, 12}
    assert training.shift_images(x, 0, tf.constant([0, 1], tf.int64)).numpy().tolist() == x.numpy().tolist()


def test_softmax_cross_entropy_with_label_smoothing(tf):
    from stages.lib import training

    logits = tf.constant([[2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]])
    labels = tf.constant([0], tf.int64)
    log_probs = tf.nn.log_softmax(logits).numpy()[0]
    assert float(training.softmax_cross_entropy(logits, labels)) == pytest.approx(-log_probs[0], rel=1e-6)
    smoothed = -(0.9 + 0.01) * log_probs[0] - 0.01 * log_probs[1:].sum()
    assert float(training.softmax_cross_entropy(logits, labels, 0.1)) == pytest.approx(smoothed, rel=1e-6)


def test_ema_is_the_moving_average_of_the_weights(data):
    """train.ema_decay: after every step a <- d a + (1 - d) w with d = min(decay, (1 + t) / (10 + t))."""
    import tensorflow as tf

    decay = 0.9
    trainer = make_trainer(
        make_params(**{**TINY_TRAIN, "train__jit_compile": False, "train__ema_decay": decay}), data[0], 32
    )
    weights = lambda module: [v.numpy() for v in module.trainable_variables]  # noqa: E731
    expected = weights(trainer.model)
    for a, w in zip(weights(trainer.average), expected):
        np.testing.assert_array_equal(a, w)  # the average starts at the initial weights
    for t in range(1, 6):
        trainer.steps(tf.constant(1, tf.int32))
        d = min(decay, (1 + t) / (10 + t))
        expected = [d * a + (1 - d) * w for a, w in zip(expected, weights(trainer.model))]
    for a, e in zip(weights(trainer.average), expected):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-6)
    assert not np.allclose(weights(trainer.average)[0], weights(trainer.model)[0])
    assert trainer.eval_model is trainer.average


def test_run_with_ema_keeps_and_returns_the_average(data):
    from stages.lib import training

    _, plain, _ = _run(data)
    _, averaged, _ = _run(data, train__ema_decay=0.99)
    assert not np.allclose(plain.model.weights[0].numpy(), averaged.model.weights[0].numpy())
    _, accuracy = training.evaluate_arrays(averaged.model, *data[1])
    assert accuracy == averaged.best_val_accuracy
    assert averaged.history[averaged.best_epoch - 1]["val_accuracy"] == accuracy


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager-graph", "xla"])
def test_a_deskewing_model_trains_on_deskewed_images(data, jit_compile):
    """The step feeds the model through model.inputs, so training sees what evaluation and serving see;
    the moving average (the model that is kept) deskews as well."""
    import tensorflow as tf

    from stages.lib import training
    from stages.lib.model import MLP
    from stages.lib.preprocessing import to_model_input

    p = make_params(**{**TINY_TRAIN, "model__deskew": True, "train__jit_compile": jit_compile, "train__ema_decay": 0.9})
    train_x, train_y = data[0]
    model = MLP(p.model.hidden_units, seed=p.train.seed, deskew=True)
    dataset = training.batches(train_x, train_y, 32, p.train.seed)
    trainer = training.Trainer(model, p.train, 32, len(train_y) // 32, dataset)
    assert trainer.eval_model.deskew
    images, labels = train_x[:32], train_y[:32]
    deskewed = training.softmax_cross_entropy(model(to_model_input(images, deskew=True)), labels)
    plain = training.softmax_cross_entropy(model(to_model_input(images)), labels)
    assert abs(float(deskewed) - float(plain)) > 1e-3  # the two preprocessings are told apart
    loss, _ = trainer.step(tf.constant(images), tf.constant(labels), tf.constant([0, 1], tf.int64))
    assert float(loss) == pytest.approx(float(deskewed), abs=1e-5)


def _compiled_functions(trainer) -> dict:
    import tensorflow as tf

    return {name: type(f) for name, f in vars(trainer).items() if isinstance(f, tf.types.experimental.GenericFunction)}


def test_trainer_has_the_same_compiled_functions_whatever_the_replica_count(data):
    """One device and two mirrored replicas build the same compiled functions (step, gradients, update,
    steps); each path calls the ones it needs, and both train."""
    import tensorflow as tf

    from stages.lib import distribution, training
    from stages.lib.model import MLP

    p = make_params(**{**TINY_TRAIN, "train__jit_compile": False})
    train_x, train_y = data[0]
    compiled = {}
    for name, strategy in (("one", tf.distribute.get_strategy()), ("two", distribution.make_strategy("mirrored", 2))):
        dataset = training.batches(train_x, train_y, 32, p.train.seed)
        with strategy.scope():
            model = MLP(p.model.hidden_units, seed=p.train.seed)
            trainer = training.Trainer(model, p.train, 32, len(train_y) // 32, dataset, strategy)
        assert trainer.strategy.num_replicas_in_sync == {"one": 1, "two": 2}[name]
        losses, _ = trainer.steps(tf.constant(2, tf.int32))
        assert np.all(np.isfinite(losses.numpy())) and int(trainer.optimizer.iterations.numpy()) == 2
        compiled[name] = _compiled_functions(trainer)
    assert set(compiled["one"]) == {"step", "gradients", "update", "steps"}
    assert compiled["one"] == compiled["two"]


def test_run_prepares_inputs_once_as_the_step_would(data):
    """run() deskews the training and validation images once (model_inputs); the step on those inputs
    computes what it computes when it prepares uint8 images itself."""
    import tensorflow as tf

    from stages.lib import training
    from stages.lib.model import MLP

    p = make_params(**{**TINY_TRAIN, "model__deskew": True, "train__jit_compile": False})
    images, labels = data[0][0][:32], data[0][1][:32]
    model = MLP(p.model.hidden_units, seed=p.train.seed, deskew=True)
    inputs = training.model_inputs(training.input_function(model), images, batch_size=10)
    assert inputs.dtype == np.float32 and inputs.shape == (32, 784)
    np.testing.assert_allclose(inputs, model.inputs(images).numpy(), rtol=0, atol=1e-5)  # batch size: last bits
    seed = tf.constant([0, 1], tf.int64)
    results = []
    for batch in (images, inputs):
        dataset = training.batches(batch, labels, 32, p.train.seed)
        trainer = training.Trainer(MLP(p.model.hidden_units, seed=0, deskew=True), p.train, 32, 1, dataset)
        results.append(float(trainer.step(tf.constant(batch), tf.constant(labels), seed)[0]))
    assert results[0] == pytest.approx(results[1], abs=1e-5)


def test_packed_model_inputs_are_the_inputs_to_half_a_step_of_fixed_point(data):
    """model_inputs(packed=True): one uint16 tensor that unpacks to the float inputs within half a step
    of the fixed point (1 / 131070); no images give an empty tensor of the same kind."""
    import tensorflow as tf

    from stages.lib import training
    from stages.lib.model import MLP
    from stages.lib.preprocessing import PACKED_SCALE, unpack_inputs

    model = MLP([8], seed=0, deskew=True)
    prepare = training.input_function(model)
    images = data[0][0][:25]
    packed = training.model_inputs(prepare, images, batch_size=10, packed=True)
    assert isinstance(packed, tf.Tensor) and packed.dtype == tf.uint16 and packed.shape == (25, 784)
    exact = training.model_inputs(prepare, images, batch_size=10)
    error = np.abs(unpack_inputs(packed).numpy() - exact.numpy()).max()
    assert 0 < error <= 0.5 / PACKED_SCALE + 1e-7
    for is_packed, dtype in ((True, tf.uint16), (False, tf.float32)):
        empty = training.model_inputs(prepare, images[:0], packed=is_packed)
        assert empty.dtype == dtype and empty.shape == (0, 784)


def test_patience_stops_when_validation_stops_improving(data):
    """With a learning rate too small to move any prediction, validation accuracy never improves after
    epoch 1: patience 1 stops after epoch 2 and keeps epoch 1; patience 0 runs every epoch."""
    _, result, records = _run(data, train__epochs=6, train__patience=1, train__learning_rate=1e-12)
    assert [r["epoch"] for r in records] == [1, 2]
    assert result.best_epoch == 1
    _, result, records = _run(data, train__epochs=3, train__patience=0, train__learning_rate=1e-12)
    assert [r["epoch"] for r in records] == [1, 2, 3]
