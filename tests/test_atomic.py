"""atomic: an output appears complete, in one rename, or not at all; a failed write leaves the previous one.
(Killing a process at each step of this, with SIGKILL, is in test_faults.py.)"""

import json

import pytest
from conftest import leftovers

from stages.lib import atomic


def test_a_file_appears_only_when_complete(tmp_path):
    final = tmp_path / "reports" / "metrics.json"
    with atomic.output_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name == ".tmp-metrics.json"
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
