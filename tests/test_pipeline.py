"""The pipeline: dvc.yaml's declarations and the code each stage runs (fast); the prepare stage on data that is
not MNIST (fast) and on every source (slow: byte-identical output); then end to end: `dvc repro` in a fresh
git repo copied from this one, on small synthetic IDX data (slow: `python -m pytest -m slow`).
"""

import ast
import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    REPO,
    data_params_file,
    declared_paths,
    git,
    idx_bytes,
    make_mnist,
    prepare_argv,
    run,
    sha256,
    tiny_repo,
    tree_bytes,
    write_idx,
)

from stages.lib import cli, mnist_facts

N_TRAIN, N_TEST, VAL_SIZE, SHARD_SIZE = 1200, 300, 200, 500
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


STAGES = ("prepare", "train", "evaluate", "export")


def _load_dvc_yaml(root=REPO):
    """dvc.yaml parsed, or the parse error."""
    try:
        return yaml.safe_load((root / "dvc.yaml").read_text()), None
    except yaml.YAMLError as exc:
        return None, exc


def test_dvc_yaml_declares_the_pipeline():
    """Fast: dvc.yaml parses; each stage runs its module, reads only its params sections, and declares
    every path its command line names (inputs as deps, outputs as outs or metrics).

    Regression: acca727 committed a dvc.yaml with plot entries pasted into evaluate's outs (invalid
    YAML, every dvc command failed); fixed in b5f49fe."""
    dvc_yaml, error = _load_dvc_yaml()
    assert error is None, f"dvc.yaml is not valid YAML: {error}"
    stages = dvc_yaml["stages"]
    assert tuple(stages) == STAGES
    for name, stage in stages.items():
        cmd = " ".join(stage["cmd"].split())
        assert cmd.startswith(f"python -m stages.{name} --params params.yaml"), cmd
        deps = declared_paths(stage.get("deps"))
        outs = declared_paths(stage.get("outs")) | declared_paths(stage.get("metrics"))
        assert f"stages/{name}.py" in deps and "stages/lib/params.py" in deps, name
        assert not deps & outs, name
        for option, path in re.findall(r"(--[a-z-]+) (\S+)", cmd):
            if option != "--params":
                assert path in deps | outs, f"stage {name}: {option} {path} is not declared"
    assert stages["prepare"]["params"] == ["data"]
    assert sorted(stages["train"]["params"]) == ["model", "train"]
    assert "reports/metrics.json" in declared_paths(dvc_yaml["metrics"])
    assert {"reports/metrics.json"} == declared_paths(stages["evaluate"]["metrics"])


def _module_file(name: str) -> Path | None:
    """The file of module `name` ("stages.lib.model") under the repo, or None if it is not one."""
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _stages_modules_used(path: Path) -> set[str]:
    """Names of the `stages` modules that `path` imports (anywhere, function-level imports included) or runs by
    name (a string such as "stages.score_saved_model", as in `python -m stages.score_saved_model`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            used.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            used.add(node.module)
            used.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from stages.lib import a, b`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            used.update(re.findall(r"\bstages(?:\.\w+)+", node.value))
    return {name for name in used if name.split(".")[0] == "stages" and _module_file(name)}


def _stage_code(entry_point: str) -> set[str]:
    """Repo-relative paths of `entry_point` ("stages.train") and every `stages` module it uses, transitively.
    A package's __init__.py counts only when it holds more than a docstring."""
    seen, todo = set(), [entry_point]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        rel = path.relative_to(REPO).as_posix()
        if rel in seen:
            continue
        body = ast.parse(path.read_text()).body
        if path.name != "__init__.py" or not (len(body) == 1 and isinstance(body[0], ast.Expr)):
            seen.add(rel)
        todo.extend(_stages_modules_used(path))
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)  # importing stages.lib.x runs stages/lib/__init__.py first
    return seen


def test_each_stage_declares_the_code_it_runs():
    """Fast, no TensorFlow: a stage's `deps` list exactly the `stages/` files its command runs (its module and
    every `stages` module that imports, transitively, read with ast), so editing any of them reruns the stage
    and nothing else does."""
    dvc_yaml, error = _load_dvc_yaml()
    assert error is None, f"dvc.yaml is not valid YAML: {error}"
    problems = []
    for name, stage in dvc_yaml["stages"].items():
        entry_point = re.match(r"python -m (stages\.\w+)", " ".join(stage["cmd"].split())).group(1)
        used = _stage_code(entry_point)
        declared = {path for path in declared_paths(stage.get("deps")) if path.startswith("stages/")}
        if used - declared:
            problems.append(f"stage {name}: its code uses {', '.join(sorted(used - declared))}, not in its deps")
        if declared - used:
            problems.append(f"stage {name}: deps list {', '.join(sorted(declared - used))}, which its code never uses")
    assert not problems, "dvc.yaml is out of step with the code:\n" + "\n".join(problems)


def test_every_library_module_has_its_test_file_and_tests_share_helpers_only_through_conftest():
    """Fast: tests/test_<module>.py for each stages/lib module; no test module imports another; no helper
    (top-level function or class) is defined in two files of tests/."""
    tests = REPO / "tests"
    modules = sorted(p.stem for p in (REPO / "stages" / "lib").glob("*.py") if p.stem != "__init__")
    missing = [f"tests/test_{m}.py" for m in modules if not (tests / f"test_{m}.py").is_file()]
    assert not missing, f"library modules without their test file: {missing}"
    defined, imports = {}, []
    for path in sorted(tests.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            imports += [f"{path.name} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("test_"):
                defined.setdefault(node.name, []).append(path.name)
    assert not imports, imports
    twice = {name: files for name, files in defined.items() if len(files) > 1}
    assert not twice, f"helpers defined in more than one file (put them in conftest.py): {twice}"


def test_prepare_accepts_non_mnist_only_with_verify_false(tmp_path, capsys, tf):
    from stages import prepare

    raw = write_idx(tmp_path / "raw", make_mnist(200, 50), compress=True)
    common = dict(source="idx", idx_dir=str(raw), val_size=50, shard_size=64)
    out = tmp_path / "prepared"
    with pytest.raises(cli.UserError, match=r"data\.verify: false"):
        prepare.main(prepare_argv(data_params_file(tmp_path / "strict.yaml", **common), out)[3:])
    assert not out.exists()

    prepare.main(prepare_argv(data_params_file(tmp_path / "loose.yaml", verify=False, **common), out)[3:])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["verified_mnist"] is False and meta["source"] == "idx"
    assert {name: entry["count"] for name, entry in meta["splits"].items()} == {"train": 150, "val": 50, "test": 50}
    assert "not verified" in capsys.readouterr().out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A fresh repo with small IDX data, after one `dvc repro`; yields (repo, data, first repro output)."""
    repo = tmp_path_factory.mktemp("e2e") / "repo"
    data = make_mnist(N_TRAIN, N_TEST, seed=11)
    tiny_repo(
        repo,
        data,
        "copy of mnist-mlp for the end-to-end test",
        data=dict(val_size=VAL_SIZE, shard_size=SHARD_SIZE),
        model=dict(hidden_units=[64]),
        train=dict(epochs=2, batch_size=64),
    )

    first = run(["dvc", "repro"], repo)
    return repo, data, first.stdout + first.stderr


@pytest.mark.slow
def test_stages_ran(pipeline):
    _, _, output = pipeline
    for stage in ("prepare", "train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in output, output


@pytest.mark.slow
def test_prepared_data(pipeline):
    repo, data, _ = pipeline
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    counts = {name: entry["count"] for name, entry in meta["splits"].items()}
    assert counts == {"train": N_TRAIN - VAL_SIZE, "val": VAL_SIZE, "test": N_TEST}
    assert meta["source"] == "idx" and meta["verified_mnist"] is False
    assert [len(meta["splits"][s]["shards"]) for s in ("train", "val", "test")] == [2, 1, 1]
    total = np.add(meta["splits"]["train"]["class_counts"], meta["splits"]["val"]["class_counts"])
    assert total.tolist() == np.bincount(data.train_labels, minlength=10).tolist()
    assert meta["splits"]["test"]["class_counts"] == np.bincount(data.test_labels, minlength=10).tolist()
    for entry in meta["splits"].values():
        for shard in entry["shards"]:
            assert (repo / "data/prepared" / shard["file"]).stat().st_size == shard["bytes"]


@pytest.mark.slow
def test_checkpoint(pipeline):
    repo, _, _ = pipeline
    checkpoint = repo / "artifacts/checkpoint"
    assert checkpoint.is_dir()
    assert json.loads((checkpoint / "model.json").read_text())["hidden_units"] == [64]
    assert any(p.name.startswith("ckpt") for p in checkpoint.iterdir())
    assert (repo / "reports/train/metrics.json").is_file()


@pytest.mark.slow
def test_metrics_contract(pipeline):
    repo, _, _ = pipeline
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert {split: list(values) for split, values in metrics.items()} == {
        "test": ["accuracy", "loss", "macro_f1", "errors"],
        "val": ["accuracy", "errors"],  # validation's loss is in reports/train; fewer keys keep views narrow
    }
    for split, values in metrics.items():
        for name, value in values.items():
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (split, name)
        assert 0.0 <= values["accuracy"] <= 1.0 and isinstance(values["errors"], int)
    assert 0.0 <= metrics["test"]["macro_f1"] <= 1.0 and metrics["test"]["loss"] >= 0
    assert metrics["test"]["errors"] == round((1 - metrics["test"]["accuracy"]) * N_TEST)
    assert metrics["val"]["errors"] == round((1 - metrics["val"]["accuracy"]) * VAL_SIZE)
    assert metrics["test"]["accuracy"] >= 0.9  # the synthetic classes are easy


@pytest.mark.slow
def test_predictions_csv(pipeline):
    repo, data, _ = pipeline
    with open(repo / "reports/predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["actual", "predicted"]
    assert len(rows) == N_TEST + 1
    actual = sorted(int(r[0]) for r in rows[1:])
    assert actual == sorted(data.test_labels.tolist())
    assert all(0 <= int(r[1]) <= 9 for r in rows[1:])
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert sum(r[0] != r[1] for r in rows[1:]) == metrics["test"]["errors"]


@pytest.mark.slow
def test_confusion_matrix_png(pipeline):
    repo, _, _ = pipeline
    assert (repo / "reports/confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_export_report_and_saved_model(pipeline, tf):
    repo, data, _ = pipeline
    report = json.loads((repo / "reports/export.json").read_text())
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert "reproduces_evaluate" not in report  # export fails unless it does: a constant said nothing
    assert report["test_accuracy_saved_model"] == report["test_accuracy_evaluate"] == metrics["test"]["accuracy"]
    assert report["test_accuracy_tflite"] == metrics["test"]["accuracy"]
    assert 0 < report["unsure_below"] < 1 and report["val_correct_flagged"] <= 0.03
    folder = repo / "artifacts/saved_model"
    assert json.loads((folder / "predict.json").read_text())["unsure_below"] == report["unsure_below"]
    assert report["bytes"] == sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())

    serve = tf.saved_model.load(str(repo / "artifacts/saved_model")).signatures["serving_default"]
    out = serve(images=tf.constant(data.test_images))
    assert out["probabilities"].dtype == tf.float32 and out["probabilities"].shape == (N_TEST, 10)
    assert out["class_ids"].dtype == tf.int64 and out["class_ids"].shape == (N_TEST,)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(out["class_ids"].numpy() == data.test_labels))
    assert round(accuracy, 6) == metrics["test"]["accuracy"]


@pytest.mark.slow
def test_second_repro_does_nothing_and_metrics_show(pipeline):
    repo, _, _ = pipeline
    second = run(["dvc", "repro"], repo)
    output = second.stdout + second.stderr
    assert "Running stage" not in output, output
    assert "up to date" in output or "didn't change" in output, output

    shown = run(["dvc", "metrics", "show"], repo).stdout
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert "reports/metrics.json" in shown
    assert re.search(rf"(?<![\d.]){re.escape(str(metrics['test']['accuracy']))}(?!\d)", shown), shown


@pytest.mark.slow
def test_prepare_again_is_byte_identical(pipeline):
    """Forcing prepare to run again gives the same bytes, so nothing downstream is out of date."""
    repo, _, _ = pipeline
    before = (repo / "dvc.lock").read_text()
    run(["dvc", "repro", "--force", "--single-item", "prepare"], repo)
    assert (repo / "dvc.lock").read_text() == before
    status = run(["dvc", "status"], repo).stdout
    assert "up to date" in status, status


@pytest.mark.slow
def test_new_raw_data_makes_prepare_stale(pipeline):
    """data/raw (data.idx_dir) is a dependency of prepare: replacing an IDX file reruns the pipeline."""
    repo, data, _ = pipeline
    path = repo / "data/raw/t10k-labels-idx1-ubyte.gz"
    original = path.read_bytes()
    labels = (data.test_labels + 1) % 10  # same size, other labels
    try:
        path.write_bytes(gzip.compress(idx_bytes(labels, images=False)))
        status = run(["dvc", "status"], repo).stdout
        assert "prepare" in status and "data/raw" in status, status
    finally:
        path.write_bytes(original)
    assert "up to date" in run(["dvc", "status"], repo).stdout


@pytest.mark.slow
def test_prepare_is_byte_identical_for_every_source(full_mnist_idx, tmp_path):
    """`python -m stages.prepare` with data.source bundled, and idx (plain, .gz, shuffled order):
    every shard has the same sha256, and meta.json is the same apart from `source`."""
    _, folders = full_mnist_idx
    runs = {"bundled": data_params_file(tmp_path / "bundled.yaml", source="bundled")}
    runs.update(
        {name: data_params_file(tmp_path / f"{name}.yaml", source="idx", idx_dir=str(f)) for name, f in folders.items()}
    )
    metas, shards = {}, {}
    for name, params in runs.items():
        out = tmp_path / f"out-{name}"
        result = run(prepare_argv(params, out), REPO, check=False)
        assert result.returncode == 0, result.stderr
        metas[name] = json.loads((out / "meta.json").read_text())
        shards[name] = {p.name: sha256(p) for p in sorted(out.glob("*.tfrecord*"))}
        assert shards[name] == {s["file"]: s["sha256"] for e in metas[name]["splits"].values() for s in e["shards"]}
        assert metas[name]["fingerprint"] == mnist_facts.MNIST_FINGERPRINT
    assert len(shards["bundled"]) == 7
    for name in folders:
        if shards[name] != shards["bundled"]:
            pytest.fail(_explain_shard_difference(tmp_path / "out-bundled", tmp_path / f"out-{name}", name))
        assert {**metas[name], "source": None} == {**metas["bundled"], "source": None}


def _explain_shard_difference(a: Path, b: Path, name: str) -> str:
    """Tell apart different examples (a data-source bug) from the same examples encoded differently."""
    from stages.lib import records

    same_examples = all(
        all(np.array_equal(x, y) for x, y in zip(records.read_split(a, s), records.read_split(b, s)))
        for s in ("train", "val", "test")
    )
    if same_examples:
        return (
            f"bundled and {name}: the same examples in the same order, but the shard bytes differ: "
            "records.serialize() is not deterministic (protobuf map order of the Example's features varies "
            "between processes); it should call SerializeToString(deterministic=True)"
        )
    return f"bundled and {name}: the prepared examples differ"


@pytest.mark.slow
def test_forced_repro_gives_the_same_export_bytes_and_a_clean_clone(pipeline):
    """Two `dvc repro --force` in a row: the same SavedModel bytes (fingerprint.pb included) and model.tflite,
    dvc.lock unchanged, `git status --porcelain` empty once dvc.lock is committed."""
    repo, _, _ = pipeline
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "after the first repro")
    first = tree_bytes(repo, "artifacts/saved_model")
    assert {f"artifacts/saved_model/{name}" for name in ("fingerprint.pb", "model.tflite", "predict.json")} <= set(
        first
    )
    for _ in range(2):
        run(["dvc", "repro", "--force"], repo)
        assert tree_bytes(repo, "artifacts/saved_model") == first
        assert git(repo, "status", "--porcelain").stdout == ""
