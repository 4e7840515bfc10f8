"""Stage train: the raw-variable MLP, trained by a custom GradientTape loop; keeps the best epoch.

    python -m stages.train --params params.yaml --data data/prepared \\
        --checkpoint artifacts/checkpoint --live reports/train
"""

import argparse
import sys
import time

from stages.lib import atomic, cli, params, records

STARTED = time.perf_counter()  # phase timings go to the log only, never into an output


def _epoch_line(r: dict, epochs: int) -> str:
    return (
        f"epoch {r['epoch']:>{len(str(epochs))}}/{epochs}  loss {r['loss']:.4f}  acc {r['accuracy']:.4f}  "
        f"val_loss {r['val_loss']:.4f}  val_acc {r['val_accuracy']:.4f}  "
        f"lr {r['learning_rate']:.2e}  {r['seconds']:.1f} s"
    )


def _scratch_outputs(args: argparse.Namespace) -> argparse.Namespace:
    """A non-chief worker's outputs: a temporary folder (saving may take part in collective ops, so
    every worker saves; the TF multi-worker guide's pattern), removed when the process exits."""
    import atexit
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="mnist-mlp-worker-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return argparse.Namespace(
        **{
            **vars(args),
            "checkpoint": f"{scratch}/checkpoint",
            "live": f"{scratch}/live",
            "curves": f"{scratch}/curves.png",
        }
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.train",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="the params file (reads model.* and train.*)")
    parser.add_argument("--data", default="data/prepared", help="prepared TFRecords (prepare's output)")
    parser.add_argument("--checkpoint", default="artifacts/checkpoint", help="where the best epoch is saved")
    parser.add_argument("--live", default="reports/train", help="DVCLive folder for the training curves")
    parser.add_argument("--curves", default="reports/training_curves.png", help="picture of the training curves")
    args = parser.parse_args(argv)
    p = params.load(args.params)
    loaded = time.perf_counter()
    train_data = records.read_split(args.data, "train")  # no TensorFlow needed: damage shows at once
    val_data = records.read_split(args.data, "val")
    read = time.perf_counter()

    tf = cli.import_tensorflow()
    from dvclive import Live
    from tqdm import tqdm

    from stages.lib import distribution, figures, training
    from stages.lib import model as mlp

    strategy = distribution.make_strategy(p.train.strategy, p.train.cpu_replicas)  # before any other TF work
    if not distribution.is_chief(strategy):  # every worker trains; only the chief writes the outputs
        args = _scratch_outputs(args)
    tf.random.set_seed(p.train.seed)  # what tf.keras.utils.set_random_seed does for TF, without importing Keras
    tf.config.experimental.enable_op_determinism()
    imported = time.perf_counter()
    steps_per_epoch = len(train_data[1]) // p.train.batch_size
    if steps_per_epoch == 0:
        raise cli.ParamsError(
            f"{args.params}: train.batch_size = {p.train.batch_size}: "
            f"larger than the {len(train_data[1])} training images"
        )
    print(
        f"train: {len(train_data[1])} train / {len(val_data[1])} val images, MLP 784-"
        f"{'-'.join(map(str, p.model.hidden_units))}-10, {p.train.optimizer} lr {p.train.learning_rate:g}, "
        f"batch {p.train.batch_size}, {p.train.epochs} epochs of {steps_per_epoch} steps"
        f"{', XLA' if p.train.jit_compile else ''}; {distribution.describe(p.train.strategy, strategy)}",
        flush=True,
    )

    bar = tqdm(total=steps_per_epoch, unit="step", leave=False) if sys.stderr.isatty() else None

    def progress(n: int) -> None:
        bar.update(n)

    with atomic.output_path(args.live, is_dir=True) as live_dir:
        with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:

            def on_epoch(record: dict) -> None:
                if bar:
                    bar.reset()
                    bar.write(_epoch_line(record, p.train.epochs))
                else:
                    print(_epoch_line(record, p.train.epochs), flush=True)
                live.step = record["epoch"]  # x axis of the curves: epoch, from 1
                for split, prefix in (("train", ""), ("val", "val_")):
                    live.log_metric(f"{split}/loss", record[prefix + "loss"])
                    live.log_metric(f"{split}/accuracy", record[prefix + "accuracy"])
                live.log_metric("learning_rate", record["learning_rate"])
                live.sync()  # not next_step(): the step is the epoch, set above

            result = training.run(train_data, val_data, p.model, p.train, on_epoch, progress if bar else None, strategy)
            finished = time.perf_counter()
            live.summary = {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy}
        if bar:
            bar.close()

        with atomic.output_path(args.checkpoint, is_dir=True) as ckpt_dir:
            tf.train.Checkpoint(model=result.model).write(str(ckpt_dir / "ckpt"))
            mlp.save_architecture(result.model, ckpt_dir)
    with atomic.output_path(args.curves) as tmp:
        figures.training_curves(result.history, result.best_epoch, tmp)
    seconds = sum(r["seconds"] for r in result.history)
    print(
        f"train: best epoch {result.best_epoch} (val_acc {result.best_val_accuracy:.4f}) saved to {args.checkpoint}; "
        f"{seconds:.1f} s training, {seconds / len(result.history):.2f} s/epoch"
    )
    first = result.history[0]["seconds"]
    later = len(result.history) - 1
    rest = f", then {(seconds - first) / later:.2f} s/epoch" if later else ""
    print(
        f"train: phases: start-up {loaded - STARTED:.1f} s, reading shards {read - loaded:.1f} s, imports "
        f"{imported - read:.1f} s, set-up and {len(result.history)} epochs {finished - imported:.1f} s (first epoch "
        f"with compilation {first:.1f} s"
        f"{rest}), outputs {time.perf_counter() - finished:.1f} s"
    )


if __name__ == "__main__":
    cli.run_process(main)
