"""Results shared through a DVC remote (issue #7): one machine runs the pipeline and pushes, a fresh
clone pulls and has nothing left to run. Slow, about 40 s: `python -m pytest -m slow tests/test_dvc_remote.py`.

Repo A (tiny synthetic IDX data) puts the raw IDX files under DVC (`dvc add data/raw/<file>`, as
data/raw/README.md says), sets a local-folder remote, runs `dvc repro`, commits and `dvc push`es.
Repo B is a `git clone` of A: no DVC cache, no outputs, no raw files; `dvc pull` must bring every
output back byte for byte, and then `dvc status` is clean and `dvc repro` runs nothing.

Raw data: `prepare` depends on the folder data/raw, which holds the four `.dvc`-tracked files. DVC
accepts that (a dependency on a folder containing other stages' outputs is not an overlap; `dvc dag`
links each `.dvc` file to prepare). Left untracked, the raw files are git-ignored and never reach B:
`dvc pull` restores the outputs, but `dvc status` says prepare's data/raw changed, and `dvc repro`
deletes the pulled data/prepared and fails in prepare ("not found"). Tracking them needs care with
.gitignore: under `/data/raw/*`, DVC's ignore check (dulwich) takes the folder itself for ignored and
skips it while collecting stages, so `dvc push` silently leaves the raw files out even though git
tracks their `.dvc` files (treeverse/dvc#10987). /.gitignore therefore ignores the IDX files by name.
"""

import os
import re
from types import SimpleNamespace

import pytest
import yaml
from conftest import IDX_NAMES, git, lock_outs, make_mnist, run, tiny_repo, tree_bytes

pytestmark = pytest.mark.slow

RAW = [f"data/raw/{name}.gz" for name in IDX_NAMES.values()]  # tiny_repo writes them gzipped


def _uncached(repo) -> set[str]:
    """Outputs dvc.yaml declares with `cache: false` (kept in git, never pushed)."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {
        path
        for stage in stages.values()
        for key in ("outs", "metrics", "plots")
        for entry in stage.get(key, [])
        if isinstance(entry, dict)
        for path, options in entry.items()
        if options and options.get("cache") is False
    }


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A: dvc add raw files, remote, repro, commit, push. B: git clone of A, looked at, then `dvc pull`."""
    tmp = tmp_path_factory.mktemp("dvc_remote")
    a, b, remote = tmp / "a", tmp / "b", tmp / "remote"
    tiny_repo(
        a,
        make_mnist(1200, 300, seed=11),
        "copy of mnist-mlp",
        data=dict(val_size=200, shard_size=500),
        model=dict(hidden_units=[64]),
        train=dict(epochs=2, batch_size=64),
    )
    run(["dvc", "add", *RAW], a)
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], a)
    git(a, "add", ".dvc/config", *(f"{path}.dvc" for path in RAW))
    git(a, "commit", "-q", "-m", "raw IDX files under DVC; a local remote")
    run(["dvc", "repro"], a)
    changed = {line[3:] for line in git(a, "status", "--porcelain", "-uall").stdout.splitlines()}
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "dvc repro")
    run(["dvc", "push"], a)

    git(tmp, "clone", "-q", str(a), str(b))
    before = SimpleNamespace(
        present={
            p for p in (*RAW, "data/prepared", "artifacts/checkpoint", "artifacts/saved_model") if (b / p).exists()
        },
        cache=(b / ".dvc/cache").exists(),
        status=run(["dvc", "status"], b).stdout,
    )
    pull = run(["dvc", "pull"], b)
    return SimpleNamespace(a=a, b=b, remote=remote, tmp=tmp, changed=changed, before=before, pull=pull.stdout)


def test_repro_changes_only_dvc_lock_and_uncached_outputs_in_git(shared):
    assert shared.changed == {"dvc.lock"} | _uncached(shared.a), shared.changed


def test_push_sends_every_cached_output_and_the_raw_files(shared):
    outs = {path: md5 for path, md5 in lock_outs(shared.a).items() if path not in _uncached(shared.a)}
    for path in RAW:
        outs[path] = yaml.safe_load((shared.a / f"{path}.dvc").read_text())["outs"][0]["md5"]
    stored = {
        os.path.relpath(os.path.join(folder, name), shared.remote / "files/md5").replace(os.sep, "")
        for folder, _, names in os.walk(shared.remote / "files/md5")
        for name in names
    }
    missing = {path: md5 for path, md5 in outs.items() if md5 not in stored}
    assert not missing, f"not in the remote: {missing}"
    assert len(stored) > len(outs)  # the folders' files too, not only their .dir manifests


def test_fresh_clone_has_no_data(shared):
    assert shared.before.present == set() and not shared.before.cache
    for path in ("data/prepared", "artifacts/saved_model", *RAW):
        assert re.search(rf"not in cache:\s+{path}\n", shared.before.status), shared.before.status


def test_pull_restores_every_output_byte_for_byte(shared):
    a, b = shared.a, shared.b
    paths = [*lock_outs(a), *RAW]
    assert {"data/prepared", "artifacts/checkpoint", "artifacts/saved_model", "reports/metrics.json"} <= set(paths)
    for path in paths:
        expected, got = tree_bytes(a, path), tree_bytes(b, path)
        assert expected, path
        assert sorted(got) == sorted(expected), path
        assert all(got[name] == content for name, content in expected.items()), path


def test_pulled_clone_is_up_to_date_and_repro_runs_nothing(shared):
    assert "Data and pipelines are up to date" in run(["dvc", "status"], shared.b).stdout
    done = run(["dvc", "repro"], shared.b)
    assert "Running stage" not in done.stdout + done.stderr, done.stdout
    assert "Stage 'export' didn't change, skipping" in done.stdout, done.stdout
    assert git(shared.b, "status", "--porcelain").stdout == ""  # dvc.lock untouched


def test_pull_from_an_empty_remote_fails(shared):
    """B's outputs came from the remote: a clone pointed at an empty folder gets nothing, and says so.
    `dvc remote modify --local` writes .dvc/config.local, which git ignores."""
    c, empty = shared.tmp / "c", shared.tmp / "empty"
    empty.mkdir()
    git(shared.tmp, "clone", "-q", str(shared.a), str(c))
    run(["dvc", "remote", "modify", "--local", "storage", "url", str(empty)], c)
    assert git(c, "status", "--porcelain").stdout == ""
    done = run(["dvc", "pull"], c, check=False)
    assert done.returncode != 0
    assert "failed to pull data from the cloud" in done.stderr, done.stderr
    assert not (c / "artifacts/saved_model").exists() and not (c / RAW[0]).exists()
