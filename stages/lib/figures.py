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
    """A grid of 28x28 digits (white on black, as the model sees them), each with a caption."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.15, rows * 1.6))
    for index, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if index < len(images):
            ax.imshow(images[index].reshape(28, 28), cmap="gray", vmin=0, vmax=255)
            ax.set_title(captions[index], fontsize=8, color=(colors[index] if colors else "black"))
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
