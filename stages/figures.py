"""The PNG pictures the stages write: confusion matrix, training curves, digit grids."""
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
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
        ax.text(col, row, str(count), ha="center", va="center", fontsize=9,
                color="white" if shown[row, col] > threshold else "black")
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
