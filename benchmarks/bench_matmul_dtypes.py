"""Could bfloat16 matmuls beat the float32 matmul bound? One epoch of the step's matmuls
(bench_training.matmul_part) in float32 and bfloat16, through TensorFlow's own (oneDNN) kernels and
through XLA, alternating. Run by hand (results in benchmarks/RESULTS.md):

    python -m benchmarks.bench_matmul_dtypes --hidden 700 500 --rounds 3
    python -m benchmarks.bench_matmul_dtypes --hidden 800 800 --batch 256 --rounds 3   # the defaults' shapes
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import timing  # noqa: E402
from benchmarks.bench_training import matmul_part  # noqa: E402
from stages.lib import cli  # noqa: E402

TRAINING_IMAGES = 50_000


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="float32 vs bfloat16 matmuls of one epoch")
    parser.add_argument("--hidden", type=int, nargs="+", default=[700, 500])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    steps = TRAINING_IMAGES // args.batch
    cli.import_tensorflow()
    contenders = {
        f"{dtype}, {engine}": timing.epoch_loop(matmul_part(args.hidden, args.batch, dtype), steps, jit_compile=jit)
        for dtype in ("float32", "bfloat16")
        for engine, jit in (("TF (oneDNN)", False), ("XLA", True))
    }
    times = timing.alternate(contenders, args.rounds)
    print(f"{steps} steps' matmuls at batch {args.batch}, hidden {args.hidden}, median of {args.rounds} rounds")
    timing.print_medians(times, "s/epoch")


if __name__ == "__main__":
    cli.run(main)
