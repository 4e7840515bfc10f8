"""predict: users' own pictures -> MNIST-style 28x28 (to_mnist), and the command around it."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from stages.lib import cli
from stages.lib.digit_image import stroke_width, to_mnist
from stages.predict import report_lines

REPO = Path(__file__).resolve().parents[1]


def drawing(size=(360, 240), paper=255, ink=0, width=14, scale=1.0, speck=False) -> Image.Image:
    """A hand-drawn 4, off-centre on a wide canvas: dark ink on white paper unless told otherwise."""
    s = scale
    image = Image.new("L", (round(size[0] * s), round(size[1] * s)), paper)
    draw = ImageDraw.Draw(image)
    draw.line([(150 * s, 40 * s), (110 * s, 150 * s), (200 * s, 150 * s)], fill=ink, width=width, joint="curve")
    draw.line([(180 * s, 90 * s), (180 * s, 210 * s)], fill=ink, width=width)
    if speck:  # a speck of dust far from the digit
        draw.rectangle([330 * s, 10 * s, 330 * s + 3, 10 * s + 3], fill=ink)
    return image


def centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[: a.shape[0], : a.shape[1]]
    return float((a * ys).sum() / a.sum()), float((a * xs).sum() / a.sum())


def ink_extent(a: np.ndarray, level: int = 0) -> tuple[int, int]:
    rows, cols = np.flatnonzero((a > level).any(axis=1)), np.flatnonzero((a > level).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def jpeg(image: Image.Image, quality: int = 70) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


# --- to_mnist -------------------------------------------------------------------------------------


def test_to_mnist_gives_a_28x28_uint8_picture_with_ink_peaking_at_255():
    digit = to_mnist(drawing())
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    assert digit.max() == 255 and digit[0].max() == digit[-1].max() == 0


def test_centre_of_mass_lands_on_pixel_14_14_like_mnist():
    for picture in (drawing(), drawing(size=(900, 300)), drawing(scale=3.0)):
        cy, cx = centre_of_mass(to_mnist(picture).astype(float))
        assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6


def test_the_longer_side_of_the_ink_is_scaled_to_20_px_keeping_the_aspect_ratio():
    height, width = ink_extent(to_mnist(drawing()))
    assert 19 <= height <= 21  # the drawing is taller (177 px) than wide (104 px)
    assert 10 <= width <= 14
    height, width = ink_extent(to_mnist(drawing().rotate(90, expand=True, fillcolor=255)))
    assert 19 <= width <= 21 and 10 <= height <= 14


def test_polarity_does_not_matter():
    dark_on_light = to_mnist(drawing(paper=255, ink=0))
    light_on_dark = to_mnist(drawing(paper=0, ink=255))
    grey_on_grey = to_mnist(drawing(paper=200, ink=60))
    assert np.abs(dark_on_light.astype(int) - light_on_dark).max() <= 2
    assert np.abs(dark_on_light.astype(int) - grey_on_grey).mean() < 2


def test_rgb_and_transparent_pictures_give_the_same_as_gray():
    gray = to_mnist(drawing())
    assert np.array_equal(to_mnist(drawing().convert("RGB")), gray)
    on_transparent = Image.new("RGBA", drawing().size, (0, 0, 0, 0))
    on_transparent.putalpha(Image.eval(drawing(), lambda v: 255 - v))  # black ink, transparent paper
    assert np.abs(to_mnist(on_transparent).astype(int) - gray).max() <= 2


def test_a_jpeg_round_trip_gives_nearly_the_same_digit():
    png, jpg = to_mnist(drawing()), to_mnist(jpeg(drawing().convert("RGB")))
    assert np.abs(png.astype(int) - jpg).mean() < 3
    cy, cx = centre_of_mass(jpg.astype(float))
    assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6


def test_noise_dust_and_uneven_light_barely_change_the_digit():
    clean = to_mnist(drawing()).astype(int)
    assert np.abs(to_mnist(drawing(speck=True)).astype(int) - clean).mean() < 1
    rng = np.random.default_rng(0)
    grain = np.asarray(drawing(), float) + rng.normal(0, 6, (240, 360))
    assert np.abs(to_mnist(Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))).astype(int) - clean).mean() < 4
    light = np.linspace(0.5, 1.0, 360)[
        None, :
    ]  # pencil (90) on paper lit from the right: 127 on the left, 255 on the right
    unevenly_lit = Image.fromarray((np.asarray(drawing(ink=90), float) * light).astype(np.uint8))
    assert np.abs(to_mnist(unevenly_lit).astype(int) - clean).mean() < 4


def test_a_thin_pen_on_a_big_picture_is_widened_to_an_mnist_like_stroke():
    hairline = to_mnist(drawing(scale=5.0, width=2)).astype(np.float32)  # 2 px strokes on a 1800x1200 picture
    assert 1.8 <= stroke_width(hairline) <= 3.5  # MNIST's median is about 2.3 in this measure
    assert hairline.max() == 255


def test_an_mnist_digit_comes_back_nearly_unchanged():
    digit = to_mnist(drawing())
    assert np.abs(to_mnist(Image.fromarray(digit)).astype(int) - digit).mean() < 4


@pytest.mark.parametrize(
    "picture",
    [
        Image.new("L", (200, 100), 255),
        Image.new("RGB", (50, 50), (0, 0, 0)),
        Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
        Image.fromarray(np.clip(np.random.default_rng(0).normal(200, 5, (300, 400)), 0, 255).astype(np.uint8)),
    ],
    ids=["white", "black", "transparent", "grain only"],
)
def test_a_blank_picture_is_an_error(picture):
    with pytest.raises(cli.UserError, match="blank"):
        to_mnist(picture)


# --- output lines ---------------------------------------------------------------------------------


def test_report_lines_name_the_digit_and_the_runner_up_or_give_json():
    probs = np.array([[0.01, 0.011, 0, 0, 0, 0, 0, 0.979, 0, 0]], np.float32)
    assert report_lines(["a.png"], probs, as_json=False) == ["a.png: 7 (97.9%), runner-up 1 (1.1%)"]
    line = json.loads(report_lines(["a.png"], probs, as_json=True)[0])
    assert line["path"] == "a.png" and line["class_id"] == 7 and line["probability"] == pytest.approx(0.979)
    assert [d for d, _ in line["top3"]] == [7, 1, 0]


# --- the command ----------------------------------------------------------------------------------


def predict(*args):
    return subprocess.run(
        [sys.executable, "-m", "stages.predict", *map(str, args)], cwd=REPO, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def tiny_saved_model(tmp_path_factory):
    tf = cli.import_tensorflow()
    from stages.lib.model import MLP
    from stages.lib.serving import ServingModule

    folder = tmp_path_factory.mktemp("model") / "saved_model"
    module = ServingModule(MLP([16], seed=0))
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def test_predict_classifies_the_good_pictures_and_reports_each_bad_one_in_one_line(tiny_saved_model, tmp_path):
    good, missing, not_image = tmp_path / "good.png", tmp_path / "missing.png", tmp_path / "notimage.txt"
    drawing().save(good)
    not_image.write_text("not a picture\n")
    done = predict(tiny_saved_model, good, missing, not_image, "--json")
    assert done.returncode == 1
    [line] = done.stdout.splitlines()
    result = json.loads(line)
    assert set(result) == {"path", "class_id", "probability", "top3"}
    assert result["path"] == str(good) and 0 <= result["class_id"] <= 9 and 0 < result["probability"] <= 1
    assert len(result["top3"]) == 3 and result["top3"][0] == [result["class_id"], result["probability"]]
    assert [p for _, p in result["top3"]] == sorted((p for _, p in result["top3"]), reverse=True)
    assert "Traceback" not in done.stderr
    errors = [e for e in done.stderr.splitlines() if e.startswith("error:")]
    assert errors[0] == f"error: {missing}: not found"
    assert re.fullmatch(rf"error: {re.escape(str(not_image))}: not an image \(.+\)", errors[1])
    assert len(errors) == 2


def test_predict_without_a_saved_model_says_how_to_make_one(tmp_path):
    drawing().save(tmp_path / "good.png")
    done = predict(tmp_path / "nowhere", tmp_path / "good.png")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error: {tmp_path / 'nowhere'}: not found; run `dvc repro export`"]
