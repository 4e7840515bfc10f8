"""Score a SavedModel's serving_default signature on the prepared test split (export runs it in a fresh process).

python -m stages.score_saved_model artifacts/saved_model data/prepared   # prints {"accuracy", "errors", "count"}

With --tflite, also the TFLite copy's disagreements with the SavedModel on the test and validation
splits, and the unsure threshold chosen on the validation split (stages.lib.serving.check_export).
"""

import argparse
import json

from stages.lib import cli


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.score_saved_model",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("saved_model", help="the SavedModel folder")
    parser.add_argument("data", help="the prepared TFRecords (prepare's output)")
    parser.add_argument("--tflite", default=None, help="a TFLite copy of the model to compare (none: skip)")
    args = parser.parse_args(argv)
    cli.import_tensorflow()
    from stages.lib import serving

    print(json.dumps(serving.check_export(args.saved_model, args.data, args.tflite)))


if __name__ == "__main__":
    cli.run(main)
