"""predict as users run it: wall time of whole processes for one picture, and the unsure flag on non-digits.

    python -m benchmarks.bench_predict artifacts/saved_model --rounds 7

Times `python -m stages.predict MODEL one.png` from process start to exit (the MNIST test 7 of the README,
inverted and enlarged to 240x240 RGB), then runs predict once on 24 generated non-digits (letters, pairs of
digits, scribbles) and reports how many are flagged unsure or refused (too little ink, blank).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LETTERS = "AEKMRWXHZ"
PAIRS = ("10", "42", "77", "38", "96", "15", "60", "29")


def text_picture(text: str) -> Image.Image:
    image = Image.new("L", (320, 240), 255)
    ImageDraw.Draw(image).text((160, 120), text, fill=0, anchor="mm", font=ImageFont.load_default(size=150))
    return image


def scribble(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("L", (300, 300), 255)
    points = [tuple(p) for p in rng.uniform(40, 260, size=(int(rng.integers(5, 10)), 2))]
    ImageDraw.Draw(image).line(points, fill=0, width=12, joint="curve")
    return image


def non_digits(folder: Path) -> list[Path]:
    pictures = {f"letter-{c}": text_picture(c) for c in LETTERS}
    pictures.update({f"pair-{p}": text_picture(p) for p in PAIRS})
    pictures.update({f"scribble-{i}": scribble(i) for i in range(7)})
    paths = []
    for name, picture in pictures.items():
        paths.append(folder / f"{name}.png")
        picture.save(paths[-1])
    return paths


def one_digit(folder: Path) -> Path:
    """An MNIST-like 7 drawn dark on white, 240x240 RGB (no dataset needed)."""
    image = Image.new("L", (240, 240), 255)
    ImageDraw.Draw(image).line([(60, 50), (180, 50), (110, 200)], fill=0, width=18, joint="curve")
    path = folder / "seven.png"
    image.convert("RGB").save(path)
    return path


def flag_on_splits(model: str, data: str) -> None:
    """What the unsure threshold flags on the validation split (where export chose it) and the test split."""
    from stages.lib import cli, lite
    from stages.lib import records as prepared

    cli.import_tensorflow()  # the shards are read with tf.data
    threshold = lite.settings(model)["unsure_below"]
    runner = lite.LiteModel(Path(model) / lite.TFLITE_NAME)
    for split in ("val", "test"):
        images, labels = prepared.read_split(data, split)
        probabilities = runner.probabilities(images)
        flagged, right = probabilities.max(1) < threshold, probabilities.argmax(1) == labels
        print(
            f"{split}: threshold {threshold}, {int((~right).sum())} errors, "
            f"{flagged[~right].mean():.2%} of them flagged "
            f"({int(flagged[~right].sum())}); {flagged[right].mean():.2%} of correct answers flagged "
            f"({int(flagged[right].sum())} of {int(right.sum())}); unflagged answers {right[~flagged].mean():.2%} right"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_predict",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="the exported model folder")
    parser.add_argument("--rounds", type=int, default=7, help="timed whole-process runs")
    parser.add_argument("--data", default="data/prepared", help="prepared splits to show the unsure flag on")
    args = parser.parse_args()
    flag_on_splits(args.model, args.data)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seven = one_digit(folder)
        walls, cpus = [], []
        for _ in range(args.rounds):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "stages.predict", args.model, str(seven)], capture_output=True)
            walls.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            assert done.returncode == 0, done.stderr
        print(f"one picture: {done.stdout.decode().strip()}")
        print(f"wall per process: median {statistics.median(walls):.2f} s, " + ", ".join(f"{w:.2f}" for w in walls))
        print(
            f"CPU per process (user+sys): median {statistics.median(cpus):.2f} s; load average {os.getloadavg()[0]:.1f}"
        )

        paths = non_digits(folder)
        done = subprocess.run(
            [sys.executable, "-m", "stages.predict", args.model, *map(str, paths), "--json"], capture_output=True
        )
        records = [json.loads(line) for line in done.stdout.decode().splitlines()]
        for r in records:
            answer = r.get("error") or f"{r['class_id']} ({r['probability']:.0%}){' unsure' if r['unsure'] else ''}"
            print(f"  {Path(r['path']).stem:<12} {answer}")
        caught = sum(bool(r.get("error") or r.get("unsure")) for r in records)
        print(f"non-digits flagged unsure or refused: {caught} of {len(records)}")


if __name__ == "__main__":
    main()
