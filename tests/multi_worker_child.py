"""One worker of the multi-worker test (tests/test_distribution.py): TF_CONFIG comes from the
environment; trains the tiny synthetic problem with train.strategy multi_worker and writes its
final weights, its role and its loss history to the .npz named on the command line."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from conftest import (  # noqa: E402  (tests/, this script's folder, is on sys.path)
    TINY_DISTRIBUTED,
    make_params,
    tiny_data,
)


def main(out: str) -> None:
    import tensorflow as tf

    from stages.lib import distribution, training

    p = make_params(**{**TINY_DISTRIBUTED, "train__strategy": "multi_worker"})
    strategy = distribution.make_strategy(p.train.strategy, p.train.cpu_replicas)  # first: before any op
    tf.keras.utils.set_random_seed(p.train.seed)  # as stages/train.py does (it seeds the shuffle as well)
    result = training.run(*tiny_data(), p.model, p.train, strategy=strategy)
    np.savez(
        out,
        chief=distribution.is_chief(strategy),
        replicas=strategy.num_replicas_in_sync,
        losses=np.array([r["loss"] for r in result.history]),
        **{f"w{i}": v.numpy() for i, v in enumerate(result.model.trainable_variables)},
    )


if __name__ == "__main__":
    main(sys.argv[1])
