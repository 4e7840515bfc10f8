"""The model card: the model on one page of Markdown, written by the evaluate stage.

Pure functions of evaluate's numbers, the params that define the model and data/prepared/meta.json:
no timing, date, host or absolute path, so the same params give the same bytes (a DVC output that
reads well in a pull request comment).
"""

import json
import os
from pathlib import PurePosixPath

import numpy as np

# The params that define the model, as dotted keys: evaluate declares exactly these in dvc.yaml
# (a test keeps the two lists equal). Execution choices (steps_per_call, jit_compile, strategy,
# cpu_replicas) and the data plumbing (paths, shard size, compression) are left out.
PARAMS = (
    "data.source",
    "data.val_size",
    "data.seed",
    "model.hidden_units",
    "model.deskew",
    "train.epochs",
    "train.batch_size",
    "train.learning_rate",
    "train.optimizer",
    "train.momentum",
    "train.nesterov",
    "train.weight_decay",
    "train.lr_schedule",
    "train.warmup_epochs",
    "train.label_smoothing",
    "train.dropout_input",
    "train.dropout_hidden",
    "train.max_norm",
    "train.augment_shift",
    "train.ema_decay",
    "train.seed",
)
CONFUSIONS = 8  # most frequent (true, predicted) pairs listed
HEADLINE = ("accuracy", "loss", "macro_f1", "errors")  # the headline table's metric columns
NOT_KEPT = "—"  # the cell of a metric metrics.json does not hold for that split (validation's loss and macro F1)

NOT_FOR = """\
- **Inputs unlike MNIST digits.** It was trained on 28×28 grey-scale pictures of one handwritten
  digit 0–9, light ink on black, centred by mass. Letters, printed or several digits, photographs,
  drawings or blank pictures still get one of the ten classes, often with a high probability: it has
  no "none of these" answer. The `predict` command converts a user's picture to MNIST's form first, and
  works best on one dark digit on light paper, cropped loosely.
- **Calibrated probabilities.** With label smoothing the top probability rarely exceeds ~0.92, and
  the errors are often confident (see the misclassified picture): do not read the probability as
  the chance of being right.
- **Decisions without a human check** (cheques, forms, postal codes): {errors} of the {images} test
  digits are wrong, and more would be on handwriting unlike MNIST's writers (American Census employees
  and students).
"""


def flat_params(raw: dict) -> dict:
    """The PARAMS keys of a parsed params.yaml (nested dicts), in PARAMS order."""
    out = {}
    for dotted in PARAMS:
        node = raw
        for part in dotted.split("."):
            node = node[part]
        out[dotted] = node
    return out


def top_confusions(matrix, count: int = CONFUSIONS) -> list[tuple[int, int, int]]:
    """The `count` most frequent off-diagonal (true, predicted, n) of a confusion matrix, ties by (true, predicted)."""
    matrix = np.asarray(matrix)
    pairs = [
        (int(matrix[t, p]), t, p)
        for t in range(matrix.shape[0])
        for p in range(matrix.shape[1])
        if t != p and matrix[t, p]
    ]
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
    return [(t, p, n) for n, t, p in pairs[:count]]


def _value(v) -> str:
    """A param or metric exactly as JSON spells it (so the card's numbers are the files' numbers)."""
    return json.dumps(v)


def relative_link(card_path, target) -> str:
    """`target` relative to the card's folder, with forward slashes (Markdown links)."""
    rel = os.path.relpath(target, os.path.dirname(card_path) or ".")
    return PurePosixPath(*rel.split(os.sep)).as_posix()


def render(
    metrics: dict,
    per_class: dict,
    confusion,
    params: dict,
    meta: dict,
    pictures: dict,
) -> str:
    """The card's Markdown.

    metrics: reports/metrics.json's dict; per_class: reports/per_class.json's; confusion: the 10x10 test
    confusion matrix (rows true, columns predicted); params: flat_params(); meta: data/prepared/meta.json;
    pictures: caption -> link relative to the card."""
    hidden = params["model.hidden_units"]
    test, val = metrics["test"], metrics["val"]
    lines = [
        "# Model card: mnist-mlp",
        "",
        f"A multilayer perceptron 784-{'-'.join(str(h) for h in hidden)}-10 (raw `tf.Variable`s, ReLU, softmax "
        f"output{', deskewed inputs' if params['model.deskew'] else ''}) that classifies 28×28 grey-scale "
        f"pictures of handwritten digits. Trained with a custom `tf.GradientTape` loop on MNIST; the best epoch "
        f"by validation accuracy is kept. Written by the `evaluate` stage of this repository's DVC pipeline.",
        "",
        "## Headline metrics",
        "",
        "| split | accuracy | loss | macro F1 | errors | images |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in (("test", test), ("val", val)):
        images = meta.get("splits", {}).get(name, {}).get("count", "?")
        cells = " | ".join(_value(m[key]) if key in m else NOT_KEPT for key in HEADLINE)
        lines.append(f"| {name} | {cells} | {images} |")
    lines += [
        "",
        f"Test accuracy {test['accuracy']:.2%} ({test['errors']} errors). Numbers as in `metrics.json`; for "
        f"validation it keeps accuracy and errors only ({NOT_KEPT} above; its loss per epoch is in the training "
        "curves).",
        "",
        "## Per class (test)",
        "",
        "| digit | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for digit in sorted(per_class, key=int):
        c = per_class[digit]
        cells = " | ".join(_value(c[key]) for key in ("precision", "recall", "f1", "support"))
        lines.append(f"| {digit} | {cells} |")
    lines += ["", "## Most frequent confusions (test)", ""]
    confusions = top_confusions(confusion)
    if confusions:
        lines += ["| true | predicted | count |", "|---|---|---|"]
        lines += [f"| {t} | {p} | {n} |" for t, p, n in confusions]
    else:
        lines.append("No test errors.")
    lines += [
        "",
        "## Params that define the model",
        "",
        "From `params.yaml` (execution settings such as `train.jit_compile` or `train.strategy` are left out).",
        "",
        "| param | value |",
        "|---|---|",
    ]
    lines += [f"| `{key}` | `{_value(value)}` |" for key, value in params.items()]
    splits = meta.get("splits", {})
    lines += [
        "",
        "## Data",
        "",
        f"- source: `{meta.get('source')}` ({'verified' if meta.get('verified_mnist') else 'not verified'} as "
        f"MNIST: shapes, per-digit label counts and content fingerprint)",
        f"- content fingerprint (sha256, order-independent): `{meta.get('fingerprint')}`",
        "- images: " + ", ".join(f"{name} {entry.get('count')}" for name, entry in splits.items()),
        f"- TFRecord schema version {meta.get('schema_version')}, shards checked by sha256 (`data/prepared/meta.json`)",
        "",
        "## Pictures",
        "",
    ]
    lines += [f"- [{caption}]({link})" for caption, link in pictures.items()]
    test_images = splits.get("test", {}).get("count", "?")
    lines += ["", "## What it is not for", "", NOT_FOR.format(errors=test["errors"], images=test_images)]
    return "\n".join(lines)
