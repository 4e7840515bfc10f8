"""digit_image: users' own pictures -> MNIST-style 28x28 (to_mnist), made the way MNIST was."""

import io

import numpy as np
import pytest
from conftest import drawing
from PIL import Image

from stages.lib import cli
from stages.lib.digit_image import stroke_width, to_mnist


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


def test_too_little_ink_is_not_a_digit():
    speck = Image.new("L", (360, 240), 255)
    speck.paste(0, (100, 100, 104, 104))  # one dark speck on a blank page
    with pytest.raises(cli.UserError, match=r"too little ink to be a digit \(the ink spans 4x4 px of a 360x240"):
        to_mnist(speck)


def test_a_big_picture_is_shrunk_first_and_gives_nearly_the_same_digit():
    from stages.lib.digit_image import MAX_SIDE, shrunk

    big = drawing(scale=12.0, width=14 * 12)  # 4320 x 2880
    assert max(shrunk(big).size) <= MAX_SIDE
    assert np.abs(to_mnist(big).astype(int) - to_mnist(drawing())).mean() < 4
