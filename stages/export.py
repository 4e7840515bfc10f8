"""Stage export: save the best checkpoint as a SavedModel with a serving signature, then prove it.

    python -m stages.export --params params.yaml --checkpoint artifacts/checkpoint --data data/prepared \\
        --metrics reports/metrics.json --out artifacts/saved_model --report reports/export.json

Signature serving_default(images: uint8[None, 28, 28]) -> {probabilities: float32[None, 10],
class_ids: int64[None]}. The saved copy is reloaded in a fresh Python process and must reproduce
evaluate's test accuracy exactly, or the stage fails and nothing is written.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from stages.lib import atomic, cli, params

SIGNATURE = "serving_default(images: uint8[None, 28, 28]) -> {probabilities: float32[None, 10], class_ids: int64[None]}"


def evaluated_test_accuracy(metrics_path: str) -> float:
    try:
        return float(
            json.loads(cli.read_regular(metrics_path, 1 << 20, "run `dvc repro evaluate` first"))["test"]["accuracy"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise cli.UserError(f"{metrics_path}: unreadable ({exc}); rerun `dvc repro evaluate`") from None


def check_in_fresh_process(saved_model: Path, data: str) -> dict:
    """Score the SavedModel in a new interpreter, so nothing of this process's graph can help it."""
    done = subprocess.run(
        [sys.executable, "-m", "stages.score_saved_model", str(saved_model), data], capture_output=True, text=True
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise cli.UserError(f"the exported model failed to load in a fresh process: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def directory_bytes(folder: Path) -> int:
    """Size of the SavedModel, without fingerprint.pb: its random UUID (new on every save) varies in length."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name != "fingerprint.pb")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", default="artifacts/checkpoint")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--metrics", default="reports/metrics.json", help="evaluate's metrics, to compare with")
    parser.add_argument("--out", default="artifacts/saved_model")
    parser.add_argument("--report", default="reports/export.json")
    args = parser.parse_args(argv)
    params.load(args.params)
    expected = evaluated_test_accuracy(args.metrics)

    tf = cli.import_tensorflow()
    from stages.lib import model as mlp
    from stages.lib import records
    from stages.lib.serving import ServingModule

    module = ServingModule(mlp.restore(args.checkpoint))
    # Check the test shards here (sha256 only; the fresh process parses them), so damage is reported as such.
    records.verified_shards(args.data, "test", records.read_meta(args.data))
    with atomic.output_path(args.out, is_dir=True) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        found = check_in_fresh_process(tmp, args.data)
        if found["accuracy"] != expected:
            raise cli.UserError(
                f"the SavedModel scores {found['accuracy']} on the test split, "
                f"evaluate reported {expected}; nothing exported"
            )
        size = directory_bytes(tmp)
    atomic.write_json(
        args.report,
        {
            "saved_model": args.out,
            "bytes": size,
            "signature": SIGNATURE,
            "test_accuracy_evaluate": expected,
            "test_accuracy_saved_model": found["accuracy"],
            "reproduces_evaluate": True,
        },
    )
    print(f"export: {args.out} ({size / 1e6:.1f} MB) reproduces evaluate's test accuracy {expected} in a fresh process")


if __name__ == "__main__":
    cli.run(main)
