"""TFRecord shards and meta.json: exact round trip, byte-identical rewrites, damage detected."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_split

from stages.lib import cli

pytestmark = pytest.mark.usefixtures("tf")  # records imports TensorFlow: import it once, quietly

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
    import zlib

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
    assert entry["shards"][0]["sha256"] == records.sha256_file(Path(path))


def test_parse_batch_decodes_the_schema(tf):
    from stages.lib import records

    images, labels = make_split(5)
    serialized = tf.constant([records.serialize(image, label) for image, label in zip(images, labels)])
    parsed_images, parsed_labels = records.parse_batch(serialized)
    assert parsed_images.dtype == tf.uint8 and parsed_labels.dtype == tf.int64
    np.testing.assert_array_equal(parsed_images.numpy(), images.reshape(-1, 784))
    np.testing.assert_array_equal(parsed_labels.numpy(), labels)


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
