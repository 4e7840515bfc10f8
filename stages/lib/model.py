"""The multilayer perceptron, TensorFlow Core style: one weight and one bias tf.Variable per layer."""

import json
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from stages.lib.cli import UserError
from stages.lib.preprocessing import INPUT_SIZE, to_model_input

NUM_CLASSES = 10
ARCHITECTURE_FILE = "model.json"  # saved beside the checkpoint, so readers rebuild the same shapes


def glorot_uniform(fan_in: int, fan_out: int, seed: tf.Tensor) -> tf.Tensor:
    """Xavier/Glorot uniform: U(-l, l) with l = sqrt(6 / (fan_in + fan_out))."""
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return tf.random.stateless_uniform([fan_in, fan_out], seed=seed, minval=-limit, maxval=limit)


# Random-number algorithm for dropout masks. Under XLA on CPU, "threefry" is far faster than the
# default (an epoch's masks for 3x1024: 0.2 s vs 31 s, benchmarks/bench_dropout_rng.py); TF's own
# CPU kernel rejects threefry, so outside XLA it is "philox".
RNG_XLA, RNG_TF = "threefry", "philox"


def dropout(x: tf.Tensor, rate: float, seed: tf.Tensor, alg: str = RNG_TF) -> tf.Tensor:
    """Inverted dropout: zero each unit with probability `rate`, scale the rest by 1 / (1 - rate)."""
    keep = tf.random.stateless_uniform(tf.shape(x), seed=seed, alg=alg) >= rate
    return tf.where(keep, x / (1.0 - rate), 0.0)


class MLP(tf.Module):
    """784 -> hidden_units (ReLU) -> 10 logits. Softmax lives in the loss and in serving.

    `deskew` belongs to the model, not the data: whoever feeds it images (training, evaluate, the
    serving signature) prepares them through `inputs`, so they all straighten digits alike."""

    def __init__(self, hidden_units: list[int], seed: int, deskew: bool = False, name: str = "mlp"):
        super().__init__(name=name)
        self.hidden_units = list(hidden_units)
        self.deskew = bool(deskew)
        sizes = [INPUT_SIZE, *self.hidden_units, NUM_CLASSES]
        self.weights, self.biases = [], []
        for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            init = glorot_uniform(fan_in, fan_out, seed=tf.constant([seed, layer], tf.int64))
            self.weights.append(tf.Variable(init, name=f"w{layer}"))
            self.biases.append(tf.Variable(tf.zeros([fan_out]), name=f"b{layer}"))

    def __call__(self, x, dropout_input=0.0, dropout_hidden=0.0, seed=None, rng_alg=RNG_TF):
        """Logits for float inputs [B, 784]. Dropout applies only when rates and a seed [2] are given."""
        if seed is not None and dropout_input > 0:
            x = dropout(x, dropout_input, tf.random.experimental.stateless_fold_in(seed, 0), rng_alg)
        last = len(self.weights) - 1
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = tf.matmul(x, w) + b
            if layer < last:
                x = tf.nn.relu(x)
                if seed is not None and dropout_hidden > 0:
                    x = dropout(x, dropout_hidden, tf.random.experimental.stateless_fold_in(seed, layer + 1), rng_alg)
        return x

    def inputs(self, images: tf.Tensor) -> tf.Tensor:
        """uint8 images [B, 28, 28] or [B, 784] -> this model's float inputs [B, 784]."""
        return to_model_input(images, deskew=self.deskew)

    @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE], tf.uint8)], autograph=False)
    def logits_for_images(self, images):
        """Inference logits for uint8 images [B, 784], through the shared preprocessing."""
        return self(self.inputs(images))

    def apply_max_norm(self, max_norm: float) -> None:
        """Rescale every unit's incoming weights (a column of w) to an L2 norm of at most `max_norm`."""
        for w in self.weights[:-1]:
            norms = tf.norm(w, axis=0, keepdims=True)
            w.assign(w * tf.minimum(1.0, max_norm / tf.maximum(norms, 1e-12)))

    def architecture(self) -> dict:
        return {
            "input_size": INPUT_SIZE,
            "hidden_units": self.hidden_units,
            "num_classes": NUM_CLASSES,
            "deskew": self.deskew,
        }


def predict_logits(model: MLP, images, batch_size: int = 1000):
    """Logits (numpy [N, 10]) for uint8 images [N, 784], computed in batches of `batch_size`."""
    parts = [model.logits_for_images(images[i : i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros([0, NUM_CLASSES], np.float32)


def save_architecture(model: MLP, folder: Path) -> None:
    (Path(folder) / ARCHITECTURE_FILE).write_text(json.dumps(model.architecture()) + "\n")


def restore(folder: str | Path) -> MLP:
    """Rebuild the MLP described in `folder`/model.json and load its checkpoint's weights.

    model.json is checked against the checkpoint's own variable list (names and shapes, read from
    its index without loading any values) before anything is built: a model.json claiming a huge
    width allocates nothing. Only regular files are read (a FIFO would block TensorFlow forever)."""
    from stages.lib import cli

    folder = Path(folder)
    fix = "rerun `dvc repro train`"
    arch_path = folder / ARCHITECTURE_FILE
    try:
        arch = json.loads(cli.read_regular(arch_path, 1 << 20, fix))
        if not isinstance(arch, dict):
            raise ValueError(f"expected an object, found {type(arch).__name__}")
        units = arch["hidden_units"]
        if not isinstance(units, list) or not units or not all(type(u) is int and u > 0 for u in units):
            raise ValueError(f"hidden_units {cli.shorten(repr(units), 60)} is not a list of positive integers")
        deskew = arch.get("deskew", False)  # absent in files written before the option existed
        if type(deskew) is not bool:
            raise ValueError(f"deskew {cli.shorten(repr(deskew), 40)} is not true or false")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UserError(f"{arch_path}: unreadable ({cli.shorten(str(exc), 120)}); {fix}") from None
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("ckpt.") and not cli.is_regular_file(entry.path):
                raise UserError(f"{entry.path}: {cli.describe_path(entry.path)}, not a checkpoint file; {fix}")

    def clean(exc: BaseException) -> str:
        # TensorFlow prefixes op errors with "{{function_node __wrapped__...}}": internals, not news to the user
        text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(exc)).strip()
        return (text.splitlines() or [type(exc).__name__])[0][:160]

    try:
        stored = dict(tf.train.list_variables(str(folder / "ckpt")))
    except (tf.errors.OpError, ValueError, IndexError) as exc:
        raise UserError(f"{folder}: cannot restore the checkpoint ({clean(exc)}); {fix}") from None
    sizes = [INPUT_SIZE, *units, NUM_CLASSES]
    expected = {}
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        expected[f"model/weights/{layer}/.ATTRIBUTES/VARIABLE_VALUE"] = [fan_in, fan_out]
        expected[f"model/biases/{layer}/.ATTRIBUTES/VARIABLE_VALUE"] = [fan_out]
    layer_variables = ("model/weights/", "model/biases/")
    found = {name: list(shape) for name, shape in stored.items() if name.startswith(layer_variables)}
    if found != expected:
        by_layer = sorted(found.items(), key=lambda item: (len(item[0]), item[0]))  # weights/2 before weights/10
        held = [shape for name, shape in by_layer if name.startswith("model/weights/")]
        raise UserError(
            f"{folder}: model.json (hidden_units {cli.shorten(repr(units), 60)}) does not match the checkpoint, "
            f"whose weights have shapes {cli.shorten(repr(held), 80)}; {fix}"
        )
    try:
        model = MLP(units, seed=0, deskew=deskew)
        tf.train.Checkpoint(model=model).read(str(folder / "ckpt")).assert_existing_objects_matched().expect_partial()
    except (tf.errors.OpError, AssertionError, ValueError, IndexError) as exc:  # IndexError: a truncated ckpt.data
        raise UserError(f"{folder}: cannot restore the checkpoint ({clean(exc)}); {fix}") from None
    return model
