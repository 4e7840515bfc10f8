"""Shared fixtures: the repo's params as a dict, tiny synthetic MNIST-format data, IDX writers.

TensorFlow is imported lazily by the test modules that need it (and only once per session), so the
params and sources tests stay fast.
"""

import copy
import gzip
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

with open(REPO / "params.yaml") as _f:
    _BASE_PARAMS = yaml.safe_load(_f)
# The synthetic classes below differ only by where their block sits. Deskewing re-centres every image
# and would erase that, so tests on synthetic data run without it; model.deskew has its own tests, and
# CI's `dvc repro` runs it on the real data.
SYNTHETIC_MODEL = {"deskew": False}
_BASE_PARAMS["model"].update(SYNTHETIC_MODEL)


def base_params() -> dict:
    """The repo's params.yaml parsed as a dict, with SYNTHETIC_MODEL; a fresh deep copy each call."""
    return copy.deepcopy(_BASE_PARAMS)


def with_overrides(raw: dict, overrides: dict) -> dict:
    """Set dotted keys, e.g. {"train.epochs": 3}; a value of `DELETE` removes the key."""
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return raw


DELETE = object()


# train.* switched to plain Adam at a constant rate, every regulariser off: tests that assert on the
# loop's numbers start from here, so a change of the defaults in params.yaml does not move them.
PLAIN_TRAIN = dict(
    train__optimizer="adam",
    train__learning_rate=0.001,
    train__momentum=0.0,
    train__nesterov=False,
    train__weight_decay=0.0,
    train__lr_schedule="constant",
    train__warmup_epochs=0,
    train__label_smoothing=0.0,
    train__dropout_input=0.0,
    train__dropout_hidden=0.0,
    train__max_norm=0.0,
    train__augment_shift=0,
    train__seed=0,
)


def make_params(**overrides):
    """Validated Params from base_params() with dotted overrides given as `train__epochs=3`."""
    from stages.lib import params

    raw = with_overrides(base_params(), {k.replace("__", "."): v for k, v in overrides.items()})
    return params.validate(raw)


# --- synthetic MNIST-format data -----------------------------------------------------------------

# Each class is a bright 7x7 block at its own place on a 4x3 grid of the 28x28 canvas: trivially
# separable, so a tiny MLP learns it in a few epochs, yet noisy and jittered so examples differ.
_BLOCK = 7
_ORIGINS = [(2 + 6 * (k % 4), 2 + 8 * (k // 4)) for k in range(10)]


def make_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.int64)
    jitter = rng.integers(-1, 2, size=(n, 2))
    for i, label in enumerate(labels):
        row, col = _ORIGINS[int(label)]
        row, col = row + jitter[i, 0], col + jitter[i, 1]
        images[i, row : row + _BLOCK, col : col + _BLOCK] += rng.integers(150, 196)
    return np.clip(images, 0, 255).astype(np.uint8)


def make_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, 28, 28), int64 labels (n,)) with balanced, shuffled classes 0..9."""
    rng = np.random.default_rng(seed + 1_000)
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    return make_images(labels, seed), labels


def make_mnist(n_train: int, n_test: int, seed: int = 0):
    from stages.lib.sources import Mnist

    train_x, train_y = make_split(n_train, seed)
    test_x, test_y = make_split(n_test, seed + 1)
    return Mnist(train_x, train_y, test_x, test_y)


# --- IDX files -----------------------------------------------------------------------------------

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, images: bool) -> bytes:
    """The IDX encoding: big-endian magic (0x803 images, 0x801 labels), dimensions, then uint8 data."""
    array = np.asarray(array)
    magic = 0x00000803 if images else 0x00000801
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder, data, compress: bool = False) -> Path:
    """Write the four standard IDX files of `data` (a sources.Mnist) into `folder`, plain or .gz."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in IDX_NAMES.items():
        payload = idx_bytes(getattr(data, key), images=key.endswith("images"))
        if compress:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(payload)
        else:
            (folder / name).write_bytes(payload)
    return folder


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def params_dict() -> dict:
    return base_params()


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, imported once (quietly) for the modules that need it, with the CPU split into two
    logical devices (before any op runs, the only time that is possible) for the mirrored-strategy tests."""
    from stages.lib import cli

    tf = cli.import_tensorflow()
    from stages.lib import distribution

    distribution.split_cpu(2)
    return tf


@pytest.fixture
def deterministic_ops(tf):
    """Op determinism on for one test, as train.py does, then off again (TF has no public switch-off)."""
    from tensorflow.python.framework import config as tf_config

    tf.config.experimental.enable_op_determinism()
    yield
    tf_config.disable_op_determinism()
