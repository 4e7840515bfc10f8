"""Stage prepare: load MNIST, check it, split train/val/test, write TFRecord shards and meta.json.

python -m stages.prepare --params params.yaml --out data/prepared
"""

import argparse
import json
import time

from stages.lib import atomic, cli, mnist_facts, params, sources


def prepare_splits(data: sources.Mnist, val_size: int, seed: int) -> dict:
    """{split: (images, labels)} in canonical order, validation drawn with `seed`."""
    (train_x, train_y), (val_x, val_y) = mnist_facts.split_train_val(
        data.train_images, data.train_labels, val_size, seed
    )
    return {
        "train": (train_x, train_y),
        "val": (val_x, val_y),
        "test": mnist_facts.canonical_test(data.test_images, data.test_labels),
    }


def sample_digits(images, labels, per_class: int = 8):
    """The first `per_class` images of each digit, digit by digit."""
    import numpy as np

    picks = [np.flatnonzero(labels == digit)[:per_class] for digit in range(10)]
    order = np.concatenate(picks)
    return images[order], labels[order]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.prepare",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="the params file (reads data.*)")
    parser.add_argument("--out", default="data/prepared", help="folder for the shards and meta.json")
    parser.add_argument("--samples", default="reports/samples.png", help="picture of a few training digits per class")
    args = parser.parse_args(argv)
    cfg = params.load(args.params).data

    start = time.perf_counter()
    data = sources.load(cfg.source, cfg.idx_dir, cfg.tfds_data_dir)
    mnist_facts.check_format(data)
    fingerprint = mnist_facts.fingerprint(data)
    if cfg.verify:
        mnist_facts.check_is_mnist(data, fingerprint)
    print(
        f"prepare: loaded {len(data.train_labels)} train + {len(data.test_labels)} test images from "
        f"source '{cfg.source}' ({'verified MNIST' if cfg.verify else 'not verified'}, fingerprint {fingerprint[:12]})"
    )
    if cfg.val_size >= len(data.train_labels):
        raise cli.ParamsError(
            f"{args.params}: data.val_size = {cfg.val_size}: "
            f"must be smaller than the {len(data.train_labels)} training images"
        )
    splits = prepare_splits(data, cfg.val_size, cfg.seed)

    from stages.lib import records  # writes TFRecords without TensorFlow

    with atomic.output_path(args.out, is_dir=True) as tmp:
        meta = {
            "schema_version": records.SCHEMA_VERSION,
            "source": cfg.source,
            "fingerprint": fingerprint,
            "verified_mnist": cfg.verify,
            "compression": cfg.compression,
            "image_shape": [28, 28],
            "splits": {
                name: records.write_split(tmp, name, images, labels, cfg.shard_size, cfg.compression)
                for name, (images, labels) in splits.items()
            },
        }
        (tmp / records.META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    from stages.lib import figures

    images, labels = sample_digits(*splits["train"])
    with atomic.output_path(args.samples) as tmp:
        figures.digit_grid(
            images, [str(d) for d in labels], tmp, f"Training digits ({cfg.source} source), 8 per class", columns=8
        )
    sizes = ", ".join(
        f"{name} {entry['count']} ({len(entry['shards'])} shards)" for name, entry in meta["splits"].items()
    )
    print(f"prepare: wrote {sizes} to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    cli.run_process(main)
