"""Command predict: classify your own pictures of digits with the exported SavedModel.

    python -m stages.predict artifacts/saved_model my_digit.png [more.jpg ...] [--json]

Any picture Pillow opens will do: any size, gray, colour or transparent, dark ink on light paper or
light on dark. `to_mnist` turns it into what the model was trained on, made the way MNIST was: ink
bright on black, cropped to the ink, the longer side scaled to 20 px, centred by its centre of mass in
a 28x28 field. A picture that cannot be used gets one `error:` line, the others are still classified,
and the exit code is then 1.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from stages.lib import cli
from stages.lib.digit_image import to_mnist


def read_picture(path: str) -> np.ndarray:
    """Open `path` and return its 28x28 MNIST version; UserError (naming the file) if that is impossible."""
    file = Path(path)
    if not file.exists():
        raise cli.UserError(f"{path}: not found")
    if file.is_dir():
        raise cli.UserError(f"{path}: not an image (a folder)")
    try:
        with Image.open(file) as image:
            image.load()
            picture = image.copy()
    except Image.UnidentifiedImageError:
        raise cli.UserError(f"{path}: not an image (not a format Pillow reads)") from None
    except PermissionError:
        raise cli.UserError(f"{path}: cannot read it (permission denied)") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise cli.UserError(
            f"{path}: not an image ({str(exc).splitlines()[0][:120] if str(exc) else 'damaged'})"
        ) from None
    try:
        return to_mnist(picture)
    except cli.UserError as exc:
        raise cli.UserError(f"{path}: {exc}") from None
    except ValueError as exc:  # a colour mode Pillow cannot turn into gray
        raise cli.UserError(f"{path}: unsupported image ({exc})") from None


def load_signature(saved_model: str):
    """The serving_default signature of the SavedModel in `saved_model`."""
    import tensorflow as tf

    fix = "run `dvc repro export`"
    try:
        loaded = tf.saved_model.load(saved_model)
    except Exception as exc:  # a damaged SavedModel fails in many ways (protobuf, OpError, ValueError...)
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise cli.UserError(f"{saved_model}: cannot load the SavedModel ({reason}); {fix}") from None
    if "serving_default" not in loaded.signatures:
        raise cli.UserError(f"{saved_model}: the SavedModel has no serving_default signature; {fix}")
    return loaded.signatures["serving_default"]


def report_lines(paths: list[str], probabilities: np.ndarray, as_json: bool) -> list[str]:
    """One line per picture: the best digit and the runner-up, or a JSON object with the top three."""
    lines = []
    for path, probs in zip(paths, probabilities):
        order = np.argsort(-probs, kind="stable")
        if as_json:
            top3 = [[int(d), round(float(probs[d]), 6)] for d in order[:3]]
            lines.append(json.dumps({"path": path, "class_id": top3[0][0], "probability": top3[0][1], "top3": top3}))
        else:
            first, second = order[:2]
            lines.append(f"{path}: {first} ({probs[first]:.1%}), runner-up {second} ({probs[second]:.1%})")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved_model", help="the exported model folder, e.g. artifacts/saved_model")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or any picture Pillow opens")
    parser.add_argument("--json", action="store_true", help="one JSON object per line, with the top three digits")
    args = parser.parse_args(argv)
    model_dir = Path(args.saved_model)
    if not any((model_dir / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
        what = "no SavedModel there" if model_dir.is_dir() else "not found"
        raise cli.UserError(f"{args.saved_model}: {what}; run `dvc repro export`")

    good, pictures, failed = [], [], 0
    for path in args.images:
        try:
            pictures.append(read_picture(path))
            good.append(path)
        except cli.UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    if pictures:
        tf = cli.import_tensorflow()
        serve = load_signature(args.saved_model)
        probabilities = serve(images=tf.constant(np.stack(pictures)))["probabilities"].numpy()
        print("\n".join(report_lines(good, probabilities, args.json)), flush=True)
    if failed:
        sys.exit(cli.EXIT_FAILURE)


if __name__ == "__main__":
    cli.run(main)
