"""Whole processes side by side: `python -m stages.train` against benchmarks/guide_mlp.py (the TF Core
guide's script), both on the guide's setup (784-700-500-10, plain pixels, Adam 1e-3 constant, no label
smoothing, batch 128, 10 epochs, validation each epoch), each a fresh process, alternated. Run by hand
from the repo root (results in benchmarks/RESULTS.md):

    python -m benchmarks.whole_process --rounds 3

Prints each process's wall (start to exit), the medians and their ratio. The train stage writes its
outputs to a scratch folder.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

GUIDE_SETUP = {
    "model": {"hidden_units": [700, 500], "deskew": False},
    "train": {
        **{"epochs": 10, "batch_size": 128, "learning_rate": 0.001},
        **{"lr_schedule": "constant", "label_smoothing": 0.0},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default="data/prepared")
    args = parser.parse_args()
    raw = yaml.safe_load(Path("params.yaml").read_text())
    for section, values in GUIDE_SETUP.items():
        raw[section].update(values)
    times = {"train stage": [], "guide script": []}
    with tempfile.TemporaryDirectory(prefix="whole-process-") as scratch:
        params = Path(scratch) / "params.yaml"
        params.write_text(yaml.safe_dump(raw))
        commands = {
            "train stage": [sys.executable, "-m", "stages.train", "--params", str(params), "--data", args.data]
            + ["--checkpoint", f"{scratch}/ckpt", "--live", f"{scratch}/live", "--curves", f"{scratch}/curves.png"],
            "guide script": [sys.executable, "-m", "benchmarks.guide_mlp", "--data", args.data],
        }
        for round_ in range(args.rounds):
            for name, command in commands.items():
                start = time.perf_counter()
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                times[name].append(time.perf_counter() - start)
                last = out.strip().splitlines()[-1]
                print(f"round {round_ + 1} {name}: {times[name][-1]:.1f} s  ({last})", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name}: median {medians[name]:.1f} s (rounds: {', '.join(f'{s:.1f}' for s in t)})")
    print(f"train stage is {medians['guide script'] / medians['train stage']:.2f}x as fast as the guide script")


if __name__ == "__main__":
    main()
