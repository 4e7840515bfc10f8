"""The exported serving signature: uint8 images in, probabilities and class ids out, nothing else accepted."""

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tf")


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "deskew"])
def exported(tmp_path_factory, tf, request):
    """A tiny MLP with non-zero biases, saved with the serving signature and loaded back."""
    from stages.lib.model import MLP
    from stages.lib.serving import ServingModule

    model = MLP([16], seed=3, deskew=request.param)
    for b in model.biases:
        b.assign(tf.random.stateless_normal(b.shape, seed=[1, b.shape[0]]) * 0.1)
    module = ServingModule(model)
    folder = tmp_path_factory.mktemp("saved_model")
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(str(folder))
    return model, loaded, folder


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def test_signature_shapes_and_dtypes(exported, tf):
    _, loaded, _ = exported
    assert list(loaded.signatures) == ["serving_default"]
    serve = loaded.signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.uint8
    assert inputs["images"].shape.as_list() == [None, 28, 28]
    outputs = serve.structured_outputs
    assert set(outputs) == {"probabilities", "class_ids"}
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, 10]
    assert outputs["class_ids"].dtype == tf.int64
    assert outputs["class_ids"].shape.as_list() == [None]


@pytest.mark.parametrize("n", [1, 13])
def test_signature_reproduces_the_model(exported, tf, n):
    from stages.lib.preprocessing import to_model_input

    model, loaded, _ = exported
    images = _images(n, seed=n)
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    probabilities, class_ids = out["probabilities"].numpy(), out["class_ids"].numpy()
    logits = model(to_model_input(images, deskew=model.deskew)).numpy()
    assert probabilities.shape == (n, 10) and probabilities.dtype == np.float32
    assert class_ids.shape == (n,) and class_ids.dtype == np.int64
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-5)
    assert probabilities.min() >= 0.0
    np.testing.assert_array_equal(class_ids, logits.argmax(axis=1))
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_signature_on_an_empty_batch(exported, tf):
    _, loaded, _ = exported
    out = loaded.signatures["serving_default"](images=tf.zeros([0, 28, 28], tf.uint8))
    assert out["probabilities"].shape == (0, 10) and out["class_ids"].shape == (0,)


@pytest.mark.parametrize(
    "make_input",
    [
        lambda tf: tf.zeros([2, 28, 28], tf.float32),  # float pixels
        lambda tf: tf.zeros([2, 28, 28], tf.int32),
        lambda tf: tf.zeros([2, 32, 32], tf.uint8),  # wrong size (2048 pixels, not a multiple of 784)
        lambda tf: tf.zeros([2, 784], tf.uint8),
        lambda tf: tf.zeros([28, 28], tf.uint8),
        lambda tf: tf.zeros([1, 56, 56], tf.uint8),
        lambda tf: tf.zeros([2, 28, 28, 1], tf.uint8),
    ],
    ids=["float32", "int32", "32x32", "flat-784", "unbatched", "56x56", "channel-axis"],
)
def test_signature_refuses_other_inputs(exported, tf, make_input):
    _, loaded, _ = exported
    serve = loaded.signatures["serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serve(images=make_input(tf))


@pytest.mark.parametrize("shape", [[2, 784], [28, 28], [1, 56, 56]])
def test_loaded_serve_function_refuses_other_shapes(exported, tf, shape):
    """The restored tf.function (as opposed to the signature) does check its input_signature."""
    _, loaded, _ = exported
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        loaded.serve(tf.zeros(shape, tf.uint8))


def test_serving_test_accuracy_on_prepared_data(exported, tmp_path, tf):
    """stages.lib.serving.score_test_split (what export runs in a fresh process) scores the prepared test split."""
    import json

    from conftest import make_split

    from stages.lib import records, serving
    from stages.lib.model import predict_logits

    model, _, folder = exported
    images, labels = make_split(37, seed=4)
    meta = {
        "schema_version": records.SCHEMA_VERSION,
        "compression": "none",
        "splits": {"test": records.write_split(tmp_path, "test", images, labels, 10, "none")},
    }
    (tmp_path / records.META_FILE).write_text(json.dumps(meta))
    result = serving.score_test_split(str(folder), str(tmp_path), batch_size=8)
    predicted = predict_logits(model, images.reshape(-1, 784)).argmax(axis=1)
    assert result["count"] == 37
    assert result["errors"] == int(np.sum(predicted != labels))
    assert result["accuracy"] == round(float(np.mean(predicted == labels)), 6)
