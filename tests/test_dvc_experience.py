"""What a user sees of DVC (issue #6): `dvc exp run -S`, `dvc exp show`, `dvc params diff`,
`dvc metrics diff`, `dvc plots show/diff`, and the plots page rendered offline in headless Chromium.

Runs in a fresh git repo copied from this one, on tiny synthetic IDX data: `dvc repro`, commit,
`dvc exp run -S train.learning_rate=0.003` (slow, about 2.5 minutes: `python -m pytest -m slow`).
Then results shared through a DVC remote (issue #7), in two more such repos (see "Sharing results").
Then the team's side (issue #13): the GitHub workflow's report script on a two-commit repo (and the model
card's numbers and bytes), a sweep through DVC's queue, and the model registered as a GTO artifact, fetched
with `dvc artifacts get` and used by `predict`.
The Chromium test needs /usr/bin/chromium (or $CHROMIUM), and is skipped, with the reason, without it;
the Vega libraries come with the repo (.dvc/plots/vega/), so no Node, npm or network is involved.
"""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import IDX_NAMES, REPO, git, lock_outs, make_mnist, run, tiny_repo, tree_bytes

pytestmark = pytest.mark.slow

N_TRAIN, N_TEST, VAL_SIZE, SHARD_SIZE = 600, 200, 100, 500
BASE_LR, EXP_LR = 0.001, 0.003
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VEGA_PLOTS = {  # div id DVC derives from the plot's title -> title
    "Loss_per_epoch": "Loss per epoch",
    "Accuracy_per_epoch": "Accuracy per epoch",
    "Confusion_matrix__test_": "Confusion matrix (test)",
}
IMAGES = ("confusion_matrix", "training_curves", "misclassified", "samples")  # reports/<name>.png
VEGA_FILES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")  # in .dvc/plots/vega/, beside the template
DVC_PURPLE = (0x94, 0x5D, 0xD6)  # colour of the `workspace` curves in DVC's plot templates


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """A fresh repo with tiny IDX data after `dvc repro`, a commit, and `dvc exp run -S train.learning_rate=0.003`.

    Yields repo, the baseline's and the experiment's reports/metrics.json, the experiment's name and the
    `dvc exp run` output."""
    repo = tmp_path_factory.mktemp("dvc_exp") / "repo"
    tiny_repo(
        repo,
        make_mnist(N_TRAIN, N_TEST, seed=5),
        "copy of mnist-mlp",
        data=dict(val_size=VAL_SIZE, shard_size=SHARD_SIZE),
        model=dict(hidden_units=[16]),
        train=dict(epochs=2, batch_size=32, learning_rate=BASE_LR),
    )
    run(["dvc", "repro"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "baseline")
    assert git(repo, "status", "--porcelain").stdout == ""
    baseline = json.loads((repo / "reports/metrics.json").read_text())

    done = run(["dvc", "exp", "run", "-S", f"train.learning_rate={EXP_LR}"], repo)
    output = done.stdout + done.stderr
    name = re.search(r"Ran experiment\(s\): (\S+)", output)
    assert name, output
    yield SimpleNamespace(
        repo=repo,
        baseline=baseline,
        metrics=json.loads((repo / "reports/metrics.json").read_text()),
        name=name.group(1),
        output=output,
    )


def _json(argv, repo):
    return json.loads(run(argv, repo).stdout)


def test_exp_run_reruns_only_what_train_params_feed(exp):
    assert "Stage 'prepare' didn't change, skipping" in exp.output, exp.output
    for stage in ("train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in exp.output, exp.output
    assert f"lr {EXP_LR:g}" in exp.output  # train's start line: the override reached the stage
    assert "Experiment results have been applied to your workspace" in exp.output
    assert yaml.safe_load((exp.repo / "params.yaml").read_text())["train"]["learning_rate"] == EXP_LR
    assert "up to date" in run(["dvc", "status"], exp.repo).stdout


def test_exp_show_lists_the_experiment(exp):
    shown = _json(["dvc", "exp", "show", "--json"], exp.repo)
    baseline = next(row for row in shown if row["rev"] != "workspace")
    assert baseline["name"] == "main"
    experiments = [rev for group in baseline["experiments"] or [] for rev in group["revs"]]
    assert [rev["name"] for rev in experiments] == [exp.name]

    def lr_and_metrics(data):
        return (
            data["params"]["params.yaml"]["data"]["train"]["learning_rate"],
            data["metrics"]["reports/metrics.json"]["data"],
        )

    assert lr_and_metrics(baseline["data"]) == (BASE_LR, exp.baseline)
    assert lr_and_metrics(experiments[0]["data"]) == (EXP_LR, exp.metrics)

    rows = {
        row["Experiment"] or row["rev"]: row
        for row in csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], exp.repo).stdout))
    }
    assert {"workspace", "main", exp.name} <= set(rows)
    for rev, lr, metrics in (("main", BASE_LR, exp.baseline), (exp.name, EXP_LR, exp.metrics)):
        assert float(rows[rev]["train.learning_rate"]) == lr
        assert float(rows[rev]["test.accuracy"]) == metrics["test"]["accuracy"]

    narrow = run(["dvc", "exp", "show", "--only-changed", "--md"], exp.repo).stdout
    header = narrow.splitlines()[0]
    assert "train.learning_rate" in header and "test.accuracy" in header, narrow
    assert "train.epochs" not in header and "model.hidden_units" not in header, narrow  # unchanged: left out
    assert exp.name in narrow


def test_params_diff_against_the_last_commit(exp):
    expected = {
        "params.yaml": {"train.learning_rate": {"old": BASE_LR, "new": EXP_LR, "diff": pytest.approx(EXP_LR - BASE_LR)}}
    }
    assert _json(["dvc", "params", "diff", "--json"], exp.repo) == expected  # workspace (the applied exp) vs HEAD
    assert _json(["dvc", "params", "diff", "HEAD", exp.name, "--json"], exp.repo) == expected
    assert _json(["dvc", "exp", "diff", "--json"], exp.repo)["params"] == expected

    text = run(["dvc", "params", "diff"], exp.repo).stdout
    assert re.search(rf"params\.yaml\s+train\.learning_rate\s+{BASE_LR}\s+{EXP_LR}\b", text), text


def test_metrics_diff_shows_test_accuracy(exp):
    old, new = exp.baseline["test"]["accuracy"], exp.metrics["test"]["accuracy"]
    assert old != new  # three times the learning rate moves the tiny model
    for argv in (["dvc", "metrics", "diff", "--json"], ["dvc", "metrics", "diff", "HEAD", exp.name, "--json"]):
        diff = _json(argv, exp.repo)["reports/metrics.json"]
        assert (diff["test.accuracy"]["old"], diff["test.accuracy"]["new"]) == (old, new), argv
    text = run(["dvc", "metrics", "diff"], exp.repo).stdout
    assert re.search(rf"reports/metrics\.json\s+test\.accuracy\s+{old}\s+{new}\s", text), text


# --- plots -----------------------------------------------------------------------------------------


def _vega_specs(html: str) -> dict:
    """{div id: Vega-Lite spec} of a page written by `dvc plots show/diff`."""
    found = re.findall(r"var spec = (\{.*?\});\s*vegaEmbed\('#([^']+)', spec\)", html, re.S)
    return {div: json.loads(spec) for spec, div in found}


def _check_page(out_dir, revs: list[str], exp):
    """The page in `out_dir` has the three Vega-Lite plots with the data of `revs`, and the PNGs of each."""
    html = (out_dir / "index.html").read_text()
    for library in VEGA_FILES:  # the committed template: the Vega kept beside it, so the page works offline
        assert f'<script src="../.dvc/plots/vega/{library}">' in html
    assert "cdn.jsdelivr" not in html and "https://" not in html.split("<body>")[0]
    specs = _vega_specs(html)
    assert {div: spec["title"]["text"] for div, spec in specs.items()} == VEGA_PLOTS

    for div, key in (("Loss_per_epoch", "loss"), ("Accuracy_per_epoch", "accuracy")):
        values = specs[div]["data"]["values"]
        assert {(row["rev"], row["filename"]) for row in values} == {
            (rev, f"{split}/{key}.tsv") for rev in revs for split in ("train", "val")
        }, div
        assert sorted(
            int(row["step"]) for row in values if row["rev"] == revs[0] and row["filename"].startswith("val")
        ) == [1, 2]
        assert specs[div]["encoding"]["x"]["title"] == "epoch"
    workspace_val_accuracy = {
        int(row["step"]): float(row["accuracy"])
        for row in specs["Accuracy_per_epoch"]["data"]["values"]
        if row["rev"] == "workspace" and row["filename"] == "val/accuracy.tsv"
    }
    kept = json.loads((exp.repo / "reports/train/metrics.json").read_text())["best_epoch"]
    assert workspace_val_accuracy[kept] == exp.metrics["val"]["accuracy"]  # the kept epoch's, exactly

    confusion = specs["Confusion_matrix__test_"]["data"]["values"]
    for rev in revs:
        rows = [row for row in confusion if row["rev"] == rev]
        assert len(rows) == N_TEST, rev
    errors = sum(row["actual"] != row["predicted"] for row in confusion if row["rev"] == "workspace")
    assert errors == exp.metrics["test"]["errors"]

    for name in IMAGES:
        for rev in revs:
            image = f"static/{rev}_reports_{name}.png"
            assert f'<img src="{image}">' in html, image
            assert (out_dir / image).read_bytes()[:8] == PNG_MAGIC, image
    assert (out_dir / "static/workspace_reports_confusion_matrix.png").read_bytes() == (
        exp.repo / "reports/confusion_matrix.png"
    ).read_bytes()
    return html


@pytest.fixture(scope="module")
def plots(exp):
    """`dvc plots show` into dvc_plots/ and `dvc plots diff` (workspace vs HEAD) into dvc_plots_diff/."""
    shown = run(["dvc", "plots", "show"], exp.repo).stdout
    diffed = run(["dvc", "plots", "diff", "-o", "dvc_plots_diff"], exp.repo).stdout
    return SimpleNamespace(show=exp.repo / "dvc_plots", diff=exp.repo / "dvc_plots_diff", outputs=(shown, diffed))


def test_plots_show(exp, plots):
    assert f"file://{plots.show / 'index.html'}" in plots.outputs[0]
    _check_page(plots.show, ["workspace"], exp)


def test_plots_diff(exp, plots):
    assert f"file://{plots.diff / 'index.html'}" in plots.outputs[1]
    _check_page(plots.diff, ["workspace", "HEAD"], exp)


# --- the page in a browser ---------------------------------------------------------------------------


def _chromium():
    candidates = [
        os.environ.get("CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _headless(chromium, profile, page, *args):
    """One headless Chromium run on a file:// page, with the network unreachable (any CDN script would fail
    at once, so only the Vega kept in .dvc/plots/vega/ can draw the charts)."""
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
        page.as_uri(),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}\n{done.stderr[-3000:]}"
    return done.stdout


def _rendered_charts(dom: str) -> dict:
    """{div id: the chart element vega-embed drew in it (`<canvas ... class="marks">` or `<svg ...>`)}."""
    found = {}
    starts = sorted((dom.index(f'id="{div}"'), div) for div in VEGA_PLOTS if f'id="{div}"' in dom)
    for (start, div), (end, _) in zip(starts, starts[1:] + [(len(dom), None)]):
        chart = re.search(r'<(?:canvas|svg)\b[^>]*\bclass="marks"[^>]*>', dom[start:end])
        if chart and 'class="vega-embed' in dom[start:end]:
            found[div] = chart.group(0)
    return found


def test_plots_render_offline_in_chromium(exp, plots, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium (/usr/bin/chromium or $CHROMIUM): `apt-get install chromium` to run the render check")
    assert all((exp.repo / ".dvc/plots/vega" / f).is_file() for f in VEGA_FILES)  # copied with the repo

    for out_dir, revs in ((plots.show, 1), (plots.diff, 2)):
        dom = _headless(chromium, tmp_path / f"profile-{revs}", out_dir / "index.html", "--dump-dom")
        charts = _rendered_charts(dom)
        assert set(charts) == set(VEGA_PLOTS), f"charts drawn: {sorted(charts)}\n{dom[:3000]}"
        for div, element in charts.items():
            size = re.search(r'width="(\d+)" height="(\d+)"', element)
            assert size is None or min(map(int, size.groups())) > 100, (div, element)
        assert len(re.findall(r'<img src="static/\w+\.png">', dom)) == len(IMAGES) * revs

    shot = tmp_path / "dvc_plots.png"
    _headless(
        chromium,
        tmp_path / "profile-shot",
        plots.show / "index.html",
        f"--screenshot={shot}",
        "--window-size=1400,3000",
    )
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (3000, 1400, 3)
    purple = (np.abs(pixels - np.array(DVC_PURPLE)).max(axis=2) <= 40).sum()
    assert purple > 300, f"the workspace curves are not on the screenshot ({purple} purple pixels): {shot}"
    print(f"screenshot: {shot}")


# --- a misspelt key ------------------------------------------------------------------------------------


def test_misspelt_param_is_refused(exp):
    """`-S train.learnig_rate=…` is refused by DVC itself (Hydra: the key must exist); with the `+` that DVC
    then suggests, the key lands in params.yaml and the params schema refuses it in one line."""
    repo = exp.repo
    params_before = (repo / "params.yaml").read_text()
    try:
        plain = run(["dvc", "exp", "run", "-S", "train.learnig_rate=0.003"], repo, check=False)
        output = plain.stdout + plain.stderr
        assert plain.returncode != 0, output
        assert "Could not override 'train.learnig_rate'" in output and "+train.learnig_rate" in output, output
        assert "Running stage" not in output and (repo / "params.yaml").read_text() == params_before

        added = run(["dvc", "exp", "run", "-S", "+train.learnig_rate=0.003"], repo, check=False)
        output = added.stdout + added.stderr
        assert added.returncode != 0, output
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert errors == ["error: params.yaml: unknown key train.learnig_rate (did you mean train.learning_rate?)"], (
            output
        )
        assert "Traceback" not in output and "Running stage 'evaluate'" not in output, output
        assert "learnig_rate" in (repo / "params.yaml").read_text()  # DVC wrote the key; the schema caught it
    finally:
        # DVC removed train's outputs before running it: put the applied experiment back
        (repo / "params.yaml").write_text(params_before)
        run(["dvc", "checkout"], repo)
    assert "up to date" in run(["dvc", "status"], repo).stdout
    assert json.loads((repo / "reports/metrics.json").read_text()) == exp.metrics


# --- Sharing results through a DVC remote ----------------------------------------------------------------
#
# Results shared through a DVC remote (issue #7): one machine runs the pipeline and pushes, a fresh
# clone pulls and has nothing left to run (about 40 s more).
#
# Repo A (tiny synthetic IDX data) puts the raw IDX files under DVC (`dvc add data/raw/<file>`, as
# data/raw/README.md says), sets a local-folder remote, runs `dvc repro`, commits and `dvc push`es.
# Repo B is a `git clone` of A: no DVC cache, no outputs, no raw files; `dvc pull` must bring every
# output back byte for byte, and then `dvc status` is clean and `dvc repro` runs nothing.
#
# Raw data: `prepare` depends on the folder data/raw, which holds the four `.dvc`-tracked files. DVC
# accepts that (a dependency on a folder containing other stages' outputs is not an overlap; `dvc dag`
# links each `.dvc` file to prepare). Left untracked, the raw files are git-ignored and never reach B:
# `dvc pull` restores the outputs, but `dvc status` says prepare's data/raw changed, and `dvc repro`
# deletes the pulled data/prepared and fails in prepare ("not found"). Tracking them needs care with
# .gitignore: under `/data/raw/*`, DVC's ignore check (dulwich) takes the folder itself for ignored and
# skips it while collecting stages, so `dvc push` silently leaves the raw files out even though git
# tracks their `.dvc` files (treeverse/dvc#10987). /.gitignore therefore ignores the IDX files by name.

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


# --- the GitHub workflow's report script, on a two-commit repo (issue #13) ------------------------------------

REPORT_SCRIPT = ".github/scripts/pr_report.py"


def _card_numbers_match(repo):
    """The model card's tables hold reports/metrics.json's and reports/per_class.json's numbers."""
    card = (repo / "reports/model_card.md").read_text()
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    per_class = json.loads((repo / "reports/per_class.json").read_text())

    def table(heading):
        section = card.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("|")][2:]
        return {cells[0]: cells[1:] for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows)}

    headline = table("Headline metrics")
    for split in ("test", "val"):
        m = metrics[split]
        shown = dict(zip(("accuracy", "loss", "macro_f1", "errors"), headline[split][:4]))
        assert {key: float(cell) for key, cell in shown.items() if key in m} == m, split
        assert all(cell == "—" for key, cell in shown.items() if key not in m), split  # validation's loss, macro F1
    rows = table("Per class (test)")
    assert set(rows) == set(per_class)
    for digit, c in per_class.items():
        assert [float(x) for x in rows[digit]] == [c["precision"], c["recall"], c["f1"], c["support"]]
    assert str(repo) not in card and "](confusion_matrix.png)" in card
    return card


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory):
    """A repo after `dvc repro` (commit 1), then train.learning_rate changed and reproduced (commit 2)."""
    repo = tmp_path_factory.mktemp("pr_report") / "repo"
    tiny_repo(
        repo,
        make_mnist(N_TRAIN, N_TEST, seed=7),
        "copy of mnist-mlp",
        data=dict(val_size=VAL_SIZE, shard_size=SHARD_SIZE),
        model=dict(hidden_units=[16]),
        train=dict(epochs=2, batch_size=32, learning_rate=BASE_LR),
    )
    run(["dvc", "repro"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "baseline")
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["train"]["learning_rate"] = EXP_LR
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["dvc", "repro"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "learning rate 0.003")
    assert git(repo, "status", "--porcelain").stdout == ""
    return repo


def test_report_script_shows_both_diffs_and_the_card(two_commits):
    repo = two_commits
    run(["python", REPORT_SCRIPT, "report", "--base", "HEAD~1"], repo)
    report = (repo / "reports/pr_report.md").read_text()
    assert report.startswith("<!-- mnist-mlp pr-report -->")
    params_table = report.split("### Params (`dvc params diff`)", 1)[1].split("###", 1)[0]
    assert "| Path        | Param               | HEAD~1   | workspace   |" in params_table, params_table
    assert re.search(r"\| params\.yaml \| train\.learning_rate +\| 0\.001 +\| 0\.003 +\|", params_table), params_table
    metrics_table = report.split("### Metrics (`dvc metrics diff`)", 1)[1].split("<details>", 1)[0]
    assert re.search(r"\| Path +\| Metric +\| HEAD~1 +\| workspace +\| Change +\|", metrics_table), metrics_table
    assert re.search(r"\| reports/metrics\.json +\| test\.accuracy +\|", metrics_table), metrics_table
    card = _card_numbers_match(repo)
    assert card.strip() in report  # the whole card, in a <details> block
    assert "`pipeline-reports` build artifact" in report  # where the pictures are
    assert git(repo, "status", "--porcelain").stdout == ""  # the report is git-ignored

    # no base (a branch's first push): the card without diffs
    run(["python", REPORT_SCRIPT, "report", "--base", "0" * 40], repo)
    report = (repo / "reports/pr_report.md").read_text()
    assert "no base revision" in report and "dvc params diff" not in report and card.strip() in report


def test_report_script_reproduce_checks_the_floor(two_commits):
    repo = two_commits
    floor = repo / ".ci/min_test_accuracy"
    try:
        floor.write_text("0.5\n")  # tiny data: not the full-data floor
        done = run(["python", REPORT_SCRIPT, "reproduce"], repo)
        assert "no DVC remote configured" in done.stdout and "(floor 0.5)" in done.stdout, done.stdout + done.stderr
        floor.write_text("1.01\n")
        failed = run(["python", REPORT_SCRIPT, "reproduce"], repo, check=False)
        assert failed.returncode != 0 and "below the floor 1.01" in failed.stderr, failed.stdout + failed.stderr
    finally:
        git(repo, "checkout", "--", ".ci/min_test_accuracy")


def test_model_card_is_byte_identical_after_a_forced_rerun(two_commits):
    repo = two_commits
    card = (repo / "reports/model_card.md").read_bytes()
    run(["dvc", "repro", "--force"], repo)
    assert (repo / "reports/model_card.md").read_bytes() == card
    _card_numbers_match(repo)


# --- a sweep through DVC's queue (issue #13) ------------------------------------------------------------------

SWEEP_LR, SWEEP_BATCH = (0.001, 0.01), (16, 32)
QUEUE_DRAIN_TIMEOUT = 20 * 60  # seconds: five tiny experiments take about two minutes on 2 cores


def _dvc_env():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONDONTWRITEBYTECODE": "1"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _queue_start(repo, log):
    """`dvc queue start`: its worker lives on in the background and holds on to inherited pipes, so its
    output goes to a file, not to a pipe that would never close."""
    with open(log, "ab") as out:
        done = subprocess.run(
            ["dvc", "queue", "start"],
            cwd=repo,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=_dvc_env(),
            timeout=120,
        )
    assert done.returncode == 0, Path(log).read_text()


def _queue_status(repo) -> dict:
    """name -> state (Queued, Running, Success, Failed) of `dvc queue status`."""
    out = run(["dvc", "queue", "status"], repo).stdout
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\w+\s+(\S+)\s+.*?\s(Queued|Running|Success|Failed)\s*$", out, re.M)
    }


def _wait_for_drain(repo, log, names, timeout=QUEUE_DRAIN_TIMEOUT) -> dict:
    """Wait until every experiment in `names` has ended; `dvc queue status` can briefly list none of a
    task the worker has just taken (seen in CI: four ended, the fifth absent)."""
    deadline = time.monotonic() + timeout
    while True:
        states = _queue_status(repo)
        if set(names) <= set(states) and not {"Queued", "Running"} & set(states.values()):
            return states
        assert time.monotonic() < deadline, f"the queue did not drain in {timeout} s: {states}"
        if "Running" not in states.values() and "0 active, 0 idle" in run(["dvc", "queue", "status"], repo).stdout:
            _queue_start(repo, log)  # DVC's worker can exit with a task still queued (seen in CI): start another
        time.sleep(3)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A committed repo (IDX files under DVC, so the queue's workspaces get them), a 2 x 2 grid and one
    experiment the params schema refuses, queued, run by `dvc queue start`, drained."""
    root = tmp_path_factory.mktemp("sweep")
    repo = root / "repo"
    tiny_repo(
        repo,
        make_mnist(N_TRAIN, N_TEST, seed=3),
        "copy of mnist-mlp",
        data=dict(val_size=VAL_SIZE, shard_size=SHARD_SIZE),
        model=dict(hidden_units=[16]),
        train=dict(epochs=1, batch_size=32),
    )
    # a queued experiment runs in a fresh copy of the last commit: git-ignored files are not in it
    run(["dvc", "add", *sorted(str(p.relative_to(repo)) for p in (repo / "data/raw").glob("*-ubyte*"))], repo)
    run(["dvc", "repro"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "baseline")
    assert git(repo, "status", "--porcelain").stdout == ""

    grid = ["-S", "train.learning_rate=" + ",".join(map(str, SWEEP_LR))]
    grid += ["-S", "train.batch_size=" + ",".join(map(str, SWEEP_BATCH))]
    queued = run(["dvc", "exp", "run", "--queue", *grid], repo)
    names = re.findall(r"Queued experiment '(\S+)' for future execution", queued.stdout + queued.stderr)
    assert len(names) == 4, queued.stdout + queued.stderr
    run(["dvc", "exp", "run", "--queue", "-n", "zero-epochs", "-S", "train.epochs=0"], repo)

    log = root / "queue.log"
    try:
        _queue_start(repo, log)
        states = _wait_for_drain(repo, log, [*names, "zero-epochs"])
    finally:
        run(["dvc", "queue", "stop"], repo, check=False)  # the idle worker exits
    yield SimpleNamespace(repo=repo, names=names, states=states)


def test_sweep_runs_the_grid_and_only_the_bad_value_fails(sweep):
    assert sweep.states == {**{name: "Success" for name in sweep.names}, "zero-epochs": "Failed"}, sweep.states


def test_sweep_bad_value_shows_our_one_line_error_in_queue_logs(sweep):
    logs = run(["dvc", "queue", "logs", "zero-epochs"], sweep.repo, check=False)
    output = logs.stdout + logs.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == ["error: params.yaml: train.epochs = 0: input should be greater than or equal to 1"], output
    assert "Traceback" not in output


def test_sweep_misspelt_key_is_refused_before_queueing(sweep):
    before = _queue_status(sweep.repo)
    refused = run(["dvc", "exp", "run", "--queue", "-S", "train.lerning_rate=0.1,0.2"], sweep.repo, check=False)
    assert refused.returncode != 0 and "Could not override 'train.lerning_rate'" in refused.stdout + refused.stderr
    assert _queue_status(sweep.repo) == before


def test_sweep_exp_show_lists_the_grid_and_the_best_is_branched_and_applied(sweep):
    repo = sweep.repo
    rows = {
        row["Experiment"]: row
        for row in csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo).stdout))
        if row["Experiment"] in sweep.names
    }
    assert set(rows) == set(sweep.names)
    grid = {(float(r["train.learning_rate"]), int(r["train.batch_size"])) for r in rows.values()}
    assert grid == {(lr, b) for lr in SWEEP_LR for b in SWEEP_BATCH}
    assert all(r["State"] == "Success" for r in rows.values())
    best = max(rows, key=lambda name: (float(rows[name]["test.accuracy"]), name))

    run(["dvc", "exp", "branch", best, "sweep-best"], repo)
    branched = yaml.safe_load(git(repo, "show", "sweep-best:params.yaml").stdout)["train"]
    assert (branched["learning_rate"], branched["batch_size"]) == (
        float(rows[best]["train.learning_rate"]),
        int(rows[best]["train.batch_size"]),
    )
    run(["dvc", "exp", "apply", best], repo)
    assert json.loads((repo / "reports/metrics.json").read_text())["test"]["accuracy"] == float(
        rows[best]["test.accuracy"]
    )
    assert "up to date" in run(["dvc", "status"], repo).stdout  # the applied outputs are the experiment's


# --- the model as a registry artifact (issue #13) -------------------------------------------------------------

ARTIFACT = "mnist-mlp"


def test_artifact_registered_fetched_and_used_for_predict(tmp_path):
    """Register a version with GTO in a repo with a local remote, fetch it with `dvc artifacts get` (by version
    and by stage) into a fresh folder, without the repo's cache, and classify a picture from there."""
    import numpy as np
    from PIL import Image

    repo, remote = tmp_path / "repo", tmp_path / "remote"
    data = make_mnist(N_TRAIN, N_TEST, seed=9)
    tiny_repo(
        repo,
        data,
        "copy of mnist-mlp",
        data=dict(val_size=VAL_SIZE, shard_size=SHARD_SIZE),
        model=dict(hidden_units=[16]),
        train=dict(epochs=1, batch_size=32),
    )
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())["artifacts"][ARTIFACT]
    assert declared["path"] == "artifacts/saved_model" and declared["type"] == "model"
    assert declared["desc"] and declared["labels"]
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], repo)
    run(["dvc", "repro"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "model v1")
    run(["dvc", "push"], repo)
    run(["gto", "register", ARTIFACT, "--version", "v1.0.0"], repo)
    run(["gto", "assign", ARTIFACT, "--version", "v1.0.0", "--stage", "prod"], repo)
    shown = run(["gto", "show", "--json"], repo).stdout
    assert "v1.0.0" in shown and "prod" in shown, shown
    shutil.rmtree(repo / ".dvc/cache")  # what `get` fetches comes from the remote

    exported = {
        p.relative_to(repo / declared["path"]): p.read_bytes()
        for p in (repo / declared["path"]).rglob("*")
        if p.is_file()
    }
    fresh = tmp_path / "fresh"
    for how in (["--rev", "v1.0.0"], ["--stage", "prod"]):
        out = fresh / how[1]
        run(["dvc", "artifacts", "get", str(repo), ARTIFACT, *how, "-o", str(out)], tmp_path)
        fetched = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert fetched == exported  # the whole export folder, byte for byte

    # a test digit as a user's picture: dark ink on white, enlarged
    picture = tmp_path / "picture.png"
    Image.fromarray(255 - data.test_images[0]).resize((112, 112)).save(picture)
    env_python = ["python", "-m", "stages.predict"]
    from_fetched = run([*env_python, str(fresh / "v1.0.0"), str(picture), "--json"], REPO)
    from_repo = run([*env_python, str(repo / declared["path"]), str(picture), "--json"], REPO)
    result = json.loads(from_fetched.stdout)
    assert result["path"] == str(picture) and 0 <= result["class_id"] <= 9 and 0 < result["probability"] <= 1
    assert from_fetched.stdout == from_repo.stdout
    assert np.isfinite(result["probability"])


# --- views that fit a terminal, and the way back to the committed state --------------------------------

WIDTH = 120
EXP_SHOW = [
    "dvc",
    "exp",
    "show",
    "--no-pager",
    "--only-changed",
    "--drop",
    r"Created|Executor|.*/|val\.|test\.(loss|macro)",
]
RESTORE = (["git", "checkout", "--", "params.yaml", "dvc.lock", "reports/metrics.json"], ["dvc", "checkout"])


def test_the_views_test_runs_the_readmes_commands():
    """EXP_SHOW and RESTORE are the README's own commands (so the test below checks what users type)."""
    import shlex

    readme = (REPO / "README.md").read_text()
    exp_show = next(line for line in readme.splitlines() if line.startswith("dvc exp show --only-changed"))
    assert shlex.split(exp_show, comments=True) == [a for a in EXP_SHOW if a != "--no-pager"]
    recipe = " ".join(readme.split("`git checkout -- params.yaml", 1)[1].split("`", 1)[0].split())
    assert f"params.yaml {recipe}" == " ".join(RESTORE[0][3:]) + " && " + " ".join(RESTORE[1])


def _fits(text: str) -> list[str]:
    lines = text.splitlines()
    assert lines and max(map(len, lines)) <= WIDTH, "\n" + text
    return lines


def test_views_fit_120_columns_after_two_experiments_and_a_queued_sweep(exp, monkeypatch):
    """The README's commands after a second experiment (model.hidden_units) and a queued sweep: each line
    of `dvc exp show` (the README's short form), `dvc metrics diff` and `dvc metrics show` fits 120 columns
    with test.accuracy (and the changed params); no DVCLive `step`. (Issue 15: `dvc metrics show` took 138
    with validation's loss and macro F1.) Then the README's restore recipe gives back the committed state."""
    repo = exp.repo
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    second = run(["dvc", "exp", "run", "-S", "model.hidden_units=[24]"], repo)
    assert "Ran experiment" in second.stdout + second.stderr
    run(["dvc", "exp", "run", "--queue", "-S", "train.learning_rate=0.002,0.004"], repo)
    try:
        shown = run(EXP_SHOW, repo).stdout
        header = "\n".join(_fits(shown)[:3])
        for column in ("Experiment", "test.accuracy", "train.learning_rate", "model.hidden_units", "State"):
            assert column in header, shown
        assert shown.count("Queued") == 2 and exp.name in shown, shown
        assert "step" not in header and "stages/" not in shown, shown

        diff = run(["dvc", "metrics", "diff", "HEAD", exp.name], repo).stdout
        assert "test.accuracy" in "".join(_fits(diff)) and "step" not in diff, diff
        shown_metrics = run(["dvc", "metrics", "show"], repo).stdout  # one column per key of reports/metrics.json
        assert "test.accuracy" in "".join(_fits(shown_metrics)) and "step" not in shown_metrics, shown_metrics
        assert "reports/train" not in shown_metrics
    finally:
        run(["dvc", "queue", "remove", "--queued"], repo)
    for argv in RESTORE:
        run(argv, repo)
    shutil.rmtree(repo / "dvc_plots_diff", ignore_errors=True)  # the plots tests' page, not the pipeline's
    assert git(repo, "status", "--porcelain").stdout == ""
    assert "up to date" in run(["dvc", "status"], repo).stdout
    assert json.loads((repo / "reports/metrics.json").read_text()) == exp.baseline


def test_exp_run_up_to_evaluate_leaves_export_for_later(exp):
    """docs/experiments.md's quicker experiment: `dvc exp run evaluate` trains and evaluates, skips export,
    and is compared as usual; `dvc status` shows export as changed until a `dvc repro` runs it alone."""
    repo = exp.repo
    done = run(["dvc", "exp", "run", "evaluate", "-S", "train.seed=7"], repo)
    output = done.stdout + done.stderr
    assert "Running stage 'train'" in output and "Running stage 'evaluate'" in output, output
    assert "Running stage 'export'" not in output, output
    name = re.search(r"Ran experiment\(s\): (\S+)", output).group(1)
    try:
        status = run(["dvc", "status"], repo).stdout
        assert status.startswith("export:") and "artifacts/checkpoint" in status, status
        shown = run(EXP_SHOW, repo).stdout
        assert name in shown, shown
        metrics = json.loads((repo / "reports/metrics.json").read_text())
        assert metrics != exp.baseline  # another seed, another model, evaluated
        rerun = run(["dvc", "repro"], repo)
        assert "Running stage 'export'" in rerun.stdout and "Running stage 'train'" not in rerun.stdout, rerun.stdout
        assert "up to date" in run(["dvc", "status"], repo).stdout
    finally:
        run(["dvc", "exp", "remove", name], repo)
        for argv in RESTORE:
            run(argv, repo)
    assert git(repo, "status", "--porcelain").stdout == ""
