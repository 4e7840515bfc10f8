"""serving: the exported signature (uint8 images in, probabilities and class ids out, nothing else accepted),
the fresh-process scorer export runs, and the tools that consume the SavedModel: our `predict` command,
saved_model_cli, TFLite, Keras 3, and the TF Serving REST request of docs/serving.md."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO, drawing, make_split
from PIL import Image

from stages.lib import cli
from stages.lib.digit_image import to_mnist

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
    line, *failed = done.stdout.splitlines()
    result = json.loads(line)
    assert [json.loads(f) for f in failed] == [
        {"path": str(missing), "error": "not found"},
        {"path": str(not_image), "error": "not an image (not a format Pillow reads)"},
    ]
    assert set(result) == {"path", "class_id", "probability", "top3", "unsure"}
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


# --- byte-identical export, the TFLite copy, the unsure threshold ----------------------------------------


def test_stable_fingerprint_derives_the_uuid_from_the_content_and_loads(exported, tf, tmp_path):
    import shutil

    from tensorflow.core.protobuf import fingerprint_pb2

    from stages.lib import serving

    def uuid_of(path):
        return fingerprint_pb2.FingerprintDef.FromString((path / "fingerprint.pb").read_bytes()).uuid

    folder = exported.folder
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    random_uuid = uuid_of(copy)
    uuid = serving.stable_fingerprint(copy)
    assert uuid != random_uuid and len(uuid) == 36
    first = (copy / "fingerprint.pb").read_bytes()
    assert serving.stable_fingerprint(copy) == uuid and (copy / "fingerprint.pb").read_bytes() == first
    read = tf.saved_model.experimental.read_fingerprint(str(copy))  # what saved_model_cli reads
    assert uuid_of(copy) == uuid
    assert read.saved_model_checksum == tf.saved_model.experimental.read_fingerprint(str(folder)).saved_model_checksum
    images = _images(5)
    served = tf.saved_model.load(str(copy)).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_array_equal(
        served["class_ids"].numpy(),
        exported.loaded.signatures["serving_default"](images=tf.constant(images))["class_ids"].numpy(),
    )


def test_the_tflite_copy_is_deterministic_and_matches_the_signature(exported, tf):
    from stages.lib import lite, serving

    loaded, folder = exported.loaded, exported.folder
    first = serving.to_tflite(folder)
    assert serving.to_tflite(folder) == first
    path = folder / lite.TFLITE_NAME
    path.write_bytes(first)
    images = _images(300, seed=9)
    expected = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    got = lite.LiteModel(path).probabilities(images, batch_size=128)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


def test_the_unsure_threshold_flags_at_most_the_chosen_share_of_correct_answers():
    from stages.lib.serving import confidence_threshold

    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, 1000)
    correct = confidence > rng.uniform(0, 0.6, 1000)
    threshold = confidence_threshold(confidence, correct, max_flagged_correct=0.02)
    assert np.mean(confidence[correct] < threshold) <= 0.02 + 1e-3
    assert np.mean(confidence[~correct] < threshold) > np.mean(confidence[correct] < threshold)


# --- the light runtime, the unsure flag, what the model saw ------------------------------------------


@pytest.fixture(scope="module")
def exported_with_tflite(exported):
    """The exported folder with the model.tflite export writes beside the SavedModel (what predict runs)."""
    from stages.lib import lite, serving

    path = exported.folder / lite.TFLITE_NAME
    if not path.is_file():
        path.write_bytes(serving.to_tflite(exported.folder))
    return exported.folder


def _pictures(tmp_path) -> list[Path]:
    """The pictures of these tests as files: drawings in several styles."""
    styles = [
        drawing(),
        drawing(paper=0, ink=255),
        drawing(size=(900, 300)),
        drawing(scale=3.0),
        drawing(speck=True),
        drawing(scale=5.0, width=2),
        drawing().rotate(90, expand=True, fillcolor=255),
        drawing().convert("RGB"),
    ]
    paths = []
    for i, picture in enumerate(styles):
        paths.append(tmp_path / f"p{i}.png")
        picture.save(paths[-1])
    return paths


def test_the_tflite_copy_gives_the_saved_models_classes_without_tensorflow(exported_with_tflite, tmp_path, tf):
    """predict runs model.tflite in LiteRT: same classes as the SavedModel on the predict tests' pictures, and
    TensorFlow is never imported on that path."""
    paths = _pictures(tmp_path)
    pictures = np.stack([to_mnist(Image.open(p)) for p in paths])
    serve = tf.saved_model.load(str(exported_with_tflite)).signatures["serving_default"]
    expected = serve(images=tf.constant(pictures))["class_ids"].numpy()
    code = (
        "import atexit, sys, runpy; sys.argv = ['predict', *sys.argv[1:]]\n"
        "atexit.register(lambda: print('tensorflow imported' if 'tensorflow' in sys.modules else 'no tensorflow',"
        " file=sys.stderr))\n"  # cli.run_process ends the process, after the atexit handlers
        "runpy.run_module('stages.predict', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(exported_with_tflite), *map(str, paths), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "no tensorflow"
    assert [json.loads(line)["class_id"] for line in done.stdout.splitlines()] == expected.tolist()


def test_answers_below_the_threshold_are_flagged_unsure(exported_with_tflite, tmp_path):
    from stages.lib import lite
    from stages.predict import report_lines

    probs = np.array([[0.01, 0.011, 0, 0, 0, 0, 0, 0.979, 0, 0], [0.3, 0.25, 0.45, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    lines = report_lines(["a.png", "b.png"], probs, as_json=False, unsure_below=0.7)
    assert lines == [
        "a.png: 7 (97.9%), runner-up 1 (1.1%)",
        "b.png: 2 (45.0%), runner-up 0 (30.0%), unsure (confidence below 70%)",
    ]
    assert [json.loads(x)["unsure"] for x in report_lines(["a", "b"], probs, True, 0.7)] == [False, True]

    model = tmp_path / "saved_model"
    shutil.copytree(exported_with_tflite, model)
    good = tmp_path / "good.png"
    drawing().save(good)
    (model / lite.SETTINGS_NAME).write_text(json.dumps({"unsure_below": 1.01}))  # everything is unsure
    done = _predict(model, good, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["unsure"] is True, done.stderr
    (model / lite.SETTINGS_NAME).write_text(json.dumps({"unsure_below": 0.0}))
    assert json.loads(_predict(model, good, "--json").stdout)["unsure"] is False


def test_save_input_writes_the_28x28_pictures_the_model_saw(exported_with_tflite, tmp_path):
    paths = _pictures(tmp_path)[:3]
    (tmp_path / "again").mkdir()
    drawing(paper=0, ink=255).save(tmp_path / "again" / "p0.png")  # the same name as the first
    done = _predict(exported_with_tflite, *paths, tmp_path / "again" / "p0.png", "--save-input", tmp_path / "seen")
    assert done.returncode == 0, done.stderr
    saved = sorted(p.name for p in (tmp_path / "seen").iterdir())
    assert saved == ["p0-2.png", "p0.png", "p1.png", "p2.png"]
    for path in paths:
        seen = np.asarray(Image.open(tmp_path / "seen" / path.name))
        assert seen.shape == (28, 28) and seen.dtype == np.uint8
        assert np.array_equal(seen, to_mnist(Image.open(path)))


# --- hostile inputs ------------------------------------------------------------------------------------


def test_too_little_ink_is_reported_not_classified(exported_with_tflite, tmp_path):
    speck = Image.new("L", (360, 240), 255)
    speck.paste(0, (100, 100, 104, 104))  # one dark speck on a blank page
    speck.save(tmp_path / "speck.png")
    with pytest.raises(cli.UserError, match="too little ink to be a digit"):
        to_mnist(speck)
    done = _predict(exported_with_tflite, tmp_path / "speck.png", "--json")
    assert done.returncode == 1
    [record] = [json.loads(line) for line in done.stdout.splitlines()]
    assert record == {
        "path": str(tmp_path / "speck.png"),
        "error": "too little ink to be a digit (the ink spans 4x4 px of a 360x240 picture)",
    }
    assert done.stderr.splitlines() == [f"error: {tmp_path / 'speck.png'}: {record['error']}"]


def test_every_input_gets_one_json_record_and_names_stay_on_one_line(exported_with_tflite, tmp_path):
    """Not-UTF-8 bytes and newlines in names are escaped; failed inputs get an `error` record, in order."""
    odd = os.fsdecode(bytes(tmp_path) + b"/bad\xffname\nline.png")
    drawing().save(odd)
    blank = tmp_path / "blank.png"
    Image.new("L", (50, 50), 255).save(blank)
    done = subprocess.run(
        [sys.executable, "-m", "stages.predict", str(exported_with_tflite), odd, str(blank), "missing.png", "--json"],
        cwd=REPO,
        capture_output=True,
    )
    assert done.returncode == 1
    lines = done.stdout.decode("ascii").splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert records[0]["path"] == f"{tmp_path}/bad\\xffname\\nline.png" and "class_id" in records[0]
    assert records[1] == {"path": str(blank), "error": "blank: no ink stands out from the background"}
    assert records[2] == {"path": "missing.png", "error": "not found"}
    errors = done.stderr.decode("ascii").splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)
    text = _predict(exported_with_tflite, odd).stdout.splitlines()
    assert len(text) == 1 and text[0].startswith(f"{tmp_path}/bad\\xffname\\nline.png: ")


def _limited_predict(model, *paths):
    """predict under a 10 s timeout, with its peak RSS (ru_maxrss of the child) in bytes."""
    code = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run([sys.executable, '-m', 'stages.predict', *sys.argv[1:]], capture_output=True, text=True,"
        " timeout=10)\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
        "sys.stderr.write(done.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(model), *map(str, paths)], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert "TimeoutExpired" not in done.stderr, done.stderr
    returncode, rss = map(int, done.stdout.split())
    return returncode, rss, done.stderr.splitlines()


def test_a_huge_picture_is_refused_before_decoding(exported_with_tflite, tmp_path):
    """A 13,000 x 13,000 PNG (under 200 KB on disk) and one just above our limit: refused from the header."""
    from stages.lib.digit_image import MAX_PIXELS

    huge, above = tmp_path / "huge.png", tmp_path / "above.png"
    Image.new("L", (13_000, 13_000), 255).save(huge)
    Image.new("1", (MAX_PIXELS // 4000 + 1, 4000), 1).save(above)
    returncode, rss, errors = _limited_predict(exported_with_tflite, huge, above)
    assert returncode == 1 and rss < 1.5e9, (returncode, rss)
    assert errors == [
        f"error: {huge}: too big: 13000x13000 pixels, more than 36 megapixels (scale it down first)",
        f"error: {above}: too big: {MAX_PIXELS // 4000 + 1}x4000 pixels, more than 36 megapixels (scale it down first)",
    ]


def test_only_regular_files_are_opened(exported_with_tflite, tmp_path):
    """A FIFO, a socket, a directory, /dev/zero, a broken and a looping link: one line each saying what it is,
    in stages/lib/cli.py's words (the broken link's target, which holds a newline, escaped)."""
    import socket

    fifo, sock, loop, broken = tmp_path / "fifo", tmp_path / "s.sock", tmp_path / "loop", tmp_path / "broken"
    os.mkfifo(fifo)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    loop.symlink_to(loop)
    broken.symlink_to("no\nwhere")
    try:
        returncode, rss, errors = _limited_predict(
            exported_with_tflite, fifo, sock, tmp_path, "/dev/zero", broken, loop
        )
    finally:
        server.close()
    assert returncode == 1 and rss < 1.5e9
    assert errors == [
        f"error: {fifo}: a FIFO (named pipe), not a regular file",
        f"error: {sock}: a socket, not a regular file",
        f"error: {tmp_path}: a directory, not a regular file",
        "error: /dev/zero: a character device, not a regular file",
        f"error: {broken}: a broken symbolic link (to no\\nwhere), not a regular file",
        f"error: {loop}: a symbolic link loop, not a regular file",
    ]


# --- export's early-started scorer -------------------------------------------------------------------------


def _scorers_of_this_process() -> list[int]:
    """Live child processes of this one running stages.score_saved_model (zombies excluded)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"stages.score_saved_model" in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_export_that_fails_leaves_no_scorer_running(tmp_path):
    """export starts its fresh-process scorer before it restores the checkpoint; when the restore fails,
    the scorer (which has read the test split by then, or soon) must be gone with the error, not left
    waiting on its stdin."""
    from stages import export
    from stages.lib import cli, records

    data = tmp_path / "data"
    data.mkdir()
    splits = {
        name: records.write_split(data, name, *make_split(20, seed=i), 10, "none")
        for i, name in enumerate(["val", "test"])
    }
    meta = {"schema_version": records.SCHEMA_VERSION, "compression": "none", "splits": splits}
    (data / records.META_FILE).write_text(json.dumps(meta))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.99}}))
    argv = ["--params", str(tmp_path / "params.yaml"), "--checkpoint", str(tmp_path / "no-checkpoint")]
    argv += ["--data", str(data), "--metrics", str(tmp_path / "metrics.json")]
    argv += ["--out", str(tmp_path / "model"), "--report", str(tmp_path / "export.json")]
    with pytest.raises(cli.UserError, match="no-checkpoint"):
        export.main(argv)
    assert _scorers_of_this_process() == []
    assert not (tmp_path / "model").exists() and not (tmp_path / "export.json").exists()
