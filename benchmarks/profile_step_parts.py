"""Where one training epoch's time goes: the full step vs its parts, on synthetic batches. Run by hand
(results in benchmarks/RESULTS.md):

    python -m benchmarks.profile_step_parts --hidden 700 500 --rounds 3

Each part runs 390 times (one epoch at batch 128) inside one tf.function call, alternating rounds:
- step (XLA):     forward, tape, gradients, our Adam update, compiled with XLA;
- Adam (XLA):     our Adam update alone, from fixed gradients;
- matmuls (XLA):  only the step's matmuls (bench_training.matmul_part), compiled with XLA;
- matmuls (TF):   the same matmuls through TensorFlow's own (oneDNN) kernels: bench_training's matmul bound.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import timing  # noqa: E402
from benchmarks.bench_training import matmul_part  # noqa: E402
from stages.lib import cli  # noqa: E402

STEPS, BATCH = 390, 128


def contenders(hidden):
    import tensorflow as tf

    from stages.lib import optimizers
    from stages.lib.model import MLP

    model = MLP(hidden, seed=0)
    variables = list(model.trainable_variables)
    adam = optimizers.Adam(variables)
    x = tf.random.uniform([BATCH, 784])
    y = tf.random.uniform([BATCH], maxval=10, dtype=tf.int64)
    fixed_grads = [tf.random.normal(v.shape) * 1e-3 for v in variables]

    def step(_):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x)))
        adam.apply(tape.gradient(loss, variables), variables, 1e-4)
        return loss

    def adam_only(_):
        adam.apply(fixed_grads, variables, 1e-4)
        return tf.constant(0.0)

    matmuls = matmul_part(hidden, BATCH)
    return {
        "step (XLA)": timing.epoch_loop(step, STEPS, jit_compile=True),
        "Adam (XLA)": timing.epoch_loop(adam_only, STEPS, jit_compile=True),
        "matmuls (XLA)": timing.epoch_loop(matmuls, STEPS, jit_compile=True),
        "matmuls (TF)": timing.epoch_loop(matmuls, STEPS, jit_compile=False),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Parts of a training epoch")
    parser.add_argument("--hidden", type=int, nargs="+", default=[700, 500])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cli.import_tensorflow()
    times = timing.alternate(contenders(args.hidden), args.rounds)
    arch = "-".join(map(str, [784, *args.hidden, 10]))
    print(f"{STEPS} steps of batch {BATCH}, MLP {arch}, median of {args.rounds} rounds")
    timing.print_medians(times, "s/epoch")


if __name__ == "__main__":
    cli.run(main)
