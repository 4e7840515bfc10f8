"""figures: the PNG pictures are real PNGs of the expected layout, and byte-identical for the same input
(they are DVC outputs: `dvc repro --force` must not change their hashes)."""

import numpy as np
import pytest
from conftest import make_split
from PIL import Image

from stages.lib import figures

HISTORY = [
    {"epoch": e, "loss": 1 / e, "val_loss": 1.2 / e, "accuracy": 1 - 0.1 / e, "val_accuracy": 1 - 0.12 / e}
    for e in range(1, 6)
]


def _confusion(path):
    matrix = np.diag(np.full(10, 950)) + np.eye(10, k=1, dtype=int) * 7
    figures.confusion_matrix(matrix, path, "Confusion matrix (test)")


def _curves(path):
    figures.training_curves(HISTORY, 4, path)


def _grid(path, n=25):
    images, labels = make_split(n)
    figures.digit_grid(images, [str(label) for label in labels], path, "samples", colors=["red"] * n)


@pytest.mark.parametrize("draw", [_confusion, _curves, _grid], ids=["confusion", "curves", "digit-grid"])
def test_a_png_byte_identical_for_the_same_input(tmp_path, draw):
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    draw(first)
    draw(second)
    assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert first.read_bytes() == second.read_bytes()
    with Image.open(first) as image:
        assert "Software" not in image.info  # no matplotlib version stamped in (it would change the hash)
        assert min(image.size) > 200


def test_layouts(tmp_path):
    _curves(tmp_path / "curves.png")
    _grid(tmp_path / "one_row.png", n=10)
    _grid(tmp_path / "three_rows.png", n=25)
    sizes = {name: Image.open(tmp_path / f"{name}.png").size for name in ("curves", "one_row", "three_rows")}
    assert sizes["curves"][0] > 2 * sizes["curves"][1]  # loss and accuracy side by side
    assert sizes["three_rows"][1] > 2 * sizes["one_row"][1]  # 25 digits in rows of 10
