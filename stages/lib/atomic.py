"""Atomic outputs: write under a temporary name next to the final path, rename into place when complete.

A stage killed at any moment leaves the previous output or none, never a half-written one; the next
run removes what a killed run left behind.

Two runs writing the same output at once (two direct `python -m stages.prepare`, outside DVC's own
lock) never mix: each writer holds an exclusive lock on `.tmp-<name>.lock` (flock: released by the
kernel when its process dies, so a killed run never blocks the next) from before it cleans up until
its output is in place, and the second one fails at once with a clear error. Temporary names are
unique (`.tmp-<pid>-<random>-<name>`, keeping the name's suffix, which some writers read), and a
leftover is removed only once the process named in it is gone, so cleaning up can never remove a
live writer's files.
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from stages.lib.cli import UserError, describe_os_error

_TMP, _OLD = ".tmp-", ".old-"
_LOCK_SUFFIX = ".lock"


def _sibling(path: Path, tag: str) -> Path:
    """A unique name beside `path` for this process: `<tag><pid>-<random>-<name>`."""
    return path.parent / f"{tag}{os.getpid()}-{secrets.token_hex(4)}-{path.name}"


def _lock_path(path: Path) -> Path:
    return path.parent / f"{_TMP}{path.name}{_LOCK_SUFFIX}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def leftovers(path: Path) -> list[tuple[Path, int | None]]:
    """(leftover, writer's pid or None for the old fixed names) of the temporary and retired copies beside `path`."""
    path = Path(path)
    pattern = re.compile(rf"(?:{re.escape(_TMP)}|{re.escape(_OLD)})(?:(\d+)-[0-9a-f]+-)?{re.escape(path.name)}")
    found = []
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match:
            found.append((path.parent / name, int(match[1]) if match[1] else None))
    return sorted(found)


def clean_leftovers(path: Path) -> None:
    """Remove the temporary and retired copies killed runs left beside `path`; never those of a
    writer that is still running."""
    for leftover, pid in leftovers(path):
        if pid is None or (pid != os.getpid() and not _alive(pid)):
            _remove(leftover)


@contextlib.contextmanager
def _exclusive(final: Path):
    """Hold the lock of `final` for the duration, or fail at once if another process holds it."""
    path = _lock_path(final)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise UserError(
                f"{final}: another run ({who}) is writing it right now; wait for it to finish "
                "(or stop it), then run again"
            ) from None
        try:  # the lock is only ours if `path` still names the file we locked (a finishing writer unlinks it)
            current = os.stat(path)
            ours = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (ours.st_dev, ours.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before the lock is released: a waiting opener then sees a new file
        os.close(fd)


def _reason(exc: OSError) -> str:
    """describe_os_error without the (temporary) file names: the message names the output."""
    return describe_os_error(OSError(exc.errno, exc.strerror)) if exc.strerror else describe_os_error(exc)


def _own_os_error(exc: BaseException, tmp: Path) -> bool:
    """An OSError on our temporary path (a full disk, a read-only folder while writing it)."""
    names = [str(n) for n in (getattr(exc, "filename", None), getattr(exc, "filename2", None)) if n is not None]
    return isinstance(exc, OSError) and any(name.startswith(str(tmp)) for name in names)


@contextlib.contextmanager
def output_path(final: str | Path, is_dir: bool = False):
    """Yield a temporary path to write `final` at; on success, move it into place in one rename.

    For a directory the old copy is first renamed aside, so a kill between the two renames leaves
    no output (never a mixed one); on error the temporary copy is removed and `final` is untouched.
    An OSError on the temporary copy becomes one line naming `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final):
        clean_leftovers(final)
        tmp = _sibling(final, _TMP)
        try:
            if is_dir:
                tmp.mkdir()
            yield tmp
        except BaseException as exc:
            with contextlib.suppress(OSError):
                _remove(tmp)
            if _own_os_error(exc, tmp):
                kept = "the previous version is kept" if os.path.lexists(final) else "nothing was written"
                raise UserError(f"{final}: cannot write it ({_reason(exc)}); {kept}") from None
            raise
        old = _sibling(final, _OLD) if is_dir and final.exists() else None
        try:
            if old:
                os.replace(final, old)
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                if old and old.exists() and not os.path.lexists(final):
                    os.replace(old, final)  # the previous version back in place
                _remove(tmp)
            raise UserError(f"{final}: cannot put it in place ({_reason(exc)})") from None
        if old:
            _remove(old)


def write_text(path: str | Path, text: str) -> None:
    with output_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
