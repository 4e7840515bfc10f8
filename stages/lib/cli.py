"""What every entry point shares: one-line errors with distinct exit codes, and quiet TensorFlow logs."""

import os
import sys

EXIT_FAILURE = 1  # a missing or damaged input, a failed check
EXIT_USAGE = 2  # invalid params or arguments


class UserError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""

    exit_code = EXIT_FAILURE


class ParamsError(UserError):
    exit_code = EXIT_USAGE


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
    try:
        os.dup2(devnull, 2)
        import tensorflow

        tensorflow.config.list_physical_devices()  # device discovery logs "failed call to cuInit" on CPU-only machines
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


def run(main, argv=None) -> None:
    """Call `main(argv)`; turn a UserError into `error: <message>` on stderr and its exit code."""
    quiet_tensorflow()
    configure_xla()
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
