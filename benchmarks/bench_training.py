"""Training throughput, side by side in one process: our loop vs Keras `fit` vs a TF Core guide-style loop,
and the machine's matmul bound for the same shapes. Run by hand (results in benchmarks/RESULTS.md):

    python -m benchmarks.bench_training --hidden 700 500 --batch 128 --rounds 3

Each round times one epoch of every contender in turn (after one warm-up epoch each), so a noisy
machine affects all of them alike; the report gives medians and ratios.
"""

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import timing  # noqa: E402
from stages.lib import cli, params  # noqa: E402


def load_train(data_dir: str):
    from stages.lib import records

    return records.read_split(data_dir, "train")


def ours(images, labels, hidden, batch, cfg, deskew=False):
    """The train stage's loop (stages.lib.training.Trainer): returns a function running one epoch."""
    from stages.lib import training
    from stages.lib.model import MLP

    steps = len(labels) // batch
    dataset = training.batches(images, labels, batch, seed=0)
    trainer = training.Trainer(MLP(hidden, seed=0, deskew=deskew), cfg, batch, steps, dataset)
    return timing.trainer_epoch(trainer, steps, cfg.steps_per_call)


def guide_loop(images, labels, hidden, batch):
    """The TF Core MLP guide's shape: per-step Python loop over a tf.data pipeline, step in tf.function."""
    import tensorflow as tf

    from stages.lib import optimizers
    from stages.lib.model import MLP
    from stages.lib.preprocessing import to_model_input

    model = MLP(hidden, seed=0)
    variables = list(model.trainable_variables)
    opt = optimizers.Adam(variables)
    x = to_model_input(images)
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).shuffle(len(labels), seed=0).batch(batch)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, model(xb)))
        opt.apply(tape.gradient(loss, variables), variables, 1e-3)
        return loss

    def epoch():
        for xb, yb in dataset:
            step(xb, yb)

    return epoch


def keras_fit(images, labels, hidden, batch):
    import keras

    x = images.astype("float32") / 255.0
    model = keras.Sequential(
        [keras.Input((784,))] + [keras.layers.Dense(h, activation="relu") for h in hidden] + [keras.layers.Dense(10)]
    )
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def epoch():
        model.fit(x, labels, batch_size=batch, epochs=1, shuffle=True, verbose=0)

    return epoch


def matmul_part(hidden, batch, dtype="float32"):
    """One step's matmuls alone (forward, weight gradients, input gradients) on random operands."""
    import tensorflow as tf

    sizes = [784, *hidden, 10]
    ws = [tf.Variable(tf.cast(tf.random.normal([a, b]), dtype)) for a, b in zip(sizes[:-1], sizes[1:])]
    acts = [tf.cast(tf.random.normal([batch, s]), dtype) for s in sizes]

    def matmuls(step):
        total = tf.constant(0.0)
        for i, w in enumerate(ws):
            parts = [tf.matmul(acts[i], w), tf.matmul(acts[i], acts[i + 1], transpose_a=True)]  # forward, dW
            if i:
                parts.append(tf.matmul(acts[i + 1], w, transpose_b=True))  # dX
            for product in parts:
                total += tf.cast(tf.reduce_sum(product[:1, :1]), tf.float32)
        return total

    return matmuls


def matmul_bound(n_examples, hidden, batch):
    """Only the matmuls of one epoch, back to back, through TensorFlow's own (oneDNN) kernels."""
    return timing.epoch_loop(matmul_part(hidden, batch), n_examples // batch, jit_compile=False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Training throughput comparison")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--hidden", type=int, nargs="+", default=[700, 500])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dropout",
        type=float,
        nargs=2,
        default=[0.0, 0.0],
        metavar=("INPUT", "HIDDEN"),
        help="dropout rates in our loop (the other contenders have none)",
    )
    parser.add_argument("--deskew", action="store_true", help="add our loop with model.deskew as a contender")
    parser.add_argument("--only", nargs="*", help="subset of contenders")
    args = parser.parse_args(argv)
    p = params.load(args.params)
    cfg = p.train.model_copy(
        update={"batch_size": args.batch, "dropout_input": args.dropout[0], "dropout_hidden": args.dropout[1]}
    )
    tf = cli.import_tensorflow()
    tf.keras.utils.set_random_seed(0)
    images, labels = load_train(args.data)

    contenders = {
        "ours (XLA)": lambda: ours(
            images, labels, args.hidden, args.batch, cfg.model_copy(update={"jit_compile": True})
        ),
        "ours (no XLA)": lambda: ours(
            images, labels, args.hidden, args.batch, cfg.model_copy(update={"jit_compile": False})
        ),
        "ours (XLA, deskew)": lambda: ours(
            images, labels, args.hidden, args.batch, cfg.model_copy(update={"jit_compile": True}), deskew=True
        ),
        "guide-style loop": lambda: guide_loop(images, labels, args.hidden, args.batch),
        "keras fit": lambda: keras_fit(images, labels, args.hidden, args.batch),
        "matmul bound": lambda: matmul_bound(len(labels), args.hidden, args.batch),
    }
    if not args.deskew:
        contenders.pop("ours (XLA, deskew)")
    if args.only:
        contenders = {k: v for k, v in contenders.items() if k in args.only}
    times = timing.alternate({name: make() for name, make in contenders.items()}, args.rounds)

    arch = "-".join(map(str, [784, *args.hidden, 10]))
    print(f"one epoch of {len(labels)} images, MLP {arch}, batch {args.batch}, median of {args.rounds} rounds")
    median = {name: statistics.median(t) for name, t in times.items()}
    ref = median.get("ours (XLA)")
    for name, seconds in median.items():
        compared = ref and name not in ("ours (XLA)", "matmul bound")
        ratio = f"  ours (XLA) is {seconds / ref:.2f}x as fast" if compared else ""
        print(f"{name:<18} {seconds:6.2f} s/epoch  (rounds: {', '.join(f'{t:.2f}' for t in times[name])}){ratio}")
    if ref and "matmul bound" in median:
        print(f"ours (XLA) runs at {median['matmul bound'] / ref:.0%} of the matmul bound")
    if ref:  # what a whole training run costs: every round counts, the slow ones (autotune stalls) too
        total = {name: sum(t) for name, t in times.items()}
        for name in total:
            if name not in ("ours (XLA)", "matmul bound"):
                print(
                    f"all {args.rounds} rounds: {name} {total[name]:.2f} s, ours (XLA) {total['ours (XLA)']:.2f} s, "
                    f"{total[name] / total['ours (XLA)']:.2f}x as fast"
                )


if __name__ == "__main__":
    cli.run(main)
