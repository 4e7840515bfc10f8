"""Score a SavedModel's serving_default signature on the prepared test split (export runs it in a fresh process).

python -m stages.score_saved_model artifacts/saved_model data/prepared   # prints {"accuracy", "errors", "count"}
"""

import argparse
import json

from stages.lib import cli


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.score_saved_model", description=__doc__.splitlines()[0])
    parser.add_argument("saved_model", help="the SavedModel folder")
    parser.add_argument("data", help="the prepared TFRecords (prepare's output)")
    args = parser.parse_args(argv)
    cli.import_tensorflow()
    from stages.lib import serving

    print(json.dumps(serving.score_test_split(args.saved_model, args.data)))


if __name__ == "__main__":
    cli.run(main)
