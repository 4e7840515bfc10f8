"""What makes MNIST MNIST: its shapes and label counts, a content fingerprint, a canonical order.

Every source goes through these, so the prepared data does not depend on where (or in which order)
the images arrived.
"""

import hashlib

import numpy as np

from stages.lib.cli import UserError
from stages.lib.sources import Mnist

TRAIN_CLASS_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_CLASS_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
# sha256 of the sorted per-example digests of the 70,000 real MNIST examples (see fingerprint()).
MNIST_FINGERPRINT = "4b5fd6225e633c8a198be0b61416e14bc5905a28bfc1ae2ec99547429b8d4be2"


def class_counts(labels: np.ndarray, num_classes: int = 10) -> list[int]:
    return np.bincount(labels, minlength=num_classes).tolist()


def check_format(data: Mnist) -> None:
    """Shapes, dtypes and label range: what every MNIST-format dataset (Fashion-MNIST too) has."""
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise UserError(f"{split} images have shape {images.shape} {images.dtype}, expected (N, 28, 28) uint8")
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(
                f"{split}: {len(images)} images but labels of shape {labels.shape} {labels.dtype}, "
                f"expected ({len(images)},) integers"
            )
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise UserError(f"{split} labels range over {labels.min()}..{labels.max()}, expected 0..9")


def check_is_mnist(data: Mnist, fingerprint_hex: str) -> None:
    """Refuse data that is not the real MNIST, naming the first fact that differs."""
    for split, expected in (("train", TRAIN_CLASS_COUNTS), ("test", TEST_CLASS_COUNTS)):
        labels = getattr(data, f"{split}_labels")
        if len(labels) != sum(expected):
            raise UserError(
                f"not MNIST: {len(labels)} {split} images, expected {sum(expected)} "
                "(set data.verify: false for an MNIST-format dataset of your own)"
            )
        found = class_counts(labels)
        if tuple(found) != expected:
            raise UserError(
                f"not MNIST: {split} label counts {found}, expected {list(expected)} "
                "(set data.verify: false for an MNIST-format dataset of your own)"
            )
    if fingerprint_hex != MNIST_FINGERPRINT:
        raise UserError(
            f"not MNIST: the counts match but the images or labels differ (content fingerprint "
            f"{fingerprint_hex[:16]}..., MNIST's is {MNIST_FINGERPRINT[:16]}...); "
            "set data.verify: false for an MNIST-format dataset of your own"
        )


def example_digests(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """sha256 of each (label, image) pair: one byte of label, then the 784 pixels.

    Labels must be in 0..255 (check_format guarantees 0..9)."""
    flat = images.reshape(len(images), int(np.prod(images.shape[1:])))  # not -1: that fails for N = 0
    return [hashlib.sha256(bytes([label]) + row.tobytes()).digest() for row, label in zip(flat, labels)]


def canonical_order(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices that sort examples by content, so any delivery order gives the same result."""
    digests = example_digests(images, labels)
    return np.array(sorted(range(len(digests)), key=digests.__getitem__), dtype=np.int64)


def fingerprint(data: Mnist) -> str:
    """Order-independent sha256 of all (image, label) pairs, train and test kept apart."""
    total = hashlib.sha256()
    for split in ("train", "test"):
        digests = example_digests(getattr(data, f"{split}_images"), getattr(data, f"{split}_labels"))
        total.update(split.encode())
        for digest in sorted(digests):
            total.update(digest)
    return total.hexdigest()


def split_train_val(
    images: np.ndarray, labels: np.ndarray, val_size: int, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Canonical order, then a seeded permutation: the last `val_size` go to validation."""
    order = canonical_order(images, labels)
    shuffled = order[np.random.default_rng(seed).permutation(len(order))]
    train_idx, val_idx = shuffled[: len(order) - val_size], shuffled[len(order) - val_size :]
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


def canonical_test(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = canonical_order(images, labels)
    return images[order], labels[order]
