"""The prepared-data contract: TFRecord schema, shard writing, meta.json, integrity checks, reading.

Example: `image` = 784 raw uint8 bytes, `label` = int64. Shards per split are listed with their size
and sha256 in meta.json, and every reader checks them before use. meta.json itself is checked whole
before any of it is used (types, counts, shard names that belong to their split and stay in the
folder), and only regular files are opened.
"""

import functools
import hashlib
import json
import re
import struct
import zlib
from pathlib import Path

import google_crc32c
import numpy as np

from stages.lib import cli
from stages.lib.cli import UserError

SCHEMA_VERSION = 1
IMAGE_SIZE = 28 * 28
SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
GZIP_LEVEL = 3  # MNIST's shards 4.5x smaller, written in half the time of zlib's default level 6 (4.8x)
_SUFFIX = {"none": ".tfrecord", "gzip": ".tfrecord.gz"}
_FIX = "rerun `dvc repro prepare`"
MAX_META_BYTES = 64 << 20  # meta.json of 70,000 one-example shards is ~12 MB
MAX_COUNT = 10_000_000  # examples in a split: far above EMNIST's 814,255
_SHA256 = re.compile(r"[0-9a-f]{64}")


# Writing needs no TensorFlow (prepare would pay ~3 s to import it): an Example is two length-delimited
# protobuf fields, and a TFRecord is the framing below. tests/test_records.py checks both byte for byte
# against TensorFlow's own tf.train.Example and tf.io.TFRecordWriter.
def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _entry(key: bytes, feature: bytes) -> bytes:
    """One entry of Features' map<string, Feature>: field 1 of Features, holding key (1) and value (2)."""
    return _field(1, _field(1, key) + _field(2, feature))


def _label_entry(label: int) -> bytes:
    return _entry(b"label", _field(3, _field(1, _varint(label & 0xFFFFFFFFFFFFFFFF))))  # int64_list, packed


def example(image_bytes: bytes, label: int) -> bytes:
    """tf.train.Example {"image": bytes_list [image_bytes], "label": int64_list [label]}, as TensorFlow
    serializes it with deterministic=True (map entries in key order)."""
    image_entry = _entry(b"image", _field(1, _field(1, image_bytes)))  # bytes_list
    return _field(1, image_entry + _label_entry(label))  # Example.features


@functools.cache
def _around_image(image_size: int, label: int) -> tuple[bytes, bytes]:
    """example()'s bytes before and after the image's: they depend only on the image's size and the label,
    so prepare builds them once, not for each of 70,000 images (the image entry ends with the image)."""
    whole, after = example(bytes(image_size), label), _label_entry(label)
    return whole[: len(whole) - len(after) - image_size], after


def serialize(image: np.ndarray, label: int) -> bytes:
    """The Example of one uint8 image (its raw bytes) and its label: `example()`, faster."""
    before, after = _around_image(image.size, int(label))
    return before + image.tobytes() + after


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC-32C of the length, the data, masked CRC-32C of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


# With labels 0..9 (one-byte varints) every Example of a 784-byte image has this length.
EXAMPLE_BYTES = len(example(bytes(IMAGE_SIZE), 0))
RECORD_BYTES = 12 + EXAMPLE_BYTES + 4  # TFRecord framing: length, its CRC, the Example, its CRC


def parse_shard(data: bytes, count: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The `count` examples of one shard's (uncompressed) bytes -> (uint8 images [count, 784], int64
    labels [count]), without TensorFlow. Only the layout `serialize` and `tfrecord` write is accepted:
    with labels 0..9 every record has the same length, so the shard is one [count, record] byte array
    whose framing, Example bytes around each image and CRCs are compared with what they must be."""
    length = EXAMPLE_BYTES
    if len(data) != count * RECORD_BYTES:
        raise UserError(f"{where}: {len(data)} bytes do not hold {count} examples of {RECORD_BYTES} bytes; {_FIX}")
    rows = np.frombuffer(data, np.uint8).reshape(count, RECORD_BYTES)
    labels = rows[:, 12 + length - 1].astype(np.int64)  # a label 0..9 is the Example's last byte
    start = 12 + len(_around_image(IMAGE_SIZE, 0)[0])  # where each image's bytes begin
    header = np.frombuffer(tfrecord(bytes(length))[:12], np.uint8)
    fits = not count or labels.max() <= 9
    for label in range(10):
        before, after = (np.frombuffer(b, np.uint8) for b in _around_image(IMAGE_SIZE, label))
        mine = rows[labels == label]
        fits = fits and (mine[:, :12] == header).all() and (mine[:, 12:start] == before).all()
        fits = fits and (mine[:, start + IMAGE_SIZE : 12 + length] == after).all()
    if not fits:
        raise UserError(f"{where}: not the Examples `prepare` writes (image bytes and a label 0..9); {_FIX}")
    if (_masked_crcs(rows[:, 12 : 12 + length]) != rows[:, 12 + length :].copy().view("<u4")[:, 0]).any():
        raise UserError(f"{where}: a record's CRC-32C does not match its bytes (damaged); {_FIX}")
    return rows[:, start : start + IMAGE_SIZE].copy(), labels


def _masked_crcs(rows: np.ndarray) -> np.ndarray:
    """`_masked_crc` of each row of a uint8 array, as uint32."""
    crcs = np.fromiter((google_crc32c.value(row) for row in rows), np.uint32, len(rows))
    return ((crcs >> 15) | (crcs << 17)) + np.uint32(0xA282EAD8)


def write_split(
    folder: Path, split: str, images: np.ndarray, labels: np.ndarray, shard_size: int, compression: str
) -> dict:
    """Write one split as shards of at most `shard_size` examples; return its meta.json entry."""
    n_shards = max(1, -(-len(images) // shard_size))
    shards = []
    for index in range(n_shards):
        name = f"{split}-{index:05d}-of-{n_shards:05d}{_SUFFIX[compression]}"
        lo, hi = index * shard_size, min(len(images), (index + 1) * shard_size)
        data = b"".join(tfrecord(serialize(image, label)) for image, label in zip(images[lo:hi], labels[lo:hi]))
        if compression == "gzip":  # what TFRecordDataset(compression_type="GZIP") reads; no name, no time stamp
            deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            data = deflate.compress(data) + deflate.flush()
        (folder / name).write_bytes(data)
        shards.append({"file": name, "count": hi - lo, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return {
        "count": len(images),
        "class_counts": np.bincount(labels, minlength=10).tolist(),
        "shards": shards,
    }


class _Invalid(Exception):
    """A meta.json fact that does not hold; its message says which."""


def _count(value, where: str, limit: int = MAX_COUNT) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise _Invalid(f"{where} is {cli.shorten(repr(value), 40)}, expected an integer in 0..{limit}")
    return value


def _shard_name(split: str, index: int, total: int, compression: str) -> str:
    return f"{split}-{index:05d}-of-{total:05d}{_SUFFIX[compression]}"


def _check_split(split: str, entry, compression: str) -> None:
    where = f"splits.{split}"
    if not isinstance(entry, dict):
        raise _Invalid(f"{where} is not an object")
    count = _count(entry.get("count"), f"{where}.count")
    class_counts = entry.get("class_counts")
    if not isinstance(class_counts, list) or len(class_counts) != 10:
        raise _Invalid(f"{where}.class_counts is not a list of 10 counts")
    if sum(_count(c, f"{where}.class_counts") for c in class_counts) != count:
        raise _Invalid(f"{where}.class_counts add up to {sum(class_counts)}, not its count {count}")
    shards = entry.get("shards")
    if not isinstance(shards, list) or not shards or len(shards) > max(count, 1):
        raise _Invalid(f"{where}.shards is not a list of 1..{max(count, 1)} shards")
    total = 0
    for index, shard in enumerate(shards):
        at = f"{where}.shards[{index}]"
        if not isinstance(shard, dict) or set(shard) != {"file", "count", "bytes", "sha256"}:
            raise _Invalid(f"{at} is not an object of file, count, bytes and sha256")
        expected = _shard_name(split, index, len(shards), compression)
        if shard["file"] != expected:  # also keeps the path inside the folder: no separators, no ..
            raise _Invalid(
                f"{at}.file is {cli.shorten(repr(shard['file']), 60)}, expected {expected!r} "
                f"(shard {index + 1} of {len(shards)} of split {split}, compression {compression})"
            )
        total += _count(shard["count"], f"{at}.count")
        _count(shard["bytes"], f"{at}.bytes", limit=1 << 40)
        if not isinstance(shard["sha256"], str) or not _SHA256.fullmatch(shard["sha256"]):
            raise _Invalid(f"{at}.sha256 is not 64 lowercase hex digits")
    if total != count:
        raise _Invalid(f"{where}: its shards hold {total} examples, its count says {count}")


def check_meta(meta) -> None:
    """Every fact readers rely on in meta.json, or _Invalid naming the first that does not hold."""
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        raise _Invalid(f"not schema version {SCHEMA_VERSION}")
    compression = meta.get("compression")
    if not isinstance(compression, str) or compression not in _SUFFIX:
        raise _Invalid(f"unknown compression {cli.shorten(repr(compression), 40)}")
    if meta.get("image_shape", [28, 28]) != [28, 28]:
        raise _Invalid(f"image_shape is {cli.shorten(repr(meta.get('image_shape')), 40)}, expected [28, 28]")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not splits or not set(splits) <= set(SPLITS):
        found = sorted(map(str, splits)) if isinstance(splits, dict) else type(splits).__name__
        raise _Invalid(f"splits are {cli.shorten(repr(found), 60)}, expected some of {list(SPLITS)}")
    for split, entry in splits.items():  # (a reader asking for a split not listed is told so)
        _check_split(split, entry, compression)


def read_meta(folder: str | Path) -> dict:
    """meta.json of a prepared folder, checked whole (check_meta) before any of it is used."""
    path = Path(folder) / META_FILE
    try:
        text = cli.read_regular(path, MAX_META_BYTES, _FIX)
    except UserError as exc:
        if str(exc).startswith(f"{path}: not found"):
            raise UserError(f"{path}: not found; run `dvc repro prepare` first") from None
        raise
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{path}: unreadable ({cli.shorten(str(exc), 100)}); {_FIX}") from None
    try:
        check_meta(meta)
    except _Invalid as exc:
        raise UserError(f"{path}: {exc}; {_FIX}") from None
    return meta


def verified_shards(folder: str | Path, split: str, meta: dict):
    """Yield (path, uncompressed bytes, count) of each of the split's shards, after checking its size and
    sha256 against meta.json (which read_meta has checked: every name is a shard of this split, inside
    `folder`)."""
    folder = Path(folder)
    if split not in meta["splits"]:
        raise UserError(f"{folder / META_FILE}: no '{split}' split listed; {_FIX}")
    for shard in meta["splits"][split]["shards"]:
        path, size = folder / shard["file"], shard["bytes"]
        if not cli.is_regular_file(path):
            found = cli.describe_path(path)
            raise UserError(f"{path}: {'missing' if found == 'not found' else found + ', not a shard'}; {_FIX}")
        if path.stat().st_size != size:
            raise UserError(f"{path}: {path.stat().st_size} bytes, meta.json says {size} (damaged); {_FIX}")
        with cli.open_regular(path, _FIX) as f:
            data = f.read(size + 1)
        if len(data) != size or hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise UserError(f"{path}: sha256 differs from meta.json (damaged); {_FIX}")
        if meta["compression"] == "gzip":
            data = _gunzip(data, shard["count"], path)
        yield path, data, shard["count"]


def _gunzip(data: bytes, count: int, path: Path) -> bytes:
    """A gzip shard's bytes, decompressed to at most what `count` examples take (a gzip bomb stops there)."""
    limit = count * RECORD_BYTES
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(data, limit + 1)
    except zlib.error as exc:
        raise UserError(f"{path}: not a gzip stream ({exc}); {_FIX}") from None
    if len(out) > limit:
        raise UserError(f"{path}: holds more than its {count} examples; {_FIX}")
    if not inflate.eof or inflate.unused_data:
        raise UserError(f"{path}: gzip stream {'with trailing bytes' if inflate.eof else 'cut short'}; {_FIX}")
    return out


def read_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A verified split, loaded whole: (uint8 images [N, 784], int64 labels [N])."""
    meta = read_meta(folder)
    parts = [parse_shard(data, count, str(path)) for path, data, count in verified_shards(folder, split, meta)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
