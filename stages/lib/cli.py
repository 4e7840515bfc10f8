"""What every entry point shares: one-line errors with distinct exit codes, and quiet TensorFlow logs.

Also the one way to open an input file: only a regular file (a FIFO would block forever, a directory
or /dev/zero would mislead), read only up to the size it may have, so a hostile path ends in one line.
"""

import atexit
import errno
import os
import stat
import sys
from pathlib import Path

EXIT_FAILURE = 1  # a missing or damaged input, a failed check
EXIT_USAGE = 2  # invalid params or arguments


class UserError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""

    exit_code = EXIT_FAILURE


class ParamsError(UserError):
    exit_code = EXIT_USAGE


def describe_path(path: str | Path) -> str:
    """What is at `path`, in words ("a directory", "a FIFO (named pipe)", "a symbolic link loop"...)."""
    path = str(path)
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if stat.S_ISLNK(link.st_mode):
        try:
            os.stat(path)
        except FileNotFoundError:
            return f"a broken symbolic link (to {os.readlink(path)})"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "a symbolic link loop"
            return f"a symbolic link that cannot be followed ({exc.strerror})"
    mode = os.stat(path).st_mode
    for test, words in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def _refused(path, reason: str, hint: str, named: bool) -> "UserError":
    return UserError((f"{path}: " if named else "") + reason + (f"; {hint}" if hint else ""))


def _not_regular(path, hint: str, named: bool = True) -> "UserError":
    found = describe_path(path)
    if found not in ("not found", "not a regular file") and not found.startswith("cannot"):
        found += ", not a regular file"
    return _refused(path, found, hint, named)


def open_regular(path: str | Path, hint: str = "", named: bool = True):
    """Open `path` for binary reading if it is a regular file (links followed); else a UserError
    saying what it is (then `hint`), after `path: ` unless `named` is False (for a caller that names
    the path itself). Opened non-blocking and checked on the open descriptor, so a FIFO, a socket or
    a device (swapped in at any moment) cannot make it hang or read forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # missing, a link loop, a socket (ENXIO), no permission...
        if describe_path(path) != "a regular file":
            raise _not_regular(path, hint, named) from None
        raise _refused(path, f"cannot open ({exc.strerror})", "", named) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_regular(path, hint, named)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular_file(path: str | Path) -> bool:
    """True for a regular file or a link to one (never opens it)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_regular(path: str | Path, limit: int, hint: str = "") -> bytes:
    """The bytes of the regular file `path`, refused if longer than `limit` (checked before reading)."""
    with open_regular(path, hint) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        found = f"{size} bytes" if size > limit else f"more than {limit} bytes"  # (or it grew while read)
        raise UserError(f"{path}: {found}, too large (at most {limit})" + (f"; {hint}" if hint else ""))
    return data


def shorten(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters with a note of how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ info logs; must run before `import tensorflow`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# XLA's CPU code generator defaults to 256-bit vectors; asking for 512 (used where the processor has
# AVX-512, ignored elsewhere) made the compiled training step 7-12% faster here (benchmarks/RESULTS.md).
XLA_CPU_FLAGS = "--xla_cpu_prefer_vector_width=512"


def configure_xla() -> None:
    """Add XLA_CPU_FLAGS to XLA_FLAGS unless the user set that flag; must run before XLA starts."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_prefer_vector_width" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_FLAGS}".strip()


def import_tensorflow():
    """Import TensorFlow with stderr muted: its native libraries print start-up notes (oneDNN, CUDA)
    that ignore TF_CPP_MIN_LOG_LEVEL and would bury our one-line errors. Call after validating inputs."""
    quiet_tensorflow()
    configure_xla()
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    # `import tensorflow` eagerly imports Keras (keras.src.optimizers, and through it scikit-learn), which
    # no stage uses: blocking that one import (TensorFlow skips it on ImportError) saves ~40% of the
    # import's time and ~125 MB per process. `tf.keras` still loads on first use.
    blocked = sys.modules.setdefault("keras.src.optimizers", None) is None
    try:
        os.dup2(devnull, 2)
        import tensorflow

        tensorflow.config.list_physical_devices()  # device discovery logs "failed call to cuInit" on CPU-only machines
    finally:
        if blocked and sys.modules.get("keras.src.optimizers", 0) is None:
            del sys.modules["keras.src.optimizers"]
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


def _one_line(text: str, limit: int = 300) -> str:
    return shorten(" ".join(str(text).split()), limit)


def describe_os_error(exc: OSError) -> str:
    """`path: reason` for an OSError the operating system raised (read-only, full disk, permission)."""
    names = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    reason = exc.strerror or _one_line(exc) or type(exc).__name__
    hint = {
        errno.ENOSPC: "; free some space and run again",
        errno.EDQUOT: "; free some space and run again",
        errno.EROFS: "; the output folder must be writable",
        errno.EACCES: "; check the permissions",
        errno.EPERM: "; check the permissions",
    }.get(exc.errno, "")
    return f"{names}: {reason}{hint}" if names else f"{reason}{hint}"


def _tensorflow_error(exc: BaseException) -> str | None:
    """One line for TensorFlow's own errors (out of memory, files it cannot write), else None."""
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    if errors is None or not isinstance(exc, errors.OpError):
        return None
    message = exc.message if isinstance(getattr(exc, "message", None), str) else str(exc)
    message = message.split("{{function_node", 1)[0]
    message = _one_line(message.strip().splitlines()[0] if message.strip() else type(exc).__name__)
    if isinstance(exc, errors.ResourceExhaustedError):
        return f"out of memory in TensorFlow ({message}); use a smaller model.hidden_units or train.batch_size"
    return f"TensorFlow: {type(exc).__name__}: {message}"


def run(main, argv=None) -> None:
    """Call `main(argv)`; turn a UserError into `error: <message>` on stderr and its exit code, and
    so too what the machine throws at any stage: an OSError (read-only, full disk, permission),
    running out of memory, and TensorFlow's resource errors (exit code 1)."""
    quiet_tensorflow()
    configure_xla()
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    except MemoryError:
        print("error: out of memory; use a smaller model.hidden_units or train.batch_size", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    except Exception as exc:
        line = _tensorflow_error(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def run_process(main) -> None:
    """`run(main)` as a whole process (`python -m stages.<name>`), ended at once when main returns or
    exits: with TensorFlow loaded, the interpreter's own teardown takes ~2 s per process (measured,
    benchmarks/RESULTS.md) and does nothing a stage needs. The atexit handlers still run and the output
    is flushed; a traceback still ends the normal way."""
    try:
        run(main)
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):  # sys.exit("message"), as argparse does not but others may
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    if sys.getprofile() is not None or sys.gettrace() is not None:  # cProfile, coverage, a debugger: let it report
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach the reader
            pass
    os._exit(code)
