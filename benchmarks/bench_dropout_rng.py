"""Cost of dropout masks by random-number algorithm, inside and outside XLA. Run by hand (results in
benchmarks/RESULTS.md):

    python -m benchmarks.bench_dropout_rng --rounds 3

One "epoch" is 390 masks of [128, 3856] (batch 128 of a 784-1024-1024-1024 MLP: the input and the
three hidden layers), each drawn in its own compiled call as in the training step, from a fresh seed.
stages/lib/model.py picks threefry under XLA and philox outside it from these figures.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import timing  # noqa: E402
from stages.lib import cli  # noqa: E402

STEPS, SHAPE = 390, (128, 784 + 3 * 1024)


def epoch_of_masks(alg: str, jit_compile: bool):
    import tensorflow as tf

    from stages.lib.model import dropout

    x = tf.ones(SHAPE)

    def one_mask(step):
        seed = tf.random.experimental.stateless_fold_in(tf.constant([0, 1], tf.int64), step)
        return tf.reduce_sum(dropout(x, 0.5, seed, alg))

    return timing.epoch_loop(one_mask, STEPS, jit_compile)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Dropout mask cost per random-number algorithm")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cli.import_tensorflow()
    contenders = {
        "XLA, auto_select (TF's default)": epoch_of_masks("auto_select", True),
        "XLA, philox": epoch_of_masks("philox", True),
        "XLA, threefry (ours under XLA)": epoch_of_masks("threefry", True),
        "no XLA, philox (ours without XLA)": epoch_of_masks("philox", False),
    }
    times = timing.alternate(contenders, args.rounds)
    print(f"{STEPS} dropout masks of {list(SHAPE)}, median of {args.rounds} rounds")
    timing.print_medians(times, "s")


if __name__ == "__main__":
    cli.run(main)
