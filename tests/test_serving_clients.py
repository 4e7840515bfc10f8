"""The exported SavedModel works with the tools people serve it with: saved_model_cli, TFLite, Keras 3."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from stages.lib.model import MLP
from stages.lib.serving import ServingModule


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "deskew"])
def exported(tmp_path_factory, request):
    """A small trained-looking SavedModel (random weights are enough for equality checks) and test images."""
    folder = tmp_path_factory.mktemp("export") / "saved_model"
    module = ServingModule(MLP([64, 32], seed=3, deskew=request.param))
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    images = np.random.default_rng(0).integers(0, 256, size=(1200, 28, 28), dtype=np.uint8)
    reference = tf.saved_model.load(str(folder)).signatures["serving_default"](images=tf.constant(images))
    return folder, images, {k: v.numpy() for k, v in reference.items()}


def _saved_model_cli() -> list[str]:
    found = shutil.which("saved_model_cli")
    return [found] if found else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def test_saved_model_cli_show_lists_the_signature(exported):
    folder, _, _ = exported
    out = subprocess.run(
        _saved_model_cli() + ["show", "--dir", str(folder), "--all"], capture_output=True, text=True, check=True
    ).stdout
    assert "signature_def['serving_default']" in out
    assert "inputs['images']" in out and "DT_UINT8" in out and "(-1, 28, 28)" in out
    assert "outputs['class_ids']" in out and "DT_INT64" in out
    assert "outputs['probabilities']" in out and "(-1, 10)" in out


def test_saved_model_cli_run_on_npy(exported, tmp_path):
    folder, images, reference = exported
    np.save(tmp_path / "images.npy", images[:50])
    subprocess.run(
        _saved_model_cli()
        + [
            "run",
            "--dir",
            str(folder),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"images={tmp_path / 'images.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "class_ids.npy"), reference["class_ids"][:50])
    np.testing.assert_allclose(
        np.load(tmp_path / "out" / "probabilities.npy"), reference["probabilities"][:50], atol=1e-6
    )


def test_tflite_conversion_gives_the_same_predictions(exported):
    folder, images, reference = exported
    tflite_model = tf.lite.TFLiteConverter.from_saved_model(str(folder)).convert()
    interpreter = tf.lite.Interpreter(model_content=tflite_model)
    runner = interpreter.get_signature_runner("serving_default")
    predicted = np.concatenate([runner(images=images[i : i + 100])["class_ids"] for i in range(0, len(images), 100)])
    assert len(predicted) >= 1000
    np.testing.assert_array_equal(predicted, reference["class_ids"])


def test_keras3_tfsmlayer_loads_it(exported):
    import keras

    folder, images, reference = exported
    layer = keras.layers.TFSMLayer(str(folder), call_endpoint="serving_default")
    outputs = layer(tf.constant(images[:100]))
    np.testing.assert_array_equal(np.asarray(outputs["class_ids"]), reference["class_ids"][:100])


def test_tf_serving_rest_request_shape(exported):
    """The README's TF Serving request body ({"instances": [[[...28 ints...] x 28]]}) matches the signature."""
    folder, images, reference = exported
    body = json.loads(json.dumps({"instances": images[:2].tolist()}))
    batch = tf.constant(np.array(body["instances"], dtype=np.uint8))
    result = tf.saved_model.load(str(folder)).signatures["serving_default"](images=batch)
    np.testing.assert_array_equal(result["class_ids"].numpy(), reference["class_ids"][:2])
