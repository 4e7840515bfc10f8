"""atomic: an output appears complete, in one rename, or not at all; a failed write leaves the previous one.
With more than one writer: unique temporary names, an exclusive lock per output (the second writer fails at
once, clearly), and leftovers removed only once their writer is gone.
(Killing a process at each step of this, with SIGKILL, is in test_faults.py.)"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, leftovers

from stages.lib import atomic, cli


def test_a_file_appears_only_when_complete(tmp_path):
    final = tmp_path / "reports" / "metrics.json"
    with atomic.output_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".tmp-") and tmp.name.endswith("-metrics.json")
        tmp.write_text("partial")
        assert not final.exists()
    assert final.read_text() == "partial" and leftovers(final.parent) == []


def test_a_folder_replaces_the_previous_one_whole(tmp_path):
    final = tmp_path / "saved_model"
    final.mkdir()
    (final / "old.pb").write_text("previous")
    with atomic.output_path(final, is_dir=True) as tmp:
        assert tmp.is_dir()
        (tmp / "new.pb").write_text("new")
        assert [p.name for p in final.iterdir()] == ["old.pb"]  # untouched while writing
    assert [p.name for p in final.iterdir()] == ["new.pb"]  # replaced, not merged
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("is_dir", [False, True], ids=["file", "folder"])
def test_an_error_while_writing_keeps_the_previous_output(tmp_path, is_dir):
    final = tmp_path / ("out" if is_dir else "out.txt")
    if is_dir:
        final.mkdir()
        (final / "kept").write_text("previous")
    else:
        final.write_text("previous")
    with pytest.raises(RuntimeError, match="stage failed"), atomic.output_path(final, is_dir=is_dir) as tmp:
        (tmp / "half" if is_dir else tmp).write_text("half written")
        raise RuntimeError("stage failed")
    assert (final / "kept" if is_dir else final).read_text() == "previous"
    assert leftovers(tmp_path) == []


def test_the_next_run_removes_what_a_killed_run_left(tmp_path):
    (tmp_path / ".tmp-model").mkdir()
    (tmp_path / ".tmp-model" / "half").write_text("half")
    (tmp_path / ".old-model").write_text("retired")
    with atomic.output_path(tmp_path / "model", is_dir=True) as tmp:
        (tmp / "weights").write_text("w")
    assert leftovers(tmp_path) == [] and [p.name for p in (tmp_path / "model").iterdir()] == ["weights"]


def test_write_json_and_write_text(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"b": 1, "a": [0.5]})
    text = (tmp_path / "a.json").read_text()
    assert json.loads(text) == {"b": 1, "a": [0.5]} and text.endswith("\n") and text.index('"b"') < text.index('"a"')
    atomic.write_text(tmp_path / "a.json", "replaced")
    assert (tmp_path / "a.json").read_text() == "replaced" and leftovers(tmp_path) == []


# --- more than one writer (issue 14) -----------------------------------------------------------------


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_second_writer_fails_clearly_and_the_first_lands_complete(tmp_path):
    final = tmp_path / "prepared"
    with atomic.output_path(final, is_dir=True) as first:
        (first / "part-0").write_text("first\n")
        with pytest.raises(cli.UserError, match=rf"{final}: another run \(pid {os.getpid()}\) is writing it"):
            with atomic.output_path(final, is_dir=True) as second:
                (second / "part-0").write_text("second\n")
        assert (first / "part-0").read_text() == "first\n", "the loser must not touch the winner's copy"
        (first / "part-1").write_text("first\n")
    assert _names(final) == ["part-0", "part-1"]
    assert {p.read_text() for p in final.iterdir()} == {"first\n"}
    assert _names(tmp_path) == ["prepared"], "no temporary copy, no lock file left"


def test_temporary_names_are_unique_and_keep_the_suffix(tmp_path):
    seen = []
    for _ in range(2):
        with atomic.output_path(tmp_path / "curves.png") as tmp:
            seen.append(tmp.name)
            tmp.write_bytes(b"png")
    assert seen[0] != seen[1]
    assert all(name.startswith(f".tmp-{os.getpid()}-") and name.endswith("-curves.png") for name in seen), seen


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_cleaning_up_spares_a_live_writers_files(tmp_path):
    final = tmp_path / "metrics.json"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = tmp_path / f".tmp-{live.pid}-0badc0de-metrics.json"
        dead = tmp_path / f".tmp-{_dead_pid()}-0badc0de-metrics.json"
        retired = tmp_path / f".old-{_dead_pid()}-0badc0de-metrics.json"
        legacy = tmp_path / ".tmp-metrics.json"  # the fixed name of earlier versions
        for path in (alive, dead, retired, legacy):
            path.write_text("partial\n")
        atomic.write_json(final, {"accuracy": 1.0})
        assert _names(tmp_path) == [alive.name, "metrics.json"]
    finally:
        live.kill()
        live.wait()
    atomic.write_json(final, {"accuracy": 1.0})
    assert _names(tmp_path) == ["metrics.json"], "once its writer is gone, the leftover goes"


_KILLED_WHILE_WRITING = textwrap.dedent(
    """
    import os, signal, sys
    from stages.lib import atomic
    with atomic.output_path(sys.argv[1], is_dir=True) as tmp:
        (tmp / "part").write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_writers_lock_does_not_block_the_next(tmp_path):
    final = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_WRITING, str(final)], cwd=REPO, capture_output=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL
    assert any(name.startswith(".tmp-") for name in _names(tmp_path))
    with atomic.output_path(final, is_dir=True) as tmp:
        (tmp / "part").write_text("whole")
    assert _names(tmp_path) == ["out"] and (final / "part").read_text() == "whole"


def test_an_os_error_on_the_temporary_copy_names_the_output(tmp_path):
    final = tmp_path / "per_class.json"
    final.write_text("previous\n")
    with pytest.raises(cli.UserError, match=rf"^{final}: cannot write it \(No space left on device.*previous version"):
        with atomic.output_path(final) as tmp:
            raise OSError(28, os.strerror(28), str(tmp))
    assert final.read_text() == "previous\n" and _names(tmp_path) == ["per_class.json"]
