"""TFRecord compression: shard size and full read time (verify sha256 + parse) for none vs gzip.

    python -m benchmarks.bench_compression --rounds 5

Prepares both variants into a temporary folder with `python -m stages.prepare`, then times
`records.read_split` on each, alternating, and prints medians.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from stages.lib import cli


def prepare(folder: Path, compression: str, params_path: str) -> Path:
    raw = yaml.safe_load(Path(params_path).read_text())
    raw["data"]["compression"] = compression
    params_file = folder / f"params-{compression}.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    out = folder / compression
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.prepare",
            "--params",
            str(params_file),
            "--out",
            str(out),
            "--samples",
            str(folder / f"samples-{compression}.png"),
        ],
        check=True,
        capture_output=True,
    )
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    cli.import_tensorflow()
    from stages.lib import records

    with tempfile.TemporaryDirectory() as tmp:
        folders = {c: prepare(Path(tmp), c, args.params) for c in ("none", "gzip")}
        times = {c: [] for c in folders}
        for _ in range(args.rounds):
            for compression, folder in folders.items():
                start = time.perf_counter()
                for split in records.SPLITS:
                    records.read_split(folder, split)
                times[compression].append(time.perf_counter() - start)
        print("| compression | shards total | read all splits (verify + parse), median |")
        print("|---|---|---|")
        for compression, folder in folders.items():
            size = sum(f.stat().st_size for f in folder.iterdir() if f.name != records.META_FILE)
            print(f"| {compression} | {size / 1e6:.1f} MB | {statistics.median(times[compression]):.2f} s |")


if __name__ == "__main__":
    cli.run(main)
