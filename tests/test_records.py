"""TFRecord shards and meta.json: exact round trip, byte-identical rewrites, damage detected."""

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import make_split

from stages.lib import cli

N_PER_SPLIT = {"train": 230, "val": 40, "test": 57}


def write_prepared(folder, compression: str, shard_size: int) -> dict:
    """Write three synthetic splits and meta.json the way stages/prepare.py does; return the arrays."""
    from stages.lib import records

    folder.mkdir(parents=True, exist_ok=True)
    splits = {name: make_split(n, seed=i) for i, (name, n) in enumerate(N_PER_SPLIT.items())}
    meta = {
        "schema_version": records.SCHEMA_VERSION,
        "source": "idx",
        "fingerprint": "0" * 64,
        "verified_mnist": False,
        "compression": compression,
        "image_shape": [28, 28],
        "splits": {
            name: records.write_split(folder, name, images, labels, shard_size, compression)
            for name, (images, labels) in splits.items()
        },
    }
    (folder / records.META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return splits


@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("shard_size", [50, 10_000])
def test_round_trip_is_exact(tmp_path, compression, shard_size):
    from stages.lib import records

    splits = write_prepared(tmp_path, compression, shard_size)
    meta = records.read_meta(tmp_path)
    for name, (images, labels) in splits.items():
        entry = meta["splits"][name]
        expected_shards = -(-len(labels) // shard_size)
        assert len(entry["shards"]) == expected_shards
        assert sum(shard["count"] for shard in entry["shards"]) == entry["count"] == len(labels)
        assert entry["class_counts"] == np.bincount(labels, minlength=10).tolist()
        suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
        assert all(shard["file"].endswith(suffix) for shard in entry["shards"])

        read_images, read_labels = records.read_split(tmp_path, name)
        assert read_images.dtype == np.uint8 and read_images.shape == (len(labels), 784)
        assert read_labels.dtype == np.int64
        np.testing.assert_array_equal(read_images, images.reshape(-1, 784))
        np.testing.assert_array_equal(read_labels, labels)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_writing_twice_gives_identical_bytes(tmp_path, compression):
    write_prepared(tmp_path / "a", compression, shard_size=64)
    write_prepared(tmp_path / "b", compression, shard_size=64)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(names) > 4
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize("label", [0, 7, 9, 61, 127, 128, 300, 2**40, -1])
def test_examples_are_tensorflows_own_bytes(tf, label):
    """records writes Examples without TensorFlow; they must be the bytes tf.train.Example serializes
    deterministically (so also byte-identical across processes, whatever the protobuf runtime's map order)."""
    from stages.lib import records

    image = make_split(1)[0][0]
    expected = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
        )
    ).SerializeToString(deterministic=True)
    assert records.example(image.tobytes(), label) == expected
    assert records.serialize(image, label) == expected
    assert records.serialize(np.zeros(5, np.uint8), label) == records.example(bytes(5), label)  # another size


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_shards_are_what_tensorflows_writer_writes(tmp_path, tf, compression):
    """The framing (length, masked CRC-32C) byte for byte as tf.io.TFRecordWriter writes it; gzip shards
    decompress to the same bytes, and TensorFlow's reader (which checks the CRCs) reads them back."""
    from stages.lib import records

    images, labels = make_split(30, seed=3)
    entry = records.write_split(tmp_path, "train", images, labels, 30, compression)
    ours = (tmp_path / entry["shards"][0]["file"]).read_bytes()
    options = tf.io.TFRecordOptions(compression_type={"none": "", "gzip": "GZIP"}[compression])
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord"), options) as writer:
        for image, label in zip(images, labels):
            writer.write(records.serialize(image, label))
    theirs = (tmp_path / "tf.tfrecord").read_bytes()
    if compression == "gzip":
        ours, theirs = zlib.decompress(ours, 16 + zlib.MAX_WBITS), zlib.decompress(theirs, 16 + zlib.MAX_WBITS)
    assert ours == theirs
    path = str(tmp_path / entry["shards"][0]["file"])
    read = list(tf.data.TFRecordDataset(path, compression_type=options.compression_type).as_numpy_iterator())
    assert read == [records.serialize(i, lab) for i, lab in zip(images, labels)]
    assert entry["shards"][0]["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    parsed_images, parsed_labels = records.parse_shard(theirs, 30, "tf")  # TensorFlow's shard, our reader
    np.testing.assert_array_equal(parsed_images, images.reshape(-1, 784))
    np.testing.assert_array_equal(parsed_labels, labels)


def _records(images, labels) -> bytes:
    from stages.lib import records

    return b"".join(records.tfrecord(records.serialize(i, lab)) for i, lab in zip(images, labels))


def test_parse_shard_reads_back_what_was_written():
    from stages.lib import records

    images, labels = make_split(25, seed=4)
    parsed_images, parsed_labels = records.parse_shard(_records(images, labels), 25, "shard")
    assert parsed_images.dtype == np.uint8 and parsed_labels.dtype == np.int64
    np.testing.assert_array_equal(parsed_images, images.reshape(-1, 784))
    np.testing.assert_array_equal(parsed_labels, labels)
    assert records.parse_shard(b"", 0, "empty")[0].shape == (0, 784)


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data, n: (data[:-4], n),  # a record cut short
        lambda data, n: (data, n + 1),  # fewer records than claimed
        lambda data, n: (_flip(data, 0), n),  # the first record's length
        lambda data, n: (_flip(data, 8), n),  # the CRC of a length
        lambda data, n: (_flip(data, 16 + 5), n),  # inside the Example, before the image ("image" key)
        lambda data, n: (_flip(data, len(data) - 4 - 4), n),  # inside the Example, after the image ("label" key)
        lambda data, n: (_flip(data, len(data) - 4 - 1), n),  # the last label, 7 -> 6: only its CRC tells
        lambda data, n: (_flip(data, 16 + 100), n),  # a pixel: only its CRC tells
    ],
    ids=["cut", "count", "length", "length-crc", "image-key", "label-key", "label", "pixel"],
)
def test_parse_shard_refuses_other_bytes(damage):
    from stages.lib import records

    images, labels = make_split(6, seed=5)
    labels[-1] = 7
    data, count = damage(_records(images, labels), len(labels))
    with pytest.raises(cli.UserError) as caught:
        records.parse_shard(data, count, "shard-x")
    assert str(caught.value).startswith("shard-x: ") and str(caught.value).endswith("rerun `dvc repro prepare`")


@pytest.mark.parametrize(
    "old, new",
    [(b"image", b"imagf"), (b"label", b"lobel"), (b"\x1a\x03\n", b"\x12\x03\n")],
    ids=["image-key", "label-key", "label-as-bytes"],
)
def test_parse_shard_refuses_foreign_examples_with_valid_framing(old, new):
    """Records whose CRCs are right but whose Example is not the schema's: another key, or the label as a
    bytes_list (field 2) instead of an int64_list (field 3)."""
    from stages.lib import records

    images, labels = make_split(3, seed=7)
    examples = [records.serialize(i, lab) for i, lab in zip(images, labels)]
    at = examples[1].rindex(old)
    examples[1] = examples[1][:at] + new + examples[1][at + len(old) :]
    with pytest.raises(cli.UserError, match="not the Examples `prepare` writes"):
        records.parse_shard(b"".join(records.tfrecord(e) for e in examples), 3, "shard")


@pytest.mark.parametrize("label", [10, 127])
def test_parse_shard_refuses_labels_outside_0_to_9(label):
    from stages.lib import records

    images, labels = make_split(4, seed=6)
    labels[2] = label
    with pytest.raises(cli.UserError, match="label 0..9"):
        records.parse_shard(_records(images, labels), 4, "shard")


def _forge_shard(folder, data: bytes) -> str:
    """Replace train's first shard by `data` and update meta.json to match, as a forger would."""
    from stages.lib import records

    meta = json.loads((folder / records.META_FILE).read_text())
    shard = meta["splits"]["train"]["shards"][0]
    (folder / shard["file"]).write_bytes(data)
    shard.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / records.META_FILE).write_text(json.dumps(meta))
    return shard["file"]


def _gzip(data: bytes) -> bytes:
    deflate = zlib.compressobj(3, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return deflate.compress(data) + deflate.flush()


@pytest.mark.parametrize(
    "forged, message",
    [
        (lambda shard: _gzip(shard + bytes(10 << 20)), "holds more than its 50 examples"),  # a small bomb
        (lambda shard: _gzip(shard)[:-30], "cut short"),
        (lambda shard: _gzip(shard) + b"junk", "trailing bytes"),
        (lambda shard: shard, "not a gzip stream"),
    ],
    ids=["bomb", "cut", "trailing", "not-gzip"],
)
def test_forged_gzip_shard_is_refused(tmp_path, forged, message):
    from stages.lib import records

    write_prepared(tmp_path, "gzip", shard_size=50)
    first = records.read_meta(tmp_path)["splits"]["train"]["shards"][0]["file"]
    name = _forge_shard(tmp_path, forged(zlib.decompress((tmp_path / first).read_bytes(), 16 + zlib.MAX_WBITS)))
    with pytest.raises(cli.UserError, match=message) as caught:
        records.read_split(tmp_path, "train")
    assert name in str(caught.value) and "dvc repro prepare" in str(caught.value)


def _damage_flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 17])


def _damage_delete(path):
    path.unlink()


@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("damage", [_damage_flip, _damage_truncate, _damage_delete], ids=["flip", "truncate", "delete"])
def test_damaged_shard_is_caught(tmp_path, compression, damage):
    from stages.lib import records

    write_prepared(tmp_path, compression, shard_size=50)
    shard = records.read_meta(tmp_path)["splits"]["train"]["shards"][2]["file"]
    damage(tmp_path / shard)
    with pytest.raises(cli.UserError) as caught:
        records.read_split(tmp_path, "train")
    message = str(caught.value)
    assert shard in message
    assert "dvc repro prepare" in message
    assert "\n" not in message
    # the other splits are still readable
    assert len(records.read_split(tmp_path, "val")[1]) == N_PER_SPLIT["val"]


def test_missing_or_foreign_meta_is_caught(tmp_path):
    from stages.lib import records

    with pytest.raises(cli.UserError, match=r"meta\.json: not found; run `dvc repro prepare`"):
        records.read_split(tmp_path, "train")
    write_prepared(tmp_path, "none", shard_size=100)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["schema_version"] = 999
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(cli.UserError, match="schema version.*dvc repro prepare"):
        records.read_split(tmp_path, "train")
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(cli.UserError, match="dvc repro prepare"):
        records.read_split(tmp_path, "train")
