"""The idx and tfds sources (issue #3): IDX parsing and its one-line errors, the TFDS path (mocked,
offline, prepared), and "same MNIST whichever source": canonical order, byte-identical shards."""

import gzip
import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.lib import cli, mnist_facts, sources

REPO = Path(__file__).resolve().parents[1]
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
KEYS = ("train_images", "train_labels", "test_images", "test_labels")


# --- helpers -------------------------------------------------------------------------------------


def small_mnist(n_train: int = 60, n_test: int = 20, seed: int = 0) -> sources.Mnist:
    """Random MNIST-format data: uint8 images (N, 28, 28), int64 labels 0..9, every digit present."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
        return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), labels

    return sources.Mnist(*split(n_train), *split(n_test))


def idx_blob(array: np.ndarray, magic: int) -> bytes:
    """IDX written independently of the reader: struct-packed big-endian header, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()


def idx_blobs(data: sources.Mnist) -> dict[str, bytes]:
    return {key: idx_blob(getattr(data, key), IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC) for key in KEYS}


def write_blobs(folder: Path, blobs: dict[str, bytes], gz=False) -> Path:
    """Write {key: bytes} under the standard names; `gz` True (all), False (none) or a set of keys."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, blob in blobs.items():
        compress = gz is True or (isinstance(gz, set) and key in gz)
        name = sources.IDX_FILES[key] + (".gz" if compress else "")
        (folder / name).write_bytes(gzip.compress(blob, mtime=0) if compress else blob)
    return folder


def write_idx(folder: Path, data: sources.Mnist, gz=False) -> Path:
    return write_blobs(folder, idx_blobs(data), gz)


def shuffled(data: sources.Mnist, seed: int = 1) -> sources.Mnist:
    rng = np.random.default_rng(seed)
    p, q = rng.permutation(len(data.train_labels)), rng.permutation(len(data.test_labels))
    return sources.Mnist(data.train_images[p], data.train_labels[p], data.test_images[q], data.test_labels[q])


def assert_same(a: sources.Mnist, b: sources.Mnist) -> None:
    for key in KEYS:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and x.shape == y.shape, key
        np.testing.assert_array_equal(x, y, err_msg=key)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def params_file(path: Path, **data_overrides) -> Path:
    """The repo's params.yaml with only the given data.* keys changed."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(data_overrides)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def prepare_cmd(params: Path, out: Path) -> list[str]:
    """`python -m stages.prepare` writing only under tmp (also its samples picture, when it makes one)."""
    cmd = [sys.executable, "-m", "stages.prepare", "--params", str(params), "--out", str(out)]
    if "--samples" in (REPO / "stages" / "prepare.py").read_text():
        cmd += ["--samples", str(out.parent / f"{out.name}-samples.png")]
    return cmd


def run_prepare(params: Path, out: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(prepare_cmd(params, out), cwd=REPO, capture_output=True, text=True, timeout=timeout)


# --- idx: round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True, {"train_images", "test_labels"}], ids=["plain", "gz", "mixed"])
def test_idx_round_trip_is_exact(tmp_path, gz):
    data = small_mnist()
    loaded = sources.load_idx(write_idx(tmp_path / "raw", data, gz=gz))
    assert_same(loaded, data)
    assert loaded.train_images.dtype == np.uint8 and loaded.train_labels.dtype == np.int64
    mnist_facts.check_format(loaded)
    assert mnist_facts.fingerprint(loaded) == mnist_facts.fingerprint(data)
    assert_same(sources.load("idx", str(tmp_path / "raw")), data)  # the dispatch used by prepare


def test_idx_plain_file_wins_over_gz(tmp_path):
    """Both present (a user unpacked but kept the .gz): the plain file is read."""
    a, b = small_mnist(seed=0), small_mnist(seed=1)
    folder = write_idx(tmp_path / "raw", a)
    write_idx(folder, b, gz=True)
    assert_same(sources.load_idx(folder), a)


def test_idx_empty_files_load_as_empty_arrays(tmp_path):
    data = sources.Mnist(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), *small_mnist(10, 10)[2:])
    loaded = sources.load_idx(write_idx(tmp_path / "raw", data))
    assert loaded.train_images.shape == (0, 28, 28) and loaded.train_labels.shape == (0,)
    mnist_facts.check_format(loaded)
    with pytest.raises(cli.UserError, match="data.verify"):
        mnist_facts.check_is_mnist(loaded, mnist_facts.fingerprint(loaded))


# --- idx: malformed files, each a one-line error naming the file --------------------------------


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
        blobs["train_labels"] = idx_blob(data.train_labels[:n], LABELS_MAGIC)

    return damage


N_TRAIN, N_TEST = 60, 20
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
    "count-mismatch": (
        _labels(N_TRAIN - 1),
        "train-labels-idx1-ubyte",
        rf"{N_TRAIN - 1} labels, but \S*train-images-idx3-ubyte has {N_TRAIN} images",
    ),
    "dims-32x32": (
        _replace("train_images", lambda b, d: idx_blob(np.zeros((N_TRAIN, 32, 32), np.uint8), IMAGES_MAGIC)),
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
    data = small_mnist(N_TRAIN, N_TEST)
    blobs = idx_blobs(data)
    damage(blobs, data)
    folder = write_blobs(tmp_path / "raw", blobs)
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
    data = small_mnist(N_TRAIN, N_TEST)
    blobs = idx_blobs(data)
    folder = write_blobs(tmp_path / "raw", {k: v for k, v in blobs.items() if k != "train_images"})
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(make(blobs["train_images"]))
    with pytest.raises(cli.UserError) as info:
        sources.load_idx(folder)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text


def test_prepare_subprocess_with_truncated_idx_fails_cleanly(tmp_path):
    """The stage: exit code != 0, exactly one stderr line `error: <file>: ...`, no output folder."""
    data = small_mnist(N_TRAIN, N_TEST)
    blobs = idx_blobs(data)
    blobs["train_images"] = blobs["train_images"][:-1000]
    raw = write_blobs(tmp_path / "raw", blobs)
    out = tmp_path / "prepared"
    start = time.perf_counter()
    result = run_prepare(params_file(tmp_path / "params.yaml", source="idx", idx_dir=str(raw)), out, timeout=120)
    elapsed = time.perf_counter() - start
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"error: {raw / 'train-images-idx3-ubyte'}: expected {N_TRAIN * 784} bytes of pixels, "
        f"found {N_TRAIN * 784 - 1000} (truncated?)"
    )
    assert not out.exists() and not any(p.name.startswith((".tmp-", ".old-")) for p in tmp_path.iterdir())
    assert elapsed < 30, f"a bad input should fail before TensorFlow is imported ({elapsed:.1f} s)"


# --- same data, whichever order: canonical order --------------------------------------------------


def test_canonical_order_makes_a_shuffled_copy_identical(tmp_path):
    data = small_mnist(300, 80)
    copy = sources.load_idx(write_idx(tmp_path / "raw", shuffled(data), gz=True))
    assert not np.array_equal(copy.train_labels, data.train_labels)  # really another order
    assert mnist_facts.fingerprint(copy) == mnist_facts.fingerprint(data)
    (a_train, a_val), (b_train, b_val) = (
        mnist_facts.split_train_val(d.train_images, d.train_labels, val_size=70, seed=3) for d in (data, copy)
    )
    for x, y in zip(
        (*a_train, *a_val, *mnist_facts.canonical_test(data.test_images, data.test_labels)),
        (*b_train, *b_val, *mnist_facts.canonical_test(copy.test_images, copy.test_labels)),
    ):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    assert len(a_train[0]) == 230 and len(a_val[0]) == 70
    # the seed matters, the delivery order does not
    c_train, _ = mnist_facts.split_train_val(data.train_images, data.train_labels, val_size=70, seed=4)
    assert not np.array_equal(c_train[1], a_train[1])


def test_canonical_order_gives_identical_shards(tmp_path):
    cli.import_tensorflow()
    from stages.lib import records

    data = small_mnist(300, 80)
    shards = {}
    for name, d in (("original", data), ("shuffled", shuffled(data, seed=7))):
        folder = tmp_path / name
        folder.mkdir()
        (train, val) = mnist_facts.split_train_val(d.train_images, d.train_labels, val_size=70, seed=0)
        test = mnist_facts.canonical_test(d.test_images, d.test_labels)
        entries = {
            s: records.write_split(folder, s, *arrays, 64, "none")
            for s, arrays in (("train", train), ("val", val), ("test", test))
        }
        shards[name] = {p.name: sha256(p) for p in sorted(folder.iterdir())}
        assert shards[name] == {s["file"]: s["sha256"] for e in entries.values() for s in e["shards"]}
    assert len(shards["original"]) == 4 + 2 + 2
    assert shards["original"] == shards["shuffled"]


# --- not MNIST: refused unless data.verify is false -----------------------------------------------


def _right_counts_wrong_pixels() -> sources.Mnist:
    train_y = np.repeat(np.arange(10), mnist_facts.TRAIN_CLASS_COUNTS).astype(np.int64)
    test_y = np.repeat(np.arange(10), mnist_facts.TEST_CLASS_COUNTS).astype(np.int64)
    return sources.Mnist(np.zeros((60_000, 28, 28), np.uint8), train_y, np.zeros((10_000, 28, 28), np.uint8), test_y)


def test_not_mnist_is_refused_mentioning_verify():
    small = small_mnist()
    with pytest.raises(cli.UserError, match=r"not MNIST: 60 train images, expected 60000 .*data\.verify: false"):
        mnist_facts.check_is_mnist(small, mnist_facts.fingerprint(small))
    lookalike = _right_counts_wrong_pixels()  # Fashion-MNIST-like: the counts of MNIST, other images
    mnist_facts.check_format(lookalike)
    with pytest.raises(cli.UserError, match=r"not MNIST: the counts match but .*data\.verify: false") as info:
        mnist_facts.check_is_mnist(lookalike, mnist_facts.fingerprint(lookalike))
    assert "\n" not in str(info.value)


def test_prepare_accepts_non_mnist_only_with_verify_false(tmp_path, capsys):
    from stages import prepare

    raw = write_idx(tmp_path / "raw", small_mnist(200, 50), gz=True)
    common = dict(source="idx", idx_dir=str(raw), val_size=50, shard_size=64)
    out = tmp_path / "prepared"
    with pytest.raises(cli.UserError, match=r"data\.verify: false"):
        prepare.main(prepare_cmd(params_file(tmp_path / "strict.yaml", **common), out)[3:])
    assert not out.exists()

    prepare.main(prepare_cmd(params_file(tmp_path / "loose.yaml", verify=False, **common), out)[3:])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["verified_mnist"] is False and meta["source"] == "idx"
    assert {name: entry["count"] for name, entry in meta["splits"].items()} == {"train": 150, "val": 50, "test": 50}
    assert "not verified" in capsys.readouterr().out


# --- tfds ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds():
    cli.import_tensorflow()  # quietly, once
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


# --- slow: the full MNIST through every source ---------------------------------------------------


@pytest.fixture(scope="module")
def mnist_idx(tmp_path_factory):
    """The real MNIST (from the bundled copy) as IDX folders: plain, gzipped, and shuffled."""
    data = sources.load_bundled()
    root = tmp_path_factory.mktemp("mnist-idx")
    return data, {
        "plain": write_idx(root / "plain", data),
        "gz": write_idx(root / "gz", data, gz=True),
        "shuffled": write_idx(root / "shuffled", shuffled(data, seed=2024)),
    }


@pytest.mark.slow
def test_full_mnist_idx_round_trip(mnist_idx):
    data, folders = mnist_idx
    assert_same(sources.load_idx(folders["plain"]), data)
    assert_same(sources.load_idx(folders["gz"]), data)
    assert mnist_facts.fingerprint(sources.load_idx(folders["shuffled"])) == mnist_facts.MNIST_FINGERPRINT


@pytest.mark.slow
def test_prepare_is_byte_identical_for_every_source(mnist_idx, tmp_path):
    """`python -m stages.prepare` with data.source bundled, and idx (plain, .gz, shuffled order):
    every shard has the same sha256, and meta.json is the same apart from `source`."""
    _, folders = mnist_idx
    runs = {"bundled": params_file(tmp_path / "bundled.yaml", source="bundled")}
    runs.update(
        {name: params_file(tmp_path / f"{name}.yaml", source="idx", idx_dir=str(f)) for name, f in folders.items()}
    )
    metas, shards = {}, {}
    for name, params in runs.items():
        out = tmp_path / f"out-{name}"
        result = run_prepare(params, out)
        assert result.returncode == 0, result.stderr
        metas[name] = json.loads((out / "meta.json").read_text())
        shards[name] = {p.name: sha256(p) for p in sorted(out.glob("*.tfrecord*"))}
        assert shards[name] == {s["file"]: s["sha256"] for e in metas[name]["splits"].values() for s in e["shards"]}
        assert metas[name]["fingerprint"] == mnist_facts.MNIST_FINGERPRINT
    assert len(shards["bundled"]) == 7
    for name in folders:
        if shards[name] != shards["bundled"]:
            pytest.fail(_explain_shard_difference(tmp_path / "out-bundled", tmp_path / f"out-{name}", name))
        assert {**metas[name], "source": None} == {**metas["bundled"], "source": None}


def _explain_shard_difference(a: Path, b: Path, name: str) -> str:
    """Tell apart different examples (a data-source bug) from the same examples encoded differently."""
    from stages.lib import records

    same_examples = all(
        all(np.array_equal(x, y) for x, y in zip(records.read_split(a, s), records.read_split(b, s)))
        for s in ("train", "val", "test")
    )
    if same_examples:
        return (
            f"bundled and {name}: the same examples in the same order, but the shard bytes differ: "
            "records.serialize() is not deterministic (protobuf map order of the Example's features varies "
            "between processes); it should call SerializeToString(deterministic=True)"
        )
    return f"bundled and {name}: the prepared examples differ"


@pytest.mark.slow
def test_tfds_prepared_data_dir_needs_no_network_and_is_mnist(tfds, mnist_idx, tmp_path, monkeypatch):
    """A TFDS data_dir that already holds mnist (built here from the IDX files in place of the
    download) loads with the network refused, and gives exactly MNIST: same fingerprint, same splits."""
    data, folders = mnist_idx
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


@pytest.mark.slow
def test_prepare_subprocess_tfds_offline_fails_fast(tmp_path):
    """The stage with data.source tfds, nothing prepared and no network: a quick one-line error."""
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # nothing listens
    out = tmp_path / "prepared"
    params = params_file(tmp_path / "params.yaml", source="tfds", tfds_data_dir=str(tmp_path / "tfds"))
    start = time.perf_counter()
    result = subprocess.run(prepare_cmd(params, out), cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    elapsed = time.perf_counter() - start
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: data.source is tfds but the TFDS download server")
    assert "data.source: bundled" in result.stderr and "data.source: idx" in result.stderr
    assert not out.exists()
    assert elapsed < 60, elapsed  # TensorFlow + TFDS imports; not TFDS's ~3.5 minutes of retries
