"""stages/evaluate.py's numbers: each split's scores, and what reports/metrics.json keeps of them (issue 15:
the test split in full, validation's accuracy and errors only, so `dvc metrics show` fits 120 columns).
The file a real `dvc repro` writes is checked in tests/test_pipeline.py, the views after experiments in
tests/test_dvc_experience.py (both slow)."""

import json
import math

import numpy as np
import pytest
from conftest import run
from sklearn import metrics as sk

from stages import evaluate

WIDTH = 120  # columns a view may take (issue 15)


def _scores(n: int = 10_000, seed: int = 0) -> dict:
    """split_metrics of random logits for random labels, for both splits: full-data-sized numbers."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    logits = rng.normal(size=(n, 10)).astype(np.float32)
    logits[np.arange(n), labels] += 4  # about 98% right, as the real model
    return {split: evaluate.split_metrics(logits, labels) for split in ("test", "val")}


def test_split_metrics_scores_the_logits():
    labels = np.array([*range(10), 3])
    logits = np.eye(10, dtype=np.float32)[[*range(10), 5]] * 4  # every digit right, then a 3 taken for a 5
    m = evaluate.split_metrics(logits, labels)
    right, wrong = -math.log(math.exp(4) / (math.exp(4) + 9)), -math.log(1 / (math.exp(4) + 9))
    f1 = (8 + 2 * (2 / 3)) / 10  # F1 2/3 for digits 3 (recall 1/2) and 5 (precision 1/2), 1 for the others
    assert m == {
        "accuracy": round(10 / 11, 6),
        "loss": round((10 * right + wrong) / 11, 6),
        "macro_f1": round(f1, 6),
        "errors": 1,
    }


def test_metrics_json_keeps_the_test_split_and_validation_accuracy_and_errors():
    scores = _scores()
    metrics = evaluate.metrics_json(scores)
    assert {split: list(values) for split, values in metrics.items()} == {
        "test": ["accuracy", "loss", "macro_f1", "errors"],
        "val": ["accuracy", "errors"],
    }
    assert metrics["test"] == scores["test"]
    assert metrics["val"] == {"accuracy": scores["val"]["accuracy"], "errors": scores["val"]["errors"]}
    assert json.loads(json.dumps(metrics)) == metrics  # numbers only, as written


def test_dvc_metrics_show_of_that_file_fits_120_columns(tmp_path):
    """The real `dvc metrics show` in a bare DVC project holding only such a metrics file (about 2 s)."""
    run(["dvc", "init", "--no-scm", "-q"], tmp_path)
    config = "[core]\n    no_scm = True\n    analytics = false\n    check_update = false\n"
    (tmp_path / ".dvc/config").write_text(config)  # no phoning home
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - reports/metrics.json\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/metrics.json").write_text(json.dumps(evaluate.metrics_json(_scores())))
    shown = run(["dvc", "metrics", "show"], tmp_path).stdout
    lines = shown.splitlines()
    assert len(lines) == 2 and max(map(len, lines)) <= WIDTH, "\n" + shown
    assert lines[0].split() == ["Path", *(f"{s}.{k}" for s, keys in evaluate.KEPT.items() for k in sorted(keys))]


@pytest.mark.parametrize("case", ["random", "a-digit-never-predicted-and-one-absent", "all-right"])
def test_confusion_and_class_scores_match_scikit_learn(case):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 10, 500))
    if case == "a-digit-never-predicted-and-one-absent":
        labels = np.where(labels == 9, 8, labels)  # no image of a 9
        predicted = np.where(predicted == 3, 4, predicted)  # 3 never predicted
    if case == "all-right":
        predicted = labels.copy()

    confusion = evaluate.confusion_matrix(labels, predicted)
    np.testing.assert_array_equal(confusion, sk.confusion_matrix(labels, predicted, labels=range(10)))
    ours = evaluate.class_scores(confusion)
    theirs = sk.precision_recall_fscore_support(labels, predicted, labels=range(10), zero_division=0)
    for mine, reference in zip(ours, theirs):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-12)
    logits = np.eye(10)[predicted] * 5.0
    expected_f1 = sk.f1_score(labels, predicted, labels=range(10), average="macro", zero_division=0)
    assert evaluate.split_metrics(logits, labels)["macro_f1"] == round(expected_f1, 6)
    assert evaluate.per_class(confusion)["3"]["support"] == int(np.sum(labels == 3))
