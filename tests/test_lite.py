"""lite: the exported model as predict runs it, model.tflite in the LiteRT interpreter, without TensorFlow."""

import json
import os

import numpy as np
import pytest

from stages.lib import lite


@pytest.fixture(scope="module")
def tflite(tmp_path_factory, tf):
    """A tiny model's serving signature, saved and converted as export does; with the signature's answers."""
    from stages.lib import serving
    from stages.lib.model import MLP

    module = serving.ServingModule(MLP([8], seed=1, deskew=True))
    folder = tmp_path_factory.mktemp("lite") / "saved_model"
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    (folder / lite.TFLITE_NAME).write_bytes(serving.to_tflite(folder))
    images = np.random.default_rng(2).integers(0, 256, size=(70, 28, 28), dtype=np.uint8)
    reference = module.serve(tf.constant(images))["probabilities"].numpy()
    return folder, images, reference


def test_lite_model_gives_the_signatures_probabilities_in_any_batch_size(tflite):
    folder, images, reference = tflite
    model = lite.LiteModel(folder / lite.TFLITE_NAME)
    for batch_size in (1, 32, 1000):
        np.testing.assert_allclose(model.probabilities(images, batch_size), reference, rtol=0, atol=1e-5)
    assert model.probabilities(images[:0]).shape == (0, 10)


def test_settings_are_read_from_predict_json_or_empty(tmp_path):
    assert lite.settings(tmp_path) == {}
    (tmp_path / lite.SETTINGS_NAME).write_text(json.dumps({"unsure_below": 0.7}))
    assert lite.settings(tmp_path) == {"unsure_below": 0.7}


def test_quiet_stderr_silences_file_descriptor_2_and_puts_it_back(capfd):
    with lite.quiet_stderr():
        os.write(2, b"hidden\n")
    os.write(2, b"shown\n")
    assert capfd.readouterr().err == "shown\n"
