"""What makes data MNIST (its counts and fingerprint; anything else is refused unless data.verify is false)
and its canonical order: a shuffled delivery gives the same split, and byte-identical shards."""

import numpy as np
import pytest
from conftest import make_mnist, sha256, shuffled, write_idx

from stages.lib import cli, mnist_facts, sources


def test_canonical_order_makes_a_shuffled_copy_identical(tmp_path):
    data = make_mnist(300, 80)
    copy = sources.load_idx(write_idx(tmp_path / "raw", shuffled(data), compress=True))
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


def test_canonical_order_gives_identical_shards(tmp_path, tf):
    from stages.lib import records

    data = make_mnist(300, 80)
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


def _right_counts_wrong_pixels() -> sources.Mnist:
    train_y = np.repeat(np.arange(10), mnist_facts.TRAIN_CLASS_COUNTS).astype(np.int64)
    test_y = np.repeat(np.arange(10), mnist_facts.TEST_CLASS_COUNTS).astype(np.int64)
    return sources.Mnist(np.zeros((60_000, 28, 28), np.uint8), train_y, np.zeros((10_000, 28, 28), np.uint8), test_y)


def test_not_mnist_is_refused_mentioning_verify():
    small = make_mnist(60, 20)
    with pytest.raises(cli.UserError, match=r"not MNIST: 60 train images, expected 60000 .*data\.verify: false"):
        mnist_facts.check_is_mnist(small, mnist_facts.fingerprint(small))
    lookalike = _right_counts_wrong_pixels()  # Fashion-MNIST-like: the counts of MNIST, other images
    mnist_facts.check_format(lookalike)
    with pytest.raises(cli.UserError, match=r"not MNIST: the counts match but .*data\.verify: false") as info:
        mnist_facts.check_is_mnist(lookalike, mnist_facts.fingerprint(lookalike))
    assert "\n" not in str(info.value)
