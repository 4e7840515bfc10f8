"""What every entry point shares: the XLA flags it adds before TensorFlow starts."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

from stages.lib import cli


@pytest.mark.parametrize(
    "before, after",
    [
        (None, cli.XLA_CPU_FLAGS),
        ("--xla_dump_to=/tmp/x", "--xla_dump_to=/tmp/x " + cli.XLA_CPU_FLAGS),
        ("--xla_cpu_prefer_vector_width=256", "--xla_cpu_prefer_vector_width=256"),  # the user's choice wins
    ],
)
def test_configure_xla_adds_our_flags_once(monkeypatch, before, after):
    if before is None:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    else:
        monkeypatch.setenv("XLA_FLAGS", before)
    cli.configure_xla()
    cli.configure_xla()
    assert os.environ["XLA_FLAGS"] == after


# --- hostile paths and the machine's errors (issue 14) ------------------------------------------------


@pytest.mark.parametrize(
    "kind, words",
    [
        ("fifo", "a FIFO (named pipe), not a regular file"),
        ("directory", "a directory, not a regular file"),
        ("dev-zero", "a character device, not a regular file"),
        ("socket", "a socket, not a regular file"),
        ("loop", "a symbolic link loop, not a regular file"),
        ("broken", "a broken symbolic link (to nowhere), not a regular file"),
        ("missing", "not found"),
    ],
)
def test_only_a_regular_file_is_opened_and_the_others_are_named(tmp_path, kind, words):
    import socket

    path = tmp_path / "input"
    keep = {
        "fifo": lambda: os.mkfifo(path),
        "directory": lambda: path.mkdir(),
        "dev-zero": lambda: path.symlink_to("/dev/zero"),
        "socket": lambda: socket.socket(socket.AF_UNIX).bind(str(path)),
        "loop": lambda: path.symlink_to(path.name),
        "broken": lambda: path.symlink_to("nowhere"),
        "missing": lambda: None,
    }[kind]()
    with pytest.raises(cli.UserError) as caught:
        cli.read_regular(path, 100, "put the file there")
    assert str(caught.value) == f"{path}: {words}; put the file there"
    del keep


def test_the_caller_may_name_the_path_itself(tmp_path):
    """named=False: the reason alone, then the hint (predict prints each name itself, escaped)."""
    os.mkfifo(tmp_path / "fifo")
    for path, words in ((tmp_path / "fifo", "a FIFO (named pipe), not a regular file"), (tmp_path / "x", "not found")):
        with pytest.raises(cli.UserError) as caught:
            cli.open_regular(path, "hint", named=False)
        assert str(caught.value) == f"{words}; hint"


def test_a_link_to_a_regular_file_is_read(tmp_path):
    (tmp_path / "real").write_bytes(b"data")
    (tmp_path / "link").symlink_to("real")  # DVC's symlink cache type
    assert cli.read_regular(tmp_path / "link", 100) == b"data"


def test_a_file_larger_than_its_limit_is_not_read(tmp_path):
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    with pytest.raises(cli.UserError, match=rf"{path}: 1073741824 bytes, too large \(at most 1000\)"):
        cli.read_regular(path, 1000)


def _run_raising(exc, capsys) -> tuple[int, str]:
    def main(argv):
        raise exc

    with pytest.raises(SystemExit) as exited:
        cli.run(main, [])
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "exc, line",
    [
        (OSError(28, "No space left on device", "r/x.json"), "error: r/x.json: No space left on device; free"),
        (OSError(30, "Read-only file system", "reports"), "error: reports: Read-only file system; the output folder"),
        (
            PermissionError(13, "Permission denied", "a", None, "b"),
            "error: a -> b: Permission denied; check the permissions",
        ),
        (MemoryError(), "error: out of memory; use a smaller model.hidden_units"),
    ],
    ids=["no-space", "read-only", "permission", "memory"],
)
def test_run_turns_the_machines_errors_into_one_line(capsys, exc, line):
    code, err = _run_raising(exc, capsys)
    assert code == cli.EXIT_FAILURE == 1
    assert err.startswith(line) and err.count("\n") == 1, err


def test_run_lets_a_bug_be_a_traceback(capsys):
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda argv: 1 / 0, [])


@pytest.mark.parametrize(
    "body, code, err",
    [
        ("pass", 0, ""),
        ("raise cli.ParamsError('params.yaml: bad')", 2, "error: params.yaml: bad\n"),
        ("raise SystemExit(0)", 0, ""),  # argparse's --help
        ("raise KeyboardInterrupt", 130, "error: interrupted\n"),
    ],
    ids=["returns", "user-error", "help", "interrupted"],
)
def test_run_process_ends_with_mains_code_after_flushing_and_the_atexit_handlers(tmp_path, body, code, err):
    marker = tmp_path / "atexit-ran"
    script = (
        "import atexit, pathlib, sys\n"
        "from stages.lib import cli\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        "def main(argv):\n"
        "    print('buffered, no newline', end='')\n"  # still in the buffer when the process ends
        f"    {body}\n"
        "cli.run_process(main)\n"
        "print('not reached')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # so the print stays buffered
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (code, "buffered, no newline", err)
    assert marker.read_text() == "yes"


# --- every entry point's --help ------------------------------------------------------------------------

ENTRY_POINTS = ("prepare", "train", "evaluate", "export", "predict", "score_saved_model")


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_shows_the_command_users_type_every_default_and_every_option_described(name, monkeypatch, capsys):
    import argparse
    import importlib

    parsers = []
    real_parse_args = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        parsers.append(self)
        return real_parse_args(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    module = importlib.import_module(f"stages.{name}")
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m stages.{name} "), text
    [parser] = parsers
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name}: {action.option_strings or action.dest} has no description"
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            shown = "%(default)" in action.help or issubclass(
                parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter
            )
            assert shown and f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)
