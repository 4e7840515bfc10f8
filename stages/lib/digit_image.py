"""Users' digit pictures -> MNIST-style 28x28 uint8 arrays: polarity, paper, ink box, stroke, centring.

Pure numpy/Pillow, no TensorFlow; `to_mnist` is the one entry point (used by stages.predict).
"""

import numpy as np
from PIL import Image, ImageOps

from stages.lib import cli

FIELD = 28  # MNIST images are 28x28 ...
BOX = 20  # ... with the digit's longer side scaled to 20 px, anti-aliased
INK_FRACTION = 0.2  # a pixel is ink when brighter than this share of the brightest ink, and so are its neighbours
MIN_CONTRAST = 16.0  # grey levels (of 255) the ink must stand out from the paper; less is a blank picture
MNIST_STROKE = 2.5  # px at the 20-px scale: MNIST's typical stroke width, in the same measure as `stroke_width`
THIN_STROKE = 1.5  # strokes thinner than this (a pen on a big picture) are widened to MNIST_STROKE ...
THICK_STROKE = 4.0  # ... and strokes thicker than this thinned to it
GRAIN = 3.0  # the paper's level is raised by this many standard deviations of its grain, so grain is not ink
SPECK = 0.1  # a piece of ink with less than this share of the biggest piece's ink is dust, not digit
MIN_INK_SHARE = 0.04  # the ink must span at least this share of the picture's longer side ...
MIN_INK_PX = 4  # ... and at least this many pixels, or it is too little ink to be a digit
MAX_PIXELS = 36_000_000  # pictures above this (e.g. 6000x6000) are refused before decoding; Pillow's limit is 89M
MAX_SIDE = 2048  # bigger pictures are first shrunk by an integer factor (box average) to at most this, bounding memory


def box_mean(a: np.ndarray) -> np.ndarray:
    """The mean of each pixel's 3x3 neighbourhood (edges repeated)."""
    p = np.pad(a, 1, mode="edge")
    rows = p[:-2] + p[1:-1] + p[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 9.0


def grayscale(image: Image.Image) -> np.ndarray:
    """Float gray levels in [0, 255]. Transparency is composited on white, or on black if only that shows
    the ink (a light digit drawn on a transparent canvas)."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith(("I", "F")):
        gray = np.asarray(image.convert("F"), dtype=np.float32)
        return gray * (255.0 / (65535.0 if gray.max() > 255 else 255.0))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = [
            np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, paper), rgba).convert("L"), np.float32)
            for paper in ("white", "black")
        ]
        return max(flat, key=np.std)
    return np.asarray(image.convert("L"), dtype=np.float32)


def frame_of(a: np.ndarray) -> np.ndarray:
    """The pixels of the outer frame, 1/32 of the shorter side thick (at least 1 px)."""
    k = max(1, min(a.shape) // 32)
    return np.concatenate([a[:k].ravel(), a[-k:].ravel(), a[:, :k].ravel(), a[:, -k:].ravel()])


def paper_surface(gray: np.ndarray) -> np.ndarray:
    """The paper's level under bright ink: a quadratic surface (uneven light, vignetting) fitted to a coarse
    grid of the picture, first to the cells near the frame's level, then refitted without the cells that
    stand out above the surface (the ink)."""
    h, w = gray.shape
    gh, gw = min(h, 48), min(w, 48)
    grid = np.asarray(Image.fromarray(gray, mode="F").resize((gw, gh), Image.Resampling.BOX), np.float64)
    y, x = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij")
    terms = lambda y, x: [np.ones_like(x * y), x, y, x * x, x * y, y * y]  # noqa: E731
    design = np.stack([t.ravel() for t in terms(y, x)], axis=1)
    start = float(np.median(frame_of(grid)))
    paper = grid.ravel() <= start + 0.25 * (grid.max() - start)
    for _ in range(4):
        coef = np.linalg.lstsq(design[paper], grid.ravel()[paper], rcond=None)[0]
        residual = grid.ravel() - design @ coef
        spread = 1.4826 * np.median(np.abs(residual[paper]))
        paper = residual < 2.5 * spread + 0.5
    y, x = (np.arange(h)[:, None] + 0.5) / h, (np.arange(w)[None, :] + 0.5) / w
    return sum(c * t for c, t in zip(coef, terms(y, x))).astype(np.float32)


def ink_on_black(gray: np.ndarray) -> np.ndarray:
    """Ink bright on a zero background, scaled so the ink's peak is 255. The paper is told by the median of
    the picture's outer frame; the ink is what departs furthest from it, darker (then the picture is
    inverted, as MNIST's ink is bright) or lighter. Raises UserError if there is no ink."""
    paper = float(np.median(frame_of(gray)))
    smooth = box_mean(gray)
    if paper - smooth.min() > smooth.max() - paper:
        gray, smooth = 255.0 - gray, 255.0 - smooth
    surface = paper_surface(gray)
    residual = frame_of(gray - surface)
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))  # the paper's grain, as a std
    level = surface + GRAIN * noise
    peak = float((smooth - level).max())  # smoothed, so a lone bright speck does not set the scale
    if peak < MIN_CONTRAST:
        raise cli.UserError("blank: no ink stands out from the background")
    return np.clip((gray - level) * (255.0 / peak), 0.0, 255.0)


def components(mask: np.ndarray) -> np.ndarray:
    """Labels of the 8-connected regions of a small boolean mask (0 outside), by propagating the largest
    label to neighbours until nothing changes."""
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(h, w), 0)
    while True:
        padded = np.pad(labels, 1)
        grown = np.where(mask, np.max([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0), 0)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


def without_specks(ink: np.ndarray) -> np.ndarray:
    """`ink` without the small blobs (dust, stray dots) apart from the digit: on a grid of at most 64 cells a
    side, connected pieces of ink with under SPECK of the biggest piece's ink are cleared."""
    cut = INK_FRACTION * 255.0
    mask = (ink > cut) & (box_mean(ink) > cut)
    if not mask.any():
        return ink
    h, w = ink.shape
    f = -(-max(h, w) // 64)
    padded = np.pad(mask, ((0, -h % f), (0, -w % f)))
    cells = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).sum(axis=(1, 3))
    labels = components(cells > 0)
    mass = np.bincount(labels.ravel(), weights=cells.ravel())
    mass[0] = 0
    keep = (mass >= SPECK * mass.max())[labels] & (labels > 0)
    keep = np.pad(keep, 1)
    keep = np.max(
        [keep[i : i + keep.shape[0] - 2, j : j + keep.shape[1] - 2] for i in range(3) for j in range(3)], axis=0
    )
    return ink * np.repeat(np.repeat(keep, f, axis=0), f, axis=1)[:h, :w]


def ink_box(ink: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of the ink: pixels above INK_FRACTION of full scale whose neighbourhood is too."""
    cut = INK_FRACTION * 255.0
    mask = (ink > cut) & (box_mean(ink) > cut)
    if not mask.any():
        mask = ink > cut
    if not mask.any():
        raise cli.UserError("blank: no ink stands out from the background")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def stroke_width(ink: np.ndarray) -> float:
    """Typical stroke width in pixels: 2 x area / perimeter of the half-bright ink (a long stroke of width w
    has area w*l and perimeter 2l); the perimeter is counted along pixel edges, corrected by pi/4."""
    mask = np.pad(ink > 127.5, 1).astype(np.int8)
    perimeter = np.abs(np.diff(mask, axis=0)).sum() + np.abs(np.diff(mask, axis=1)).sum()
    return 2.0 * mask.sum() / max(perimeter * np.pi / 4, 1.0)


def disk_filter(grid: np.ndarray, radius: float, reduce) -> np.ndarray:
    """Grey dilation (reduce=np.max) or erosion (np.min) of `grid` with a disk of `radius` cells."""
    r = int(radius)
    h, w = grid.shape
    padded = np.pad(grid, r)
    disk = [
        (dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius * radius + 0.5
    ]
    return reduce([padded[r + dy : r + dy + h, r + dx : r + dx + w] for dy, dx in disk], axis=0)


def restroked(ink: np.ndarray) -> np.ndarray:
    """`ink` on a grid of about 4x the 20-px box, its strokes widened or thinned to MNIST_STROKE at the 20-px
    scale. Max-pooling to that grid keeps even hairlines at full strength; a disk keeps curves round."""
    h, w = ink.shape
    f = max(1, max(h, w) // (4 * BOX))
    padded = np.pad(ink, ((0, -h % f), (0, -w % f)))
    grid = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).max(axis=(1, 3))
    cells = max(grid.shape) / BOX  # grid cells per pixel of the 20-px box
    change = MNIST_STROKE * cells - stroke_width(grid)
    return disk_filter(grid, abs(change) / 2, np.max if change > 0 else np.min)


def centred(digit: np.ndarray) -> np.ndarray:
    """Paste `digit` (at most 28x28) into the 28x28 field with its centre of mass at pixel (14, 14)."""
    h, w = digit.shape
    mass = digit.sum()
    cy = digit.sum(axis=1) @ np.arange(h) / mass
    cx = digit.sum(axis=0) @ np.arange(w) / mass
    top = int(np.clip(np.floor(FIELD / 2 - cy + 0.5), 0, FIELD - h))
    left = int(np.clip(np.floor(FIELD / 2 - cx + 0.5), 0, FIELD - w))
    field = np.zeros((FIELD, FIELD), np.float32)
    field[top : top + h, left : left + w] = digit
    return field


def shrunk(image: Image.Image) -> Image.Image:
    """`image` box-averaged by the smallest integer factor that brings its longer side to MAX_SIDE or less
    (a 6000x6000 photo would otherwise need ~1.5 GB of float arrays below); smaller pictures unchanged."""
    factor = -(-max(image.size) // MAX_SIDE)
    if factor <= 1:
        return image
    exif = image.getexif()
    try:
        small = image.reduce(factor)
    except ValueError:  # modes reduce() does not take (P, 1, CMYK, ...)
        small = image.convert("RGBA").reduce(factor)
    small.info["exif"] = exif.tobytes()  # keep the orientation for exif_transpose
    return small


def to_mnist(image: Image.Image) -> np.ndarray:
    """Any picture of one digit -> uint8 (28, 28), MNIST style. Raises UserError for a blank picture or one
    with too little ink to be a digit (a speck on a blank page)."""
    image = shrunk(image)
    ink = without_specks(ink_on_black(grayscale(image)))
    ink = ink[ink_box(ink)]
    h, w = ink.shape
    if max(h, w) < max(MIN_INK_PX, MIN_INK_SHARE * max(image.size)):
        raise cli.UserError(
            f"too little ink to be a digit (the ink spans {w}x{h} px of a {image.width}x{image.height} picture)"
        )
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    stroke = stroke_width(ink) * scale
    if scale < 1 and not THIN_STROKE <= stroke <= THICK_STROKE:
        ink = restroked(ink)
    picture = Image.fromarray(ink.astype(np.float32), mode="F")
    digit = np.clip(np.asarray(picture.resize(size, Image.Resampling.LANCZOS)), 0.0, 255.0)
    digit *= 255.0 / max(float(digit.max()), 1e-6)  # anti-aliasing may dim thin strokes; MNIST's ink peaks at 255
    return np.clip(np.rint(centred(digit)), 0, 255).astype(np.uint8)
