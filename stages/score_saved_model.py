"""Score a SavedModel's serving_default signature on the prepared test split (export runs it in a fresh process).

python -m stages.score_saved_model artifacts/saved_model data/prepared   # prints {"accuracy", "errors", "count"}

With `-` as the SavedModel, the process starts TensorFlow and reads the test split first, then waits for
the SavedModel's path on stdin: export starts it before saving, so this start-up overlaps export's work,
and the model still reaches it only through the files on disk. --probabilities saves the signature's
test probabilities (.npy), which export compares with the TFLite copy's.
"""

import argparse
import json
import sys

import numpy as np

from stages.lib import cli, records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.score_saved_model",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("saved_model", help="the SavedModel folder; - : read its path from stdin once ready")
    parser.add_argument("data", help="the prepared TFRecords (prepare's output)")
    parser.add_argument("--probabilities", default=None, help="where to save the test probabilities (none: skip)")
    args = parser.parse_args(argv)
    images, labels = records.read_split(args.data, "test")
    cli.import_tensorflow()
    from stages.lib import serving

    saved_model = args.saved_model
    if saved_model == "-":
        saved_model = sys.stdin.readline().strip()
        if not saved_model:
            raise cli.UserError("no SavedModel path on stdin (the exporting process ended first)")
    probabilities = serving.serving_probabilities(serving.load_serving(saved_model), images)
    if args.probabilities:
        np.save(args.probabilities, probabilities)
    print(json.dumps(serving.scores(probabilities, labels)))


if __name__ == "__main__":
    cli.run_process(main)
