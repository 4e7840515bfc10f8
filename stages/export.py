"""Stage export: save the best checkpoint as a SavedModel with a serving signature, then prove it.

    python -m stages.export --params params.yaml --checkpoint artifacts/checkpoint --data data/prepared \\
        --metrics reports/metrics.json --out artifacts/saved_model --report reports/export.json

Signature serving_default(images: uint8[None, 28, 28]) -> {probabilities: float32[None, 10],
class_ids: int64[None]}. fingerprint.pb's UUID is derived from the content, so the same checkpoint
gives the same bytes. Beside it, `model.tflite` (the same signature for the LiteRT interpreter, which
predict runs without TensorFlow) and `predict.json` (the unsure threshold, chosen on the validation
split). The saved copy is reloaded in a fresh Python process (started first, so that its TensorFlow
start-up overlaps this process's work) and must reproduce evaluate's test accuracy exactly, and the
TFLite copy must give the SavedModel's class on every test image, or the stage fails and nothing is
written.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stages.lib import atomic, cli, params, records

SIGNATURE = "serving_default(images: uint8[None, 28, 28]) -> {probabilities: float32[None, 10], class_ids: int64[None]}"


def evaluated_test_accuracy(metrics_path: str) -> float:
    try:
        return float(
            json.loads(cli.read_regular(metrics_path, 1 << 20, "run `dvc repro evaluate` first"))["test"]["accuracy"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise cli.UserError(f"{metrics_path}: unreadable ({exc}); rerun `dvc repro evaluate`") from None


class FreshScorer:
    """`stages.score_saved_model` in a new Python process, started before the model is saved: it starts
    TensorFlow and reads the test split meanwhile, then loads the saved folder from disk when told where it
    is (`score`), so nothing of this process's graph can help it. `result` waits for its scores."""

    def __init__(self, data: str, probabilities: Path):
        self.probabilities = probabilities
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stages.score_saved_model", "-", data, "--probabilities", str(probabilities)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def score(self, saved_model: Path) -> None:
        try:
            self.process.stdin.write(f"{saved_model}\n")
            self.process.stdin.flush()
        except BrokenPipeError:  # it has already failed; `result` reports why
            pass

    def result(self):
        """(scores, test probabilities) of the saved model, or UserError with the process's last line."""
        out, err = self.process.communicate()
        if self.process.returncode != 0:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise cli.UserError(f"the exported model failed to load in a fresh process: {last}")
        return json.loads(out.strip().splitlines()[-1]), np.load(self.probabilities)

    def stop(self) -> None:
        """End the process if it still runs (this one failed first)."""
        if self.process.returncode is None:
            self.process.kill()
            self.process.communicate()


def directory_bytes(folder: Path) -> int:
    """Size of the exported folder in bytes."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _export(args, expected: float, scorer: FreshScorer) -> tuple[dict, int]:
    """Save, convert and check the model inside the atomic output folder; (the checks' findings, its size)."""
    # Read (and so verify) both splits once, before anything is written: damage is reported as such. The
    # TFLite checks below use them; the fresh process reads the test split itself.
    splits = {name: records.read_split(args.data, name) for name in ("test", "val")}
    tf = cli.import_tensorflow()
    from stages.lib import lite, serving
    from stages.lib import model as mlp

    module = serving.ServingModule(mlp.restore(args.checkpoint))
    with atomic.output_path(args.out, is_dir=True) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        serving.stable_fingerprint(tmp)
        scorer.score(tmp)  # the fresh process scores the SavedModel while this one converts it
        started = time.perf_counter()
        (tmp / lite.TFLITE_NAME).write_bytes(serving.to_tflite(tmp))
        converted_in = time.perf_counter() - started
        scored, reference = scorer.result()
        if scored["accuracy"] != expected:
            raise cli.UserError(
                f"the SavedModel scores {scored['accuracy']} on the test split, "
                f"evaluate reported {expected}; nothing exported"
            )
        found = {**scored, **serving.check_tflite(tmp / lite.TFLITE_NAME, splits, reference)}
        if found["tflite_test_disagreements"]:
            raise cli.UserError(
                f"the TFLite copy gives another class than the SavedModel on {found['tflite_test_disagreements']} "
                "test images; nothing exported"
            )
        atomic.write_json(tmp / lite.SETTINGS_NAME, unsure_settings(found))
        found["converted_in"] = converted_in
        return found, directory_bytes(tmp)


def unsure_settings(found: dict) -> dict:
    """predict.json: the unsure threshold and what it flags on the validation split."""
    return {
        "unsure_below": found["unsure_below"],
        "chosen_on": "validation split: at most 2% of its correct answers fall below",
        "val_errors_flagged": found["val_errors_flagged"],
        "val_correct_flagged": found["val_correct_flagged"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.export",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="the params file (reads model.*)")
    parser.add_argument("--checkpoint", default="artifacts/checkpoint", help="train's best checkpoint")
    parser.add_argument("--data", default="data/prepared", help="prepare's TFRecords (test and validation splits)")
    parser.add_argument("--metrics", default="reports/metrics.json", help="evaluate's metrics, to compare with")
    parser.add_argument("--out", default="artifacts/saved_model", help="the exported model folder to write")
    parser.add_argument("--report", default="reports/export.json", help="the export report to write")
    args = parser.parse_args(argv)
    params.load(args.params)
    expected = evaluated_test_accuracy(args.metrics)

    with tempfile.TemporaryDirectory(prefix="mnist-mlp-export-") as scratch:
        scorer = FreshScorer(args.data, Path(scratch) / "test_probabilities.npy")
        try:
            found, size = _export(args, expected, scorer)
        finally:
            scorer.stop()
    atomic.write_json(
        args.report,
        {
            "saved_model": args.out,
            "bytes": size,
            "signature": SIGNATURE,
            "test_accuracy_evaluate": expected,
            "test_accuracy_saved_model": found["accuracy"],
            "test_accuracy_tflite": found["tflite_test_accuracy"],
            "tflite_max_abs_probability_difference": found["tflite_test_max_abs_difference"],
            **unsure_settings(found),
        },
    )
    print(
        f"export: {args.out} ({size / 1e6:.1f} MB) reproduces evaluate's test accuracy {expected} in a fresh process; "
        f"TFLite copy converted in {found['converted_in']:.1f} s, same classes; unsure below {found['unsure_below']}"
    )


if __name__ == "__main__":
    cli.run_process(main)
