"""TFRecord shards and meta.json: exact round trip, byte-identical rewrites, damage detected."""

import json

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


class _MapOrderAdverseTF:
    """`tensorflow` as records.py sees it, except that a tf.train.Example serialized without
    `deterministic=True` writes its feature map label-first, as the upb protobuf runtime does in
    about one process in four (its map iteration order is seeded per process)."""

    def __init__(self, tf):
        self._tf = tf
        real_example = tf.train.Example

        class Example:
            def __init__(self, **kwargs):
                self._message = real_example(**kwargs)

            def SerializeToString(self, deterministic=False, **kwargs):
                if deterministic:
                    return self._message.SerializeToString(deterministic=True, **kwargs)
                features = self._message.features.feature
                parts = []
                for key in sorted(features, reverse=True):  # label before image
                    single = real_example()
                    single.features.feature[key].CopyFrom(features[key])
                    parts.append(single.SerializeToString(deterministic=True))
                return b"".join(parts)  # the same message (fields merge on parsing), other bytes

        self.train = type("train", (), {"Example": Example, "__getattr__": lambda _, name: getattr(tf.train, name)})()

    def __getattr__(self, name):
        return getattr(self._tf, name)


def test_serialize_does_not_depend_on_the_map_order(tf, monkeypatch):
    """Shards must be byte-identical across processes. Regression: serialize() used to call
    SerializeToString() without deterministic=True, so about one process in four wrote 'label' before
    'image' (upb seeds its map order per process) and `dvc repro --force prepare` changed data/prepared;
    fixed in 64bee0d. The emulated runtime below makes the bad order certain instead of 1 in 4."""
    from stages.lib import records

    image, label = make_split(1)[0][0], 7
    canonical = tf.train.Example.FromString(records.serialize(image, label)).SerializeToString(deterministic=True)
    monkeypatch.setattr(records, "tf", _MapOrderAdverseTF(tf))
    produced = records.serialize(image, label)
    parsed = tf.train.Example.FromString(produced)
    assert parsed.features.feature["label"].int64_list.value == [7]  # the emulation keeps the content
    assert produced == canonical


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
