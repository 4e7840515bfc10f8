"""Draw docs/deskew.png: the first test digits as stored (top row) and as a deskewing model sees them.

python docs/deskew_figure.py      # after `dvc repro prepare`
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.lib import cli  # noqa: E402


def main(argv=None) -> None:
    cli.import_tensorflow()
    from stages.lib import figures, records
    from stages.lib.preprocessing import to_model_input

    images, labels = records.read_split(ROOT / "data" / "prepared", "test")
    images, labels = images[:10], labels[:10]
    deskewed = (to_model_input(images, deskew=True).numpy() * 255).round()
    captions = [f"{label}" for label in labels] + [f"{label} deskewed" for label in labels]
    figures.digit_grid(
        list(images) + list(deskewed),
        captions,
        ROOT / "docs" / "deskew.png",
        "test digits as stored (top) and deskewed (bottom)",
    )


if __name__ == "__main__":
    cli.run(main)
