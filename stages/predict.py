"""Command predict: classify your own pictures of digits with the exported model.

    python -m stages.predict artifacts/saved_model my_digit.png [more.jpg ...] [--json] [--save-input DIR]

Any picture Pillow opens will do: any size up to 36 megapixels, gray, colour or transparent, dark ink
on light paper or light on dark. `to_mnist` turns it into what the model was trained on, made the way
MNIST was: ink bright on black, cropped to the ink, the longer side scaled to 20 px, centred by its
centre of mass in a 28x28 field. The model runs in the LiteRT interpreter (the `model.tflite` export
writes beside the SavedModel), without TensorFlow. An answer whose confidence is below the threshold
export chose on the validation split is flagged unsure. A picture that cannot be used (not a regular
file, not an image, too big, blank, too little ink to be a digit) gets one `error:` line, the others
are still classified, and the exit code is then 1. With --json, every input gets exactly one JSON
line, in the order given: the answer, or {"path", "error"}.
"""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from stages.lib import cli, lite

FIX = "run `dvc repro export`"


def shown(path: str) -> str:
    """`path` as one printable line: bytes that are not UTF-8 as \\xNN, newlines and other controls escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def read_picture(path: str) -> np.ndarray:
    """Open `path` and return its 28x28 MNIST version; UserError (without the name) if that is impossible."""
    from PIL import Image

    from stages.lib.digit_image import MAX_PIXELS, to_mnist

    too_big = f"too big: more than {MAX_PIXELS / 1e6:.0f} megapixels (scale it down first)"
    # only a regular file is opened (cli's one way: a FIFO, /dev/zero or a directory ends at once, said as such)
    with cli.open_regular(path, named=False) as file, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ours is the lower limit
        try:
            with Image.open(file) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > MAX_PIXELS:
                    raise cli.UserError(f"too big: {width}x{height} pixels, {too_big[len('too big: ') :]}")
                image.load()
                picture = image.copy()
        except Image.UnidentifiedImageError:
            raise cli.UserError("not an image (not a format Pillow reads)") from None
        except Image.DecompressionBombError:  # above twice Pillow's limit: refused by Image.open itself
            raise cli.UserError(too_big) from None
        except PermissionError:
            raise cli.UserError("cannot read it (permission denied)") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise cli.UserError(f"not an image ({str(exc).splitlines()[0][:120] if str(exc) else 'damaged'})") from None
    try:
        return to_mnist(picture)
    except ValueError as exc:  # a colour mode Pillow cannot turn into gray
        raise cli.UserError(f"unsupported image ({exc})") from None


def load_model(saved_model: str):
    """A function uint8 [B, 28, 28] -> probabilities [B, 10]: the TFLite copy in LiteRT when the export has
    one, else (an export older than it) the SavedModel's serving_default signature in TensorFlow."""
    tflite = Path(saved_model) / lite.TFLITE_NAME
    if tflite.is_file():
        try:
            return lite.LiteModel(tflite).probabilities
        except (ValueError, RuntimeError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise cli.UserError(f"{shown(str(tflite))}: cannot load the TFLite model ({reason}); {FIX}") from None
    tf = cli.import_tensorflow()
    try:
        loaded = tf.saved_model.load(saved_model)
    except Exception as exc:  # a damaged SavedModel fails in many ways (protobuf, OpError, ValueError...)
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise cli.UserError(f"{shown(saved_model)}: cannot load the SavedModel ({reason}); {FIX}") from None
    if "serving_default" not in loaded.signatures:
        raise cli.UserError(f"{shown(saved_model)}: the SavedModel has no serving_default signature; {FIX}")
    serve = loaded.signatures["serving_default"]
    return lambda images: serve(images=tf.constant(images))["probabilities"].numpy()


def answer(path: str, probs: np.ndarray, unsure_below: float) -> dict:
    """The JSON record of one classified picture: best digit, its probability, the top three, unsure."""
    order = np.argsort(-probs, kind="stable")
    top3 = [[int(d), round(float(probs[d]), 6)] for d in order[:3]]
    return {
        "path": shown(path),
        "class_id": top3[0][0],
        "probability": top3[0][1],
        "top3": top3,
        "unsure": bool(probs[order[0]] < unsure_below),
    }


def report_line(record: dict, as_json: bool, unsure_below: float = 0.0) -> str:
    """One line for one input: its JSON record, or `path: digit (p), runner-up d (p)` [unsure] / the error."""
    if as_json:
        return json.dumps(record)
    if "error" in record:
        return f"{record['path']}: {record['error']}"
    (first, p1), (second, p2) = record["top3"][:2]
    line = f"{record['path']}: {first} ({p1:.1%}), runner-up {second} ({p2:.1%})"
    return line + (f", unsure (confidence below {unsure_below:.0%})" if record["unsure"] else "")


def report_lines(paths: list[str], probabilities: np.ndarray, as_json: bool, unsure_below: float = 0.0) -> list[str]:
    """One line per picture (see report_line)."""
    return [
        report_line(answer(p, probs, unsure_below), as_json, unsure_below) for p, probs in zip(paths, probabilities)
    ]


def save_input(folder: Path, path: str, picture: np.ndarray, taken: set) -> None:
    """Write the 28x28 picture the model saw as folder/<name of the input>.png (numbered if names repeat)."""
    from PIL import Image

    stem = Path(path).stem or "input"
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    Image.fromarray(picture).save(folder / name)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("saved_model", help="the exported model folder, e.g. artifacts/saved_model")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or any picture Pillow opens")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per input and line: the top three digits, or the error"
    )
    parser.add_argument(
        "--save-input", metavar="DIR", default=None, help="write the 28x28 picture the model saw for each input here"
    )
    args = parser.parse_args(argv)
    model_dir = Path(args.saved_model)
    if not any((model_dir / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
        what = "no SavedModel there" if model_dir.is_dir() else "not found"
        raise cli.UserError(f"{shown(args.saved_model)}: {what}; {FIX}")
    save_dir = Path(args.save_input) if args.save_input else None
    if save_dir is not None:
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cli.UserError(f"{shown(args.save_input)}: cannot write there ({exc.strerror.lower()})") from None

    records, pictures, taken = [], {}, set()
    for i, path in enumerate(args.images):
        try:
            pictures[i] = read_picture(path)
            if save_dir is not None:
                save_input(save_dir, path, pictures[i], taken)
            records.append(None)
        except cli.UserError as exc:
            error = shown(str(exc))  # one line, also when it quotes a name (a broken link's target)
            records.append({"path": shown(path), "error": error})
            print(f"error: {shown(path)}: {error}", file=sys.stderr)
    unsure_below = 0.0
    if pictures:
        probabilities = load_model(args.saved_model)(np.stack(list(pictures.values())))
        unsure_below = float(lite.settings(model_dir).get("unsure_below", 0.0))
        for i, probs in zip(pictures, probabilities):
            records[i] = answer(args.images[i], probs, unsure_below)
    lines = [report_line(r, args.json, unsure_below) for r in records if args.json or "error" not in r]
    if lines:
        print("\n".join(lines), flush=True)
    if len(pictures) < len(args.images):
        sys.exit(cli.EXIT_FAILURE)


if __name__ == "__main__":
    cli.run_process(main)
