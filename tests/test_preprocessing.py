"""The shared preprocessing: scaling to [0, 1] and the optional moment-based deskewing."""

import numpy as np
import pytest
from scipy.ndimage import affine_transform

pytestmark = pytest.mark.usefixtures("tf")


def _stroke(slant: float, centre=(14.0, 14.0), width=1.5, length=8.0) -> np.ndarray:
    """A uint8 28x28 image of a straight stroke through `centre` whose column moves `slant` per row."""
    rows, cols = np.mgrid[:28, :28].astype(np.float64)
    r, c = rows - centre[0], cols - centre[1]
    distance = np.abs(c - slant * r) / np.sqrt(1 + slant**2)
    image = np.clip(width - distance, 0, 1) * (np.abs(r) <= length)
    return np.rint(image * 255).astype(np.uint8)


def _moments(image: np.ndarray):
    """Centre of mass (row, col) and slant cov(row, col) / var(row) of an image."""
    rows, cols = np.mgrid[:28, :28]
    mass = image.sum()
    r, c = (rows * image).sum() / mass, (cols * image).sum() / mass
    slant = ((rows - r) * (cols - c) * image).sum() / ((rows - r) ** 2 * image).sum()
    return r, c, slant


def _scipy_deskew(image: np.ndarray) -> np.ndarray:
    """The textbook deskewing with scipy's affine transform, as the independent reference."""
    x = image.astype(np.float64) / 255.0
    r, c, slant = _moments(x)
    shear = np.array([[1.0, 0.0], [slant, 1.0]])
    return affine_transform(x, shear, offset=np.array([r, c]) - shear @ [14.0, 14.0], order=1, mode="grid-constant")


def _deskew(images: np.ndarray) -> np.ndarray:
    from stages.lib.preprocessing import to_model_input

    return to_model_input(images, deskew=True).numpy().reshape(-1, 28, 28)


def test_scaling_without_deskew():
    from stages.lib.preprocessing import to_model_input

    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    x = to_model_input(images).numpy()
    assert x.shape == (3, 784) and x.dtype == np.float32
    np.testing.assert_allclose(x, images.reshape(3, 784) / 255.0, rtol=1e-6)


def test_deskew_matches_scipy_affine_transform():
    rng = np.random.default_rng(1)
    strokes = [_stroke(s, centre=(rng.uniform(9, 19), rng.uniform(9, 19))) for s in (-0.6, -0.2, 0.3, 0.7)]
    noise = rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8) * (rng.random((2, 28, 28)) < 0.2)
    images = np.concatenate([np.stack(strokes), noise.astype(np.uint8)])
    ours = _deskew(images)
    reference = np.stack([_scipy_deskew(image) for image in images])
    np.testing.assert_allclose(ours, reference, atol=2e-5)


@pytest.mark.parametrize("slant", [-0.7, -0.3, 0.4, 0.8])
def test_a_slanted_stroke_comes_out_upright_and_centred(slant):
    image = _stroke(slant, centre=(11.0, 17.0))
    r, c, before = _moments(image.astype(np.float64))
    assert abs(before - slant) < 0.1  # the stroke really is slanted
    straightened = _deskew(image[None])[0]
    r, c, after = _moments(straightened)
    assert abs(after) < 0.05
    assert abs(r - 14) < 0.3 and abs(c - 14) < 0.3
    assert straightened.sum() == pytest.approx(image.sum() / 255.0, rel=0.05)  # ink is moved, not lost


def test_an_upright_centred_digit_is_left_alone():
    image = _stroke(0.0, centre=(14.0, 14.0))
    np.testing.assert_allclose(_deskew(image[None])[0], image / 255.0, atol=1e-5)


def test_a_blank_image_stays_blank():
    out = _deskew(np.zeros((2, 28, 28), np.uint8))
    assert np.all(out == 0.0)


def test_deskew_takes_flat_images_and_compiles_with_xla(tf):
    from stages.lib.preprocessing import to_model_input

    images = np.stack([_stroke(0.5), _stroke(-0.4, centre=(12.0, 15.0))])
    flat = tf.constant(images.reshape(2, 784))
    expected = to_model_input(tf.constant(images), deskew=True).numpy()
    assert expected.shape == (2, 784)
    np.testing.assert_allclose(to_model_input(flat, deskew=True).numpy(), expected, atol=1e-6)
    compiled = tf.function(lambda x: to_model_input(x, deskew=True), jit_compile=True)
    np.testing.assert_allclose(compiled(flat).numpy(), expected, atol=1e-5)
