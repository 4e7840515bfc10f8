"""The PNG pictures the stages write: confusion matrix, training curves, digit grids."""

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def confusion_matrix(matrix: np.ndarray, path, title: str) -> None:
    """Heatmap of counts (rows: true digit, columns: predicted), each count written in its cell."""
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    # Log-like colour scale so the off-diagonal errors are visible beside the large diagonal.
    shown = np.log1p(matrix)
    image = ax.imshow(shown, cmap="Blues")
    threshold = shown.max() / 2
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(
            col,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=9,
            color="white" if shown[row, col] > threshold else "black",
        )
    digits = range(matrix.shape[0])
    ax.set_xticks(digits, labels=[str(d) for d in digits])
    ax.set_yticks(digits, labels=[str(d) for d in digits])
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = [t for t in (0, 1, 10, 100, 1000) if t <= matrix.max()]
    colorbar.set_ticks(np.log1p(ticks), labels=[str(t) for t in ticks])
    colorbar.set_label("images")
    _save(fig, path)


def training_curves(history: list[dict], best_epoch: int, path) -> None:
    """Loss and accuracy per epoch, train vs validation, the kept (best) epoch marked."""
    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((loss_ax, "loss", "cross-entropy loss"), (acc_ax, "accuracy", "accuracy")):
        ax.plot(epochs, [r[key] for r in history], "o-", ms=3, label="train")
        ax.plot(epochs, [r["val_" + key] for r in history], "o-", ms=3, label="validation")
        ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"kept: epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_yscale("log")
    acc_ax.set_ylim(max(0.0, min(min(r["accuracy"], r["val_accuracy"]) for r in history) - 0.01), 1.0)
    best = next(r for r in history if r["epoch"] == best_epoch)
    fig.suptitle(f"Training curves: best validation accuracy {best['val_accuracy']:.2%} at epoch {best_epoch}")
    _save(fig, path)


def digit_grid(images: np.ndarray, captions: list[str], path, title: str, columns: int = 10, colors=None) -> None:
    """A grid of 28x28 digits (white on black, as the model sees them), each with a caption above it.

    Drawn as one image on one axes: a subplot per digit made this picture most of prepare's wall time."""
    rows = max(1, -(-len(images) // columns))
    cell, band = 32, 14  # pixels per digit (28 and a margin), caption band above each row
    mosaic = np.full((rows * (cell + band), columns * cell), np.nan)  # nan: the white background
    for index, image in enumerate(images):
        row, col = divmod(index, columns)
        top, left = row * (cell + band) + band, col * cell + (cell - 28) // 2
        mosaic[top : top + 28, left : left + 28] = image.reshape(28, 28)
    fig, ax = plt.subplots(figsize=(columns * 1.15, rows * 1.6))
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    for index, caption in enumerate(captions[: len(images)]):
        row, col = divmod(index, columns)
        color = colors[index] if colors else "black"
        ax.text(
            col * cell + cell / 2,
            row * (cell + band) + band - 2,
            caption,
            ha="center",
            va="bottom",
            fontsize=8,
            color=color,
        )
    ax.axis("off")
    ax.set_title(title)
    _save(fig, path)
