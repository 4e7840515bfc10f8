"""Atomic outputs: write under a temporary name next to the final path, rename into place when complete.

A stage killed at any moment leaves the previous output or none, never a half-written one; the next
run removes what a killed run left behind.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path

_TMP, _OLD = ".tmp-", ".old-"


def _sibling(path: Path, tag: str) -> Path:
    return path.parent / f"{tag}{path.name}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean_leftovers(path: Path) -> None:
    """Remove the temporary and retired copies a killed run may have left beside `path`."""
    for tag in (_TMP, _OLD):
        _remove(_sibling(path, tag))


@contextlib.contextmanager
def output_path(final: str | Path, is_dir: bool = False):
    """Yield a temporary path to write `final` at; on success, move it into place in one rename.

    For a directory the old copy is first renamed aside, so a kill between the two renames leaves
    no output (never a mixed one); on error the temporary copy is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(final)
    tmp = _sibling(final, _TMP)
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if is_dir and final.exists():
        old = _sibling(final, _OLD)
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


def write_text(path: str | Path, text: str) -> None:
    with output_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
