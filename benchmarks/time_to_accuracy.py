"""Time to accuracy: seconds of wall from process start until the validation accuracy first reaches
97.9% (the TF Core guide's final test figure), 98.5% and 99.0%, with the test accuracy of that same
epoch beside it (selection on validation, never on test), median over seeds. Run by hand from the
repo root (results in benchmarks/RESULTS.md):

    python -m benchmarks.time_to_accuracy --seeds 0 1 2

Contenders, each a fresh process, alternated within every seed (so a busy machine slows all alike):
- `stage defaults`: the train stage's own code path (params.yaml, determinism on, the shards read and
  verified, `stages.lib.training.run`) with the defaults; DVCLive, the checkpoint and the curves picture
  come after the last epoch and are not on the way to any threshold;
- `speed preset` and `accuracy preset`: the same with the -S overrides in PRESETS (documented in RESULTS);
- `guide-style loop`: benchmarks/guide_mlp.py (784-700-500-10, plain pixels, Adam 1e-3, batch 128,
  10 epochs, step in tf.function);
- `keras fit`: keras.Sequential on the guide's architecture, same optimizer, batch and epochs.
Every contender also scores the test split after each epoch; that pass is timed and subtracted from the
elapsed time, so it costs nobody.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

START = time.time()
THRESHOLDS = (0.979, 0.985, 0.990)
PRESETS = {
    "stage defaults": [],
    "speed preset": ["train.epochs=2", "train.batch_size=128", "train.learning_rate=0.002"],
    "accuracy preset": ["train.augment_shift=1", "train.epochs=12"],
}


def _emit(epoch: int, val_accuracy: float, test_accuracy: float, excluded: float) -> None:
    line = {"epoch": epoch, "wall": time.time() - excluded, "val": val_accuracy, "test": test_accuracy}
    print(json.dumps(line), flush=True)


def child_stage(params_path: str, data: str, overrides: list[str], seed: int) -> None:
    """The train stage's path up to its last epoch, with a test score after each epoch (not timed)."""
    import yaml

    from stages.lib import cli, params

    raw = yaml.safe_load(open(params_path))
    for assignment in [*overrides, f"train.seed={seed}"]:
        key, value = assignment.split("=", 1)
        section, name = key.split(".", 1)
        raw[section][name] = yaml.safe_load(value)
    p = params.validate(raw)
    tf = cli.import_tensorflow()
    from stages.lib import records, training

    tf.random.set_seed(p.train.seed)  # as stages/train.py: tf.keras.utils.set_random_seed would import Keras (2 s)
    tf.config.experimental.enable_op_determinism()
    train, val = records.read_split(data, "train"), records.read_split(data, "val")
    begin = time.time()
    test = records.read_split(data, "test")
    excluded = [time.time() - begin]
    models = []
    inference = training.inference

    def capture(model):  # the model run() validates: the one scored on test after each epoch
        models.append(model)
        return inference(model)

    training.inference = capture

    def on_epoch(record):
        begin = time.time()
        _, test_accuracy = training.evaluate_arrays(models[0], *test)
        excluded[0] += time.time() - begin
        _emit(record["epoch"], record["val_accuracy"], test_accuracy, excluded[0])

    training.run(train, val, p.model, p.train, on_epoch)


def child_keras(data: str, seed: int, epochs: int = 10) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from stages.lib import records

    keras.utils.set_random_seed(seed)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
        records.read_split(data, split) for split in ("train", "val", "test")
    )
    train_x, val_x, test_x = (x.astype("float32") / 255.0 for x in (train_x, val_x, test_x))
    model = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(700, activation="relu"), keras.layers.Dense(500, activation="relu")]
        + [keras.layers.Dense(10)]
    )
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    excluded = [0.0]

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            begin = time.time()
            test_accuracy = float((model.predict(test_x, batch_size=1000, verbose=0).argmax(1) == test_y).mean())
            excluded[0] += time.time() - begin
            _emit(epoch + 1, float(logs["val_accuracy"]), test_accuracy, excluded[0])

    model.fit(
        train_x, train_y, batch_size=128, epochs=epochs, validation_data=(val_x, val_y), verbose=0, callbacks=[Report()]
    )


def launch(name: str, args, seed: int) -> list[dict]:
    if name in PRESETS:
        command = ["--child", "stage", "--seed", str(seed)] + [f"-S{o}" for o in PRESETS[name]]
        command = [sys.executable, "-m", "benchmarks.time_to_accuracy", *command, "--data", args.data]
    elif name == "guide-style loop":
        command = [sys.executable, "-m", "benchmarks.guide_mlp", "--data", args.data, "--seed", str(seed)]
        command.append("--test-each-epoch")
    else:
        command = [sys.executable, "-m", "benchmarks.time_to_accuracy", "--child", "keras", "--seed", str(seed)]
        command += ["--data", args.data]
    started = time.time()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    epochs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for e in epochs:
        e["elapsed"] = e["wall"] - started
    return epochs


def first_reaching(epochs: list[dict], threshold: float):
    return next((e for e in epochs if e["val"] >= threshold), None)


def summarize(names: list[str], runs: dict) -> None:
    print("\n| contender | " + " | ".join(f"val ≥ {t:.1%}: s (test)" for t in THRESHOLDS) + " |")
    print("|---|" + "---|" * len(THRESHOLDS))
    medians = {}
    for name, seeds in runs.items():
        cells = []
        for t in THRESHOLDS:
            hits = [first_reaching(epochs, t) for epochs in seeds]
            reached = [h for h in hits if h]
            if len(reached) * 2 <= len(hits):  # the median seed did not reach it
                cells.append(f"not reached ({len(reached)}/{len(hits)} seeds)")
                continue
            seconds = statistics.median(h["elapsed"] if h else float("inf") for h in hits)
            test = statistics.median(h["test"] for h in reached)
            medians[name, t] = seconds
            cells.append(f"{seconds:.1f} ({test:.2%}, {len(reached)}/{len(hits)} seeds)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for t in THRESHOLDS:
        base = medians.get(("guide-style loop", t))
        for name in names:
            if base and (name, t) in medians and name != "guide-style loop":
                print(f"val ≥ {t:.1%}: {name} {base / medians[name, t]:.2f}× sooner than the guide-style loop")
    if "guide-style loop" in runs:
        print_seed_ratios(runs, THRESHOLDS[0])


def print_seed_ratios(runs: dict, threshold: float) -> None:
    """Seed by seed, how much sooner each contender reaches `threshold` than the guide-style loop. Where
    the guide never reaches it, its whole run (every epoch it has) is a lower bound: "at least"."""
    for name, seeds in runs.items():
        if name == "guide-style loop":
            continue
        cells = []
        for ours, guide in zip(seeds, runs["guide-style loop"]):
            mine, theirs = first_reaching(ours, threshold), first_reaching(guide, threshold)
            if not mine:
                cells.append("not reached")
            elif theirs:
                cells.append(f"{theirs['elapsed'] / mine['elapsed']:.2f}×")
            else:
                cells.append(f"≥ {guide[-1]['elapsed'] / mine['elapsed']:.2f}× (guide: never)")
        print(f"val ≥ {threshold:.1%}, {name} against the guide-style loop, per seed: " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", help="contenders to run (default: all)")
    parser.add_argument("--child", choices=["stage", "keras"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("-S", dest="overrides", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "stage":
        return child_stage(args.params, args.data, args.overrides, args.seed)
    if args.child == "keras":
        return child_keras(args.data, args.seed)

    names = args.only or [*PRESETS, "guide-style loop", "keras fit"]
    runs = {name: [] for name in names}
    for seed in args.seeds:
        for name in names:
            epochs = launch(name, args, seed)
            runs[name].append(epochs)
            curve = "  ".join(f"{e['epoch']}:{e['elapsed']:.1f}s/{e['val']:.4f}/{e['test']:.4f}" for e in epochs)
            print(f"seed {seed} {name} (epoch:seconds/val/test): {curve}", flush=True)
        summarize(names, runs)  # after every seed, so an interrupted run still reports


if __name__ == "__main__":
    main()
