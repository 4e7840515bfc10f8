"""serving: the exported signature (uint8 images in, probabilities and class ids out, nothing else accepted),
the fresh-process scorer export runs, and the tools that consume the SavedModel: our `predict` command,
saved_model_cli, TFLite, Keras 3, and the TF Serving REST request of docs/serving.md."""

import json
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO, drawing, make_split

pytestmark = pytest.mark.usefixtures("tf")


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "deskew"])
def exported(tmp_path_factory, tf, request):
    """A tiny MLP with non-zero biases (random weights are enough for equality checks), saved with the serving
    signature and loaded back; with 1,200 test images and the loaded signature's outputs on them."""
    from stages.lib.model import MLP
    from stages.lib.serving import ServingModule

    model = MLP([16], seed=3, deskew=request.param)
    for b in model.biases:
        b.assign(tf.random.stateless_normal(b.shape, seed=[1, b.shape[0]]) * 0.1)
    module = ServingModule(model)
    folder = tmp_path_factory.mktemp("export") / "saved_model"
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(str(folder))
    images = _images(1200)
    reference = loaded.signatures["serving_default"](images=tf.constant(images))
    return SimpleNamespace(
        model=model,
        loaded=loaded,
        folder=folder,
        images=images,
        reference={k: v.numpy() for k, v in reference.items()},
    )


# --- the signature ---------------------------------------------------------------------------------


def test_signature_shapes_and_dtypes(exported, tf):
    loaded = exported.loaded
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

    model, loaded = exported.model, exported.loaded
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
    loaded = exported.loaded
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
    loaded = exported.loaded
    serve = loaded.signatures["serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serve(images=make_input(tf))


@pytest.mark.parametrize("shape", [[2, 784], [28, 28], [1, 56, 56]])
def test_loaded_serve_function_refuses_other_shapes(exported, tf, shape):
    """The restored tf.function (as opposed to the signature) does check its input_signature."""
    loaded = exported.loaded
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        loaded.serve(tf.zeros(shape, tf.uint8))


def test_serving_test_accuracy_on_prepared_data(exported, tmp_path, tf):
    """stages.lib.serving.score_test_split (what export runs in a fresh process) scores the prepared test split."""
    from stages.lib import records, serving
    from stages.lib.model import predict_logits

    model, folder = exported.model, exported.folder
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


# --- the tools people serve it with ------------------------------------------------------------------


def _saved_model_cli() -> list[str]:
    found = shutil.which("saved_model_cli")
    return [found] if found else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def test_saved_model_cli_show_lists_the_signature(exported):
    folder = exported.folder
    out = subprocess.run(
        _saved_model_cli() + ["show", "--dir", str(folder), "--all"], capture_output=True, text=True, check=True
    ).stdout
    assert "signature_def['serving_default']" in out
    assert "inputs['images']" in out and "DT_UINT8" in out and "(-1, 28, 28)" in out
    assert "outputs['class_ids']" in out and "DT_INT64" in out
    assert "outputs['probabilities']" in out and "(-1, 10)" in out


def test_saved_model_cli_run_on_npy(exported, tmp_path):
    folder, images, reference = exported.folder, exported.images, exported.reference
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


def test_tflite_conversion_gives_the_same_predictions(exported, tf):
    folder, images, reference = exported.folder, exported.images, exported.reference
    tflite_model = tf.lite.TFLiteConverter.from_saved_model(str(folder)).convert()
    interpreter = tf.lite.Interpreter(model_content=tflite_model)
    runner = interpreter.get_signature_runner("serving_default")
    predicted = np.concatenate([runner(images=images[i : i + 100])["class_ids"] for i in range(0, len(images), 100)])
    assert len(predicted) >= 1000
    np.testing.assert_array_equal(predicted, reference["class_ids"])


def test_keras3_tfsmlayer_loads_it(exported, tf):
    import keras

    folder, images, reference = exported.folder, exported.images, exported.reference
    layer = keras.layers.TFSMLayer(str(folder), call_endpoint="serving_default")
    outputs = layer(tf.constant(images[:100]))
    np.testing.assert_array_equal(np.asarray(outputs["class_ids"]), reference["class_ids"][:100])


def test_tf_serving_rest_example_in_the_docs_matches_the_signature(exported, tf):
    """docs/serving.md's curl request, with its `...28 values...` grid filled in, runs the signature it names and
    gives the outputs its example response shows."""
    text = (REPO / "docs" / "serving.md").read_text()
    request = re.search(r"curl -d '(\{.*?\})'", text)
    response = re.search(r"# -> (\{.*\})", text)
    assert request and response, "docs/serving.md: no `curl -d '{...}'` request with a `# -> {...}` response"
    grid = re.search(r"\[\[\[.*\]\]", request.group(1))  # the instances: images of rows of pixels
    assert grid and "28 values" in grid.group(0) and "28 rows" in grid.group(0), request.group(1)
    images = exported.images[:2]
    body = json.loads(request.group(1).replace(grid.group(0), json.dumps(images.tolist())))
    assert set(body) == {"signature_name", "instances"}
    serve = exported.loaded.signatures[body["signature_name"]]
    result = serve(images=tf.constant(np.array(body["instances"], dtype=np.uint8)))
    assert set(re.findall(r'"(\w+)":', response.group(1))) == {"predictions", *result}
    np.testing.assert_array_equal(result["class_ids"].numpy(), exported.reference["class_ids"][:2])


# --- the predict command ------------------------------------------------------------------------------


def _predict(*args):
    return subprocess.run(
        [sys.executable, "-m", "stages.predict", *map(str, args)], cwd=REPO, capture_output=True, text=True
    )


def test_report_lines_name_the_digit_and_the_runner_up_or_give_json():
    from stages.predict import report_lines

    probs = np.array([[0.01, 0.011, 0, 0, 0, 0, 0, 0.979, 0, 0]], np.float32)
    assert report_lines(["a.png"], probs, as_json=False) == ["a.png: 7 (97.9%), runner-up 1 (1.1%)"]
    line = json.loads(report_lines(["a.png"], probs, as_json=True)[0])
    assert line["path"] == "a.png" and line["class_id"] == 7 and line["probability"] == pytest.approx(0.979)
    assert [d for d, _ in line["top3"]] == [7, 1, 0]


def test_predict_classifies_the_good_pictures_and_reports_each_bad_one_in_one_line(exported, tmp_path):
    good, missing, not_image = tmp_path / "good.png", tmp_path / "missing.png", tmp_path / "notimage.txt"
    drawing().save(good)
    not_image.write_text("not a picture\n")
    done = _predict(exported.folder, good, missing, not_image, "--json")
    assert done.returncode == 1
    [line] = done.stdout.splitlines()
    result = json.loads(line)
    assert set(result) == {"path", "class_id", "probability", "top3"}
    assert result["path"] == str(good) and 0 <= result["class_id"] <= 9 and 0 < result["probability"] <= 1
    assert len(result["top3"]) == 3 and result["top3"][0] == [result["class_id"], result["probability"]]
    assert [p for _, p in result["top3"]] == sorted((p for _, p in result["top3"]), reverse=True)
    assert "Traceback" not in done.stderr
    errors = [e for e in done.stderr.splitlines() if e.startswith("error:")]
    assert errors[0] == f"error: {missing}: not found"
    assert re.fullmatch(rf"error: {re.escape(str(not_image))}: not an image \(.+\)", errors[1])
    assert len(errors) == 2


def test_predict_without_a_saved_model_says_how_to_make_one(tmp_path):
    drawing().save(tmp_path / "good.png")
    done = _predict(tmp_path / "nowhere", tmp_path / "good.png")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error: {tmp_path / 'nowhere'}: not found; run `dvc repro export`"]
