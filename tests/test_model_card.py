"""stages/lib/model_card.py: the card's numbers are the JSON files' numbers, its bytes depend only on its
inputs, and evaluate declares exactly the params the card shows. (The card written by a real `dvc repro`,
twice, is checked in tests/test_dvc_experience.py.)"""

import json
import re

import numpy as np
import yaml
from conftest import REPO, base_params

from stages.lib import model_card

METRICS = {
    "test": {"accuracy": 0.9893, "loss": 0.123283, "macro_f1": 0.989232, "errors": 107},
    "val": {"accuracy": 0.9881, "errors": 119},  # what evaluate keeps of validation (issue 15)
}
META = {
    "schema_version": 1,
    "source": "bundled",
    "fingerprint": "ab" * 32,
    "verified_mnist": True,
    "compression": "gzip",
    "splits": {"train": {"count": 50000}, "val": {"count": 10000}, "test": {"count": 10000}},
}
PICTURES = {"confusion matrix (test)": "confusion_matrix.png", "training curves": "training_curves.png"}


def _card_confusion():
    matrix = np.diag(np.full(10, 95))
    matrix[4, 9], matrix[9, 4], matrix[7, 2], matrix[3, 5], matrix[5, 3] = 7, 5, 5, 2, 1
    return matrix


def _per_class(matrix):
    out = {}
    for d in range(10):
        tp = int(matrix[d, d])
        precision, recall = tp / matrix[:, d].sum(), tp / matrix[d].sum()
        out[str(d)] = {
            "precision": round(float(precision), 6),
            "recall": round(float(recall), 6),
            "f1": round(float(2 * precision * recall / (precision + recall)), 6),
            "support": int(matrix[d].sum()),
        }
    return out


def _card(**changes):
    matrix = _card_confusion()
    args = dict(
        metrics=METRICS,
        per_class=_per_class(matrix),
        confusion=matrix,
        params=model_card.flat_params(base_params()),
        meta=META,
        pictures=PICTURES,
    )
    args.update(changes)
    return model_card.render(**args)


def _table(card: str, heading: str) -> list[list[str]]:
    section = card.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_headline_metrics_are_the_metrics_files_numbers():
    rows = {row[0]: row for row in _table(_card(), "Headline metrics")}
    for split in ("test", "val"):
        m = METRICS[split]
        shown = dict(zip(("accuracy", "loss", "macro_f1", "errors"), rows[split][1:5]))
        assert {key: json.loads(cell) for key, cell in shown.items() if key in m} == m  # every number of the file
        assert {key for key, cell in shown.items() if cell == "—"} == set(shown) - set(m)  # and nothing else
        assert int(rows[split][5]) == META["splits"][split]["count"]
    assert rows["val"][2:4] == ["—", "—"]  # validation's loss and macro F1 are not in metrics.json


def test_per_class_table_is_per_class_json():
    per_class = _per_class(_card_confusion())
    rows = _table(_card(), "Per class (test)")
    assert [row[0] for row in rows] == [str(d) for d in range(10)]
    for row in rows:
        c = per_class[row[0]]
        assert [float(x) for x in row[1:4]] == [c["precision"], c["recall"], c["f1"]] and int(row[4]) == c["support"]


def test_most_frequent_confusions_in_order_ties_by_digits():
    assert model_card.top_confusions(_card_confusion(), 4) == [(4, 9, 7), (7, 2, 5), (9, 4, 5), (3, 5, 2)]
    rows = _table(_card(), "Most frequent confusions (test)")
    assert rows[0] == ["4", "9", "7"] and len(rows) == 5  # only the non-zero pairs
    assert "No test errors." in _card(confusion=np.diag(np.full(10, 100)))


def test_params_data_pictures_and_limits_are_on_the_card():
    card = _card()
    params = dict(_table(card, "Params that define the model"))
    defaults = base_params()
    assert params["`model.hidden_units`"] == f"`{defaults['model']['hidden_units']}`"
    assert params["`train.learning_rate`"] == f"`{defaults['train']['learning_rate']}`"
    assert "`train.jit_compile`" not in params  # an execution setting, not the model
    assert META["fingerprint"] in card and "source: `bundled` (verified" in card
    assert "- [confusion matrix (test)](confusion_matrix.png)" in card
    assert "Inputs unlike MNIST digits" in card.split("## What it is not for", 1)[1]


def test_card_is_a_function_of_its_inputs_only():
    first, second = _card(), _card()
    assert first == second
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|\d\d:\d\d:\d\d|/tmp|/work|/home|\bseconds?\b", first)
    assert _card(params=model_card.flat_params(base_params() | {})) == first
    changed = base_params()
    changed["train"]["jit_compile"] = not changed["train"]["jit_compile"]
    assert _card(params=model_card.flat_params(changed)) == first  # not a param of the card


def test_relative_links():
    assert model_card.relative_link("reports/model_card.md", "reports/confusion_matrix.png") == "confusion_matrix.png"
    assert model_card.relative_link("model_card.md", "reports/x.png") == "reports/x.png"
    assert model_card.relative_link("reports/card/model_card.md", "reports/x.png") == "../x.png"


def test_evaluate_declares_exactly_the_params_the_card_shows():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["evaluate"]["params"] == list(model_card.PARAMS)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(model_card.flat_params(raw)) == set(model_card.PARAMS)  # every key exists in params.yaml
    assert (
        "reports/model_card.md" in stages["evaluate"]["outs"]
        and "stages/lib/model_card.py" in stages["evaluate"]["deps"]
    )
    assert json.dumps(model_card.flat_params(raw))  # JSON-able, as the card prints it
