"""Ways round the loop's remaining gap to the matmul bound that did not pay, kept so the finding can
be rerun. Our training loop (stages.lib.training.Trainer, one XLA step) against variants of it, one epoch
each, alternating. Run by hand (results in benchmarks/RESULTS.md):

    python -m benchmarks.bench_step_variants --rounds 3

- split step:          gradients through TensorFlow's own (oneDNN) kernels, the update compiled by XLA;
- split step, bf16:    the same with bfloat16 matmuls (float32 weights, cast per matmul);
- in-graph batches:    no tf.data; each epoch a permutation in a variable, batches gathered in the graph;
- one constant batch:  no input at all, the same batch every step (what input could cost at most).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import timing  # noqa: E402
from benchmarks.bench_training import load_train, matmul_bound  # noqa: E402
from stages.lib import cli, params  # noqa: E402

BATCH, HIDDEN = 128, [700, 500]


def contenders(images, labels, cfg):
    import tensorflow as tf

    from stages.lib import model as mlp
    from stages.lib import training

    steps = len(labels) // BATCH

    class Bfloat16MLP(mlp.MLP):
        def __call__(self, x, dropout_input=0.0, dropout_hidden=0.0, seed=None, rng_alg=mlp.RNG_TF):
            last = len(self.weights) - 1
            for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
                x = tf.cast(tf.matmul(tf.cast(x, tf.bfloat16), tf.cast(w, tf.bfloat16)), tf.float32) + b
                x = tf.nn.relu(x) if layer < last else x
            return x

    def split_step(trainer):
        gradients = tf.function(trainer._gradients, jit_compile=False)
        update = tf.function(trainer._update, jit_compile=True)

        def step(images, labels, seed):
            loss, correct, grads = gradients(images, labels, seed)
            update(grads)
            return loss, correct

        trainer.step, trainer.rng_alg = step, mlp.RNG_TF

    def batches_from(source):
        """Replace the trainer's tf.data batches by source(trainer) -> (images, labels)."""

        def patch(trainer):
            def steps(n):
                losses, correct = tf.TensorArray(tf.float32, size=n), tf.constant(0, tf.int64)
                for i in tf.range(n):
                    images, labels = source(trainer)
                    seed = tf.stack([tf.constant(0, tf.int64), trainer.optimizer.iterations + 1])
                    loss, batch_correct = trainer.step(images, labels, seed)
                    losses, correct = losses.write(i, loss), correct + batch_correct
                return losses.stack(), correct

            trainer.steps = tf.function(steps, input_signature=[tf.TensorSpec([], tf.int32)])

        return patch

    all_images, all_labels = tf.constant(images), tf.constant(labels)
    permutation = tf.Variable(tf.zeros([steps * BATCH], tf.int64))

    def gathered(trainer):
        k = trainer.optimizer.iterations % steps
        if k == 0:
            shuffled = tf.random.experimental.stateless_shuffle(
                tf.range(len(labels), dtype=tf.int64),
                seed=tf.stack([tf.constant(0, tf.int64), trainer.optimizer.iterations]),
            )
            permutation.assign(shuffled[: steps * BATCH])
        index = permutation[k * BATCH : (k + 1) * BATCH]
        return tf.gather(all_images, index), tf.gather(all_labels, index)

    def constant(trainer):
        return all_images[:BATCH], all_labels[:BATCH]

    def epoch_of(model_class=mlp.MLP, patch=lambda trainer: None):
        dataset = training.batches(images, labels, BATCH, seed=0)
        trainer = training.Trainer(model_class(HIDDEN, seed=0), cfg, BATCH, steps, dataset)
        patch(trainer)
        return timing.trainer_epoch(trainer, steps, cfg.steps_per_call)

    return {
        "ours (one XLA step)": epoch_of(),
        "split step": epoch_of(patch=split_step),
        "split step, bf16": epoch_of(Bfloat16MLP, split_step),
        "in-graph batches": epoch_of(patch=batches_from(gathered)),
        "one constant batch": epoch_of(patch=batches_from(constant)),
        "matmul bound": matmul_bound(len(labels), HIDDEN, BATCH),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Variants of the training step")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    p = params.load(args.params)
    cfg = p.train.model_copy(update={"batch_size": BATCH, "jit_compile": True})
    tf = cli.import_tensorflow()
    tf.keras.utils.set_random_seed(0)
    times = timing.alternate(contenders(*load_train(args.data), cfg), args.rounds)
    print(f"one epoch, MLP 784-{'-'.join(map(str, HIDDEN))}-10, batch {BATCH}, median of {args.rounds} rounds")
    timing.print_medians(times, digits=2)


if __name__ == "__main__":
    cli.run(main)
