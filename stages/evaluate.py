"""Stage evaluate: restore the best checkpoint, score validation and test, write metrics and pictures.

    python -m stages.evaluate --params params.yaml --data data/prepared --checkpoint artifacts/checkpoint \\
        --metrics reports/metrics.json --per-class reports/per_class.json \\
        --predictions reports/predictions.csv --confusion reports/confusion_matrix.png \\
        --misclassified reports/misclassified.png --card reports/model_card.md --curves reports/training_curves.png
"""

import argparse
import io
import json

import numpy as np

from stages.lib import atomic, cli, params, records


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts [10, 10]: row = true digit, column = predicted digit."""
    return np.bincount(labels * 10 + predicted, minlength=100).reshape(10, 10)


def class_scores(confusion: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per digit: precision, recall, F1 and support from the confusion matrix; 0 where undefined (no
    prediction or no image of that digit), as scikit-learn's zero_division=0 (the tests compare)."""
    true_positives = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positives / predicted, 0.0)
        recall = np.where(support > 0, true_positives / support, 0.0)
        f1 = np.where(predicted + support > 0, 2 * true_positives / (predicted + support), 0.0)
    return precision, recall, f1, support


def split_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """accuracy, mean cross-entropy loss, macro F1 and error count of one split's logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    predicted = logits.argmax(axis=1)
    return {
        "accuracy": round(float(np.mean(predicted == labels)), 6),
        "loss": round(float(-log_probs[np.arange(len(labels)), labels].mean()), 6),
        "macro_f1": round(float(class_scores(confusion_matrix(labels, predicted))[2].mean()), 6),
        "errors": int(np.sum(predicted != labels)),
    }


def per_class(confusion: np.ndarray) -> dict:
    precision, recall, f1, support = class_scores(confusion)
    return {
        str(d): {
            "precision": round(float(precision[d]), 6),
            "recall": round(float(recall[d]), 6),
            "f1": round(float(f1[d]), 6),
            "support": int(support[d]),
        }
        for d in range(10)
    }


# What reports/metrics.json keeps of each split's split_metrics. Validation only picks the epoch, so its
# accuracy and error count are what a user compares (its loss per epoch is in DVCLive's reports/train);
# all eight keys made `dvc metrics show` 138 columns wide, over the 120 the views must fit.
KEPT = {"test": ("accuracy", "loss", "macro_f1", "errors"), "val": ("accuracy", "errors")}


def metrics_json(scores: dict) -> dict:
    """reports/metrics.json from {split: split_metrics(...)}: the KEPT keys of each split, in KEPT's order."""
    return {split: {key: scores[split][key] for key in keys} for split, keys in KEPT.items()}


def predictions_csv(labels: np.ndarray, predicted: np.ndarray) -> str:
    out = io.StringIO()
    out.write("actual,predicted\n")
    for actual, guess in zip(labels, predicted):
        out.write(f"{actual},{guess}\n")
    return out.getvalue()


def most_confident_errors(labels: np.ndarray, logits: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the `count` wrong predictions with the highest predicted probability, and those probabilities."""
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(logits.argmax(axis=1) != labels)
    # Stable sort on (-confidence, index) keeps the picture identical across runs.
    chosen = wrong[np.lexsort((wrong, -confidence[wrong]))][:count]
    return chosen, confidence[chosen]


def picture_most_confident_errors(images, labels, logits, path, count: int = 30) -> None:
    from stages.lib import figures

    chosen, confidence = most_confident_errors(labels, logits, count)
    predicted = logits.argmax(axis=1)
    captions = [f"true {labels[i]} → {predicted[i]}\n{p:.0%}" for i, p in zip(chosen, confidence)]
    figures.digit_grid(
        images[chosen],
        captions,
        path,
        f"The {len(chosen)} most confidently wrong test digits (true → predicted, probability)",
    )


def write_card(args, cfg, metrics: dict, classes: dict, confusion) -> None:
    """reports/model_card.md from the numbers just computed, the params and data/prepared/meta.json."""
    from stages.lib import model_card, records

    pictures = {
        "confusion matrix (test)": args.confusion,
        "the most confidently wrong test digits": args.misclassified,
        "training curves": args.curves,
    }
    card = model_card.render(
        # the card shows the numbers as the JSON files hold them
        json.loads(json.dumps(metrics)),
        classes,
        confusion,
        model_card.flat_params(cfg.model_dump()),
        records.read_meta(args.data),
        {caption: model_card.relative_link(args.card, path) for caption, path in pictures.items()},
    )
    atomic.write_text(args.card, card)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.evaluate",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="the params file (reads model.*)")
    parser.add_argument("--data", default="data/prepared", help="prepared TFRecords (prepare's output)")
    parser.add_argument("--checkpoint", default="artifacts/checkpoint", help="train's best checkpoint")
    parser.add_argument("--metrics", default="reports/metrics.json", help="test and validation metrics to write")
    parser.add_argument("--per-class", default="reports/per_class.json", help="per-digit metrics to write")
    parser.add_argument("--predictions", default="reports/predictions.csv", help="actual,predicted per test image")
    parser.add_argument("--confusion", default="reports/confusion_matrix.png", help="confusion matrix picture")
    parser.add_argument("--misclassified", default="reports/misclassified.png", help="picture of test errors")
    parser.add_argument("--card", default="reports/model_card.md", help="the model card (Markdown) to write")
    parser.add_argument("--curves", default="reports/training_curves.png", help="train's picture, linked from the card")
    args = parser.parse_args(argv)
    cfg = params.load(args.params)  # a bad file is reported early by every stage; the model card shows the values

    splits = {name: records.read_split(args.data, name) for name in ("val", "test")}
    cli.import_tensorflow()
    from stages.lib import figures
    from stages.lib import model as mlp

    model = mlp.restore(args.checkpoint)
    logits = {name: mlp.predict_logits(model, images) for name, (images, _) in splits.items()}
    scores = {name: split_metrics(logits[name], splits[name][1]) for name in ("test", "val")}
    metrics = metrics_json(scores)

    test_labels = splits["test"][1]
    test_predicted = logits["test"].argmax(axis=1)
    confusion = confusion_matrix(test_labels, test_predicted)
    classes = per_class(confusion)
    atomic.write_json(args.per_class, classes)
    atomic.write_text(args.predictions, predictions_csv(test_labels, test_predicted))
    with atomic.output_path(args.confusion) as tmp:
        figures.confusion_matrix(
            confusion,
            tmp,
            f"MNIST test set: {metrics['test']['accuracy']:.2%} correct, {metrics['test']['errors']} errors",
        )
    with atomic.output_path(args.misclassified) as tmp:
        picture_most_confident_errors(splits["test"][0], test_labels, logits["test"], tmp)
    write_card(args, cfg, metrics, classes, confusion)
    atomic.write_json(args.metrics, metrics)  # last: its presence means the whole stage completed
    for name, m in scores.items():  # the console shows every score, metrics.json the KEPT ones
        print(
            f"evaluate: {name:<4} accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  "
            f"macro_f1 {m['macro_f1']:.4f}  errors {m['errors']}"
        )


if __name__ == "__main__":
    cli.run_process(main)
