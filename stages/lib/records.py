"""The prepared-data contract: TFRecord schema, shard writing, meta.json, integrity checks, reading.

Example: `image` = 784 raw uint8 bytes, `label` = int64. Shards per split are listed with their size
and sha256 in meta.json, and every reader checks them before use.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from stages.lib.cli import UserError

SCHEMA_VERSION = 1
IMAGE_SIZE = 28 * 28
FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}
SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
_TF_COMPRESSION = {"none": "", "gzip": "GZIP"}
_SUFFIX = {"none": ".tfrecord", "gzip": ".tfrecord.gz"}
_FIX = "rerun `dvc repro prepare`"


def serialize(image: np.ndarray, label: int) -> bytes:
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            }
        )
    )
    return example.SerializeToString(deterministic=True)  # fixed field order: byte-identical shards


def parse_batch(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of serialized Examples -> (uint8 images [B, 784], int64 labels [B])."""
    parsed = tf.io.parse_example(serialized, FEATURES)
    images = tf.io.decode_raw(parsed["image"], tf.uint8, fixed_length=IMAGE_SIZE)
    return tf.reshape(images, [-1, IMAGE_SIZE]), parsed["label"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_split(
    folder: Path, split: str, images: np.ndarray, labels: np.ndarray, shard_size: int, compression: str
) -> dict:
    """Write one split as shards of at most `shard_size` examples; return its meta.json entry."""
    n_shards = max(1, -(-len(images) // shard_size))
    options = tf.io.TFRecordOptions(compression_type=_TF_COMPRESSION[compression])
    shards = []
    for index in range(n_shards):
        name = f"{split}-{index:05d}-of-{n_shards:05d}{_SUFFIX[compression]}"
        lo, hi = index * shard_size, min(len(images), (index + 1) * shard_size)
        with tf.io.TFRecordWriter(str(folder / name), options) as writer:
            for image, label in zip(images[lo:hi], labels[lo:hi]):
                writer.write(serialize(image, label))
        path = folder / name
        shards.append({"file": name, "count": hi - lo, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return {
        "count": len(images),
        "class_counts": np.bincount(labels, minlength=10).tolist(),
        "shards": shards,
    }


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run `dvc repro prepare` first") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); {_FIX}") from None
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path}: not schema version {SCHEMA_VERSION}; {_FIX}")
    if meta.get("compression") not in _TF_COMPRESSION:
        raise UserError(f"{path}: unknown compression {meta.get('compression')!r}; {_FIX}")
    return meta


def verified_shards(folder: str | Path, split: str, meta: dict) -> list[str]:
    """The split's shard paths, after checking each one's size and sha256 against meta.json."""
    folder = Path(folder)
    try:
        shards = [
            (folder / shard["file"], shard["bytes"], shard["sha256"]) for shard in meta["splits"][split]["shards"]
        ]
    except (KeyError, TypeError):
        raise UserError(f"{folder / META_FILE}: no valid '{split}' split listed; {_FIX}") from None
    paths = []
    for path, size, sha256 in shards:
        if not path.is_file():
            raise UserError(f"{path}: missing; {_FIX}")
        if path.stat().st_size != size:
            raise UserError(f"{path}: {path.stat().st_size} bytes, meta.json says {size} (damaged); {_FIX}")
        if sha256_file(path) != sha256:
            raise UserError(f"{path}: sha256 differs from meta.json (damaged); {_FIX}")
        paths.append(str(path))
    return paths


def read_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A verified split, loaded whole: (uint8 images [N, 784], int64 labels [N])."""
    meta = read_meta(folder)
    paths = verified_shards(folder, split, meta)
    dataset = tf.data.TFRecordDataset(paths, compression_type=_TF_COMPRESSION[meta["compression"]])
    images, labels = [], []
    for batch_images, batch_labels in dataset.batch(10_000).map(parse_batch):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    count = meta["splits"][split]["count"]
    if sum(len(x) for x in labels) != count:
        raise UserError(
            f"{folder}: split '{split}' holds {sum(len(x) for x in labels)} examples, meta.json says {count}; {_FIX}"
        )
    return np.concatenate(images), np.concatenate(labels)
