"""Test accuracy of the train + evaluate stages over seeds, for params overrides, each run in a scratch
folder (the repo's outputs are left alone). Run by hand from the repo root (results in RESULTS.md):

    python -m benchmarks.accuracy_over_seeds --seeds 0 1 2 -S train.epochs=6

Each -S key=value (YAML value) overrides params.yaml, as `dvc exp run -S` does. Prints one line per
seed (test and validation accuracy, best epoch, the train stage's wall) and the median test accuracy.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def override(raw: dict, assignment: str) -> None:
    key, value = assignment.split("=", 1)
    section, name = key.split(".", 1)
    raw[section][name] = yaml.safe_load(value)


def run_seed(raw: dict, seed: int, data: str, scratch: Path) -> dict:
    raw = json.loads(json.dumps(raw))
    raw["train"]["seed"] = seed
    params = scratch / f"params-{seed}.yaml"
    params.write_text(yaml.safe_dump(raw))
    out = scratch / f"seed-{seed}"
    train = [sys.executable, "-m", "stages.train", "--params", str(params), "--data", data]
    train += ["--checkpoint", f"{out}/checkpoint", "--live", f"{out}/live", "--curves", f"{out}/curves.png"]
    start = time.perf_counter()
    log = subprocess.run(train, check=True, capture_output=True, text=True).stdout
    train_wall = time.perf_counter() - start
    evaluate = [sys.executable, "-m", "stages.evaluate", "--params", str(params), "--data", data]
    evaluate += ["--checkpoint", f"{out}/checkpoint", "--metrics", f"{out}/metrics.json"]
    evaluate += ["--per-class", f"{out}/per_class.json", "--predictions", f"{out}/predictions.csv"]
    evaluate += ["--confusion", f"{out}/confusion.png", "--misclassified", f"{out}/misclassified.png"]
    subprocess.run(evaluate, check=True, capture_output=True)
    metrics = json.loads((out / "metrics.json").read_text())
    best = [line for line in log.splitlines() if "best epoch" in line][-1]
    return {
        "seed": seed,
        "test": metrics["test"]["accuracy"],
        "val": metrics["val"]["accuracy"],
        "best": best.split("best epoch ")[1].split(" ")[0],
        "train_wall": train_wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value, as dvc exp run -S")
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.params).read_text())
    for assignment in args.overrides:
        override(raw, assignment)
    results = []
    with tempfile.TemporaryDirectory(prefix="accuracy-over-seeds-") as scratch:
        for seed in args.seeds:
            r = run_seed(raw, seed, args.data, Path(scratch))
            results.append(r)
            print(
                f"{' '.join(args.overrides) or 'defaults'}  seed {r['seed']}: test {r['test']:.4f}  val {r['val']:.4f}"
                f"  best epoch {r['best']}  train stage {r['train_wall']:.1f} s",
                flush=True,
            )
    print(f"median test accuracy {statistics.median(r['test'] for r in results):.4f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
