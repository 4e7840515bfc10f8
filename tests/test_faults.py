"""Reliability (issue #5): bad params, missing or damaged inputs, divergence, SIGKILL, determinism.

Whatever goes wrong, a stage ends with ONE `error: ...` line on stderr (never a traceback), a
non-zero exit code (2 for params), and nothing written or changed among its outputs.

Fast (default):
  1. bad params files, each run through the four stages as real subprocesses (they fail before
     TensorFlow is imported; a stand-in `tensorflow` package that refuses to import proves it);
  2. missing or damaged inputs of every stage, run in-process through `cli.run` (what
     `python -m stages.<name>` runs), with fd-level capture so TensorFlow's own stderr counts too,
     and a truncated IDX file as a real `python -m stages.prepare`;
  4a. atomic.output_path killed (SIGKILL) at every step of writing and renaming.
Slow (`python -m pytest -m slow tests/test_faults.py`):
  2b. a few damaged inputs again as real `python -m stages.<name>` subprocesses;
  3. a diverging `python -m stages.train`;
  4b. prepare, train and export killed with SIGKILL at fixed times and while writing;
  5. `dvc repro` then `dvc repro --force` in a copy of the repo: identical hashes;
  6. prepare with data.source tfds and no network: a quick one-line error.
Serving's refusal of wrong dtypes and shapes is tested in test_serving.py.
"""

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    DELETE,
    PLAIN_TRAIN,
    REPO,
    base_params,
    data_params_file,
    declared_paths,
    idx_files,
    leftovers,
    lock_outs,
    make_mnist,
    names_key,
    prepare_argv,
    run,
    sha256,
    tiny_repo,
    tree_bytes,
    with_overrides,
    write_idx,
    write_idx_files,
)

N_TRAIN, N_TEST, VAL_SIZE, SHARD_SIZE = 600, 200, 100, 200
STAGES = ("prepare", "train", "evaluate", "export")
STAGE_TIMEOUT = 600  # seconds; a TensorFlow stage takes ~15 s here when the machine is busy
OLD_MTIME_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09: any rewrite of a file shows in its mtime


# --- the stages' command lines, read from dvc.yaml (one source of truth) ---------------------------

_DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())


def _stage_options(stage: str) -> list[tuple[str, str]]:
    """(option, path) pairs of the stage's command in dvc.yaml, --params included."""
    cmd = " ".join(_DVC_YAML["stages"][stage]["cmd"].split())
    return re.findall(r"(--[a-z][a-z-]*) (\S+)", cmd)


def _stage_outputs(stage: str) -> list[str]:
    """The stage's output paths (outs and metrics in dvc.yaml), in command-line order."""
    stage_yaml = _DVC_YAML["stages"][stage]
    declared = declared_paths(stage_yaml.get("outs")) | declared_paths(stage_yaml.get("metrics"))
    return [path for option, path in _stage_options(stage) if path in declared]


PREPARED = dict(_stage_options("train"))["--data"]  # data/prepared
CHECKPOINT = dict(_stage_options("train"))["--checkpoint"]  # artifacts/checkpoint
METRICS = dict(_stage_options("evaluate"))["--metrics"]  # reports/metrics.json
SAVED_MODEL = dict(_stage_options("export"))["--out"]  # artifacts/saved_model
EXPORT_REPORT = dict(_stage_options("export"))["--report"]  # reports/export.json


def _stage_argv(stage: str, root: Path, params_path: Path) -> list[str]:
    """The stage's dvc.yaml arguments with every path moved under `root`; serving takes two positionals."""
    if stage == "score_saved_model":
        return [str(root / SAVED_MODEL), str(root / PREPARED)]
    argv = []
    for option, value in _stage_options(stage):
        argv += [option, str(params_path) if option == "--params" else str(root / value)]
    return argv


# --- files ----------------------------------------------------------------------------------------


def _snapshot(root: Path, folder_mtimes: bool = True) -> dict:
    """Every entry under root: files by (sha256, mtime), folders by presence (and mtime if asked)."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir() and not path.is_symlink():
            state[key] = ("folder", path.stat().st_mtime_ns if folder_mtimes else None)
        else:
            state[key] = (sha256(path), path.lstat().st_mtime_ns)
    return state


def _changes(before: dict, after: dict) -> list[str]:
    return (
        [f"removed {k}" for k in before.keys() - after.keys()]
        + [f"added {k}" for k in after.keys() - before.keys()]
        + [f"changed {k}" for k in before.keys() & after.keys() if before[k] != after[k]]
    )


def _age(root: Path) -> None:
    """Give every file under root an old mtime, so a rewrite with identical bytes still shows."""
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))


def _fake_previous(path: Path) -> None:
    """A stand-in previous output: a file if the name has a suffix, else a folder holding one."""
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"previous {path.name}\n".encode())
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / "previous.bin").write_bytes(b"previous\x00\xff")


def _output_state(path: Path):
    """None if absent; else the bytes of a file, or of every file in a folder, as sha256s.

    A SavedModel's fingerprint.pb holds a random UUID per save by design: only its presence counts.
    export.json's "bytes" is compared as present only, so a kill test need not know the final size."""
    if not os.path.lexists(path):
        return None
    if path.name == Path(EXPORT_REPORT).name and path.is_file():
        try:
            report = json.loads(path.read_text())
            if isinstance(report.get("bytes"), int):
                return json.dumps({**report, "bytes": "present"}, sort_keys=True)
        except (ValueError, AttributeError):
            pass  # not a complete report: compared by its bytes below, it matches no complete version
    if path.is_dir():
        return tuple(
            (str(p.relative_to(path)), "present" if p.name == "fingerprint.pb" else sha256(p))
            for p in sorted(path.rglob("*"))
            if p.is_file()
        )
    return sha256(path)


# --- params, and running the stages ----------------------------------------------------------------


def _tiny_params(idx_dir: Path, **overrides) -> dict:
    """params.yaml for tiny synthetic IDX data, a 784-16-10 MLP, one epoch of batch 32, no XLA."""
    raw = with_overrides(base_params(), {k.replace("__", "."): v for k, v in PLAIN_TRAIN.items()})
    return with_overrides(
        raw,
        {
            "data.source": "idx",
            "data.idx_dir": str(idx_dir),
            "data.verify": False,
            "data.val_size": VAL_SIZE,
            "data.seed": 0,
            "data.shard_size": SHARD_SIZE,
            "data.compression": "none",
            "model.hidden_units": [16],
            "train.epochs": 1,
            "train.batch_size": 32,
            "train.jit_compile": False,
            **overrides,
        },
    )


def _write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _env(*extra_path) -> dict:
    env = {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join([*map(str, extra_path), str(REPO)]),
    }
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it: the stages quieten TensorFlow themselves
    return env


def _run_stage(stage: str, argv: list[str], cwd: Path, timeout: float = STAGE_TIMEOUT):
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _run_in_process(stage: str, argv: list[str], capfd) -> tuple[int, str, str]:
    """`python -m stages.<stage>` minus the interpreter start: cli.run(main). Any exception other than
    the SystemExit that cli.run turns a UserError into propagates, i.e. it would have been a traceback."""
    from stages.lib import cli

    module = importlib.import_module(f"stages.{stage}")
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.run(module.main, argv)
    out, err = capfd.readouterr()
    return exited.value.code, out, err


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def _disable_op_determinism() -> None:
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()


# --- the tiny repo every input test starts from ---------------------------------------------------


@pytest.fixture(scope="module")
def mini_repo(tmp_path_factory, tf):
    """A folder laid out like the repo, with every stage's outputs from tiny data: prepare, train and
    evaluate run in-process through their main(); the SavedModel is a different (untrained) model,
    saved as export saves it, so a previous export is distinguishable from a new one."""
    from stages import evaluate, prepare, train
    from stages.lib.model import MLP
    from stages.lib.serving import ServingModule

    root = tmp_path_factory.mktemp("faults") / "repo"
    write_idx(root / "data" / "raw", make_mnist(N_TRAIN, N_TEST, seed=7))
    params_path = _write_params(root / "params.yaml", _tiny_params(root / "data" / "raw"))
    cwd = os.getcwd()
    os.chdir(root)  # DVCLive looks for a DVC repo from the working directory; keep it off this one
    try:
        for stage, module in (("prepare", prepare), ("train", train), ("evaluate", evaluate)):
            module.main(_stage_argv(stage, root, params_path))
    finally:
        os.chdir(cwd)
        _disable_op_determinism()  # train.main turned it on for this process
    module = ServingModule(MLP([16], seed=1))
    tf.saved_model.save(module, str(root / SAVED_MODEL), signatures={"serving_default": module.serve})
    _fake_previous(root / EXPORT_REPORT)
    for stage in STAGES:  # any output dvc.yaml gains later gets a stand-in previous version
        for path in _stage_outputs(stage):
            if not (root / path).exists():
                _fake_previous(root / path)
    return root


@pytest.fixture
def repo(mini_repo, tmp_path) -> Path:
    """A private copy of the mini repo, with old mtimes."""
    copy = tmp_path / "repo"
    shutil.copytree(mini_repo, copy, symlinks=True)
    _age(copy)
    return copy


# === 1. bad params: four stages, as subprocesses ===================================================

# (id, overrides or raw text (None: no file at all), full key the line must name or None, fragment)
BAD_PARAMS = [
    ("typo-key", {"train.learnig_rate": 0.01}, "train.learnig_rate", "did you mean train.learning_rate?"),
    ("typo-section", {"modle": {"hidden_units": [8]}}, "modle", "did you mean model?"),
    ("unknown-key", {"model.activation": "tanh"}, "model.activation", "unknown key"),
    ("missing-key", {"train.seed": DELETE}, "train.seed", "missing key"),
    ("seed-float", {"train.seed": 0.5}, "train.seed", "integer"),
    ("missing-section", {"data": DELETE}, "data", "missing key"),
    ("val-size-negative", {"data.val_size": -5}, "data.val_size", "greater than or equal to 1"),
    ("compression-lzma", {"data.compression": "lzma"}, "data.compression", "'none' or 'gzip'"),
    ("source-url", {"data.source": "http://yann.lecun.com"}, "data.source", "'bundled'"),
    ("hidden-zero", {"model.hidden_units": [64, 0]}, "model.hidden_units.1", "greater than or equal to 1"),
    ("hidden-scalar", {"model.hidden_units": 800}, "model.hidden_units", "list"),
    ("epochs-word", {"train.epochs": "ten"}, "train.epochs", "integer"),
    ("lr-zero", {"train.learning_rate": 0}, "train.learning_rate", "greater than 0"),
    ("lr-too-large", {"train.learning_rate": 1e7}, "train.learning_rate", "less than or equal"),
    ("optimizer-rmsprop", {"train.optimizer": "rmsprop"}, "train.optimizer", "'adam' or 'sgd'"),
    ("jit-as-int", {"train.jit_compile": 1}, "train.jit_compile", "boolean"),
    ("warmup-too-long", {"train.epochs": 3, "train.warmup_epochs": 3}, "train.warmup_epochs", "train.epochs"),
    (
        "nesterov-with-adam",
        {"train.optimizer": "adam", "train.momentum": 0.0, "train.nesterov": True},
        "train.nesterov",
        "sgd",
    ),
    (
        "batch-larger-than-split",
        {"data.val_size": 59_000, "train.batch_size": 1001},
        "train.batch_size",
        "data.val_size",
    ),
    ("not-yaml", "train: [unclosed\n", None, "not valid YAML"),
    ("no-file", None, None, "cannot read params file"),
]

_NO_TENSORFLOW = "raise ImportError('tensorflow imported before the params were validated')\n"


@pytest.mark.parametrize(
    "content, key, fragment", [case[1:] for case in BAD_PARAMS], ids=[case[0] for case in BAD_PARAMS]
)
def test_bad_params_exit_2_with_one_line_and_touch_nothing(tmp_path, content, key, fragment):
    root = tmp_path / "repo"
    for stage in STAGES:  # previous versions of every path any stage names: inputs and outputs
        for option, value in _stage_options(stage):
            if option != "--params" and not (root / value).exists():
                _fake_previous(root / value)
    params_path = tmp_path / "bad-params.yaml"
    if isinstance(content, dict):
        params_path.write_text(yaml.safe_dump(with_overrides(base_params(), content), sort_keys=False))
    elif content is not None:
        params_path.write_text(content)
    blocker = tmp_path / "no-tensorflow" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(_NO_TENSORFLOW)
    _age(tmp_path)
    before = _snapshot(tmp_path)

    env = _env(blocker.parent)
    running = {
        stage: subprocess.Popen(
            [sys.executable, "-m", f"stages.{stage}", *_stage_argv(stage, root, params_path)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for stage in STAGES
    }
    for stage, proc in running.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, f"{stage} exited {proc.returncode}\n{out}\n{err}"
        line = _one_error_line(err)
        assert line.startswith(f"error: {params_path}: "), f"{stage}: {line}"
        assert fragment in line, f"{stage}: {line}"
        if key:
            assert names_key(line, key), f"{stage}: {line}"
        assert out == "", f"{stage} printed {out!r}"
    assert _changes(before, _snapshot(tmp_path)) == []


# === 2. missing or damaged inputs ====================================================================


def _shards(root: Path, split: str) -> list[Path]:
    meta = json.loads((root / PREPARED / "meta.json").read_text())
    return [root / PREPARED / shard["file"] for shard in meta["splits"][split]["shards"]]


def _edit_meta(root: Path, edit) -> Path:
    path = root / PREPARED / "meta.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return path


def _flip_byte(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _truncate(path: Path, size: int | None = None) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if size is None else size])
    return path


def _garbage(path: Path) -> Path:
    """Same size (at least 64 bytes), fixed junk: not what any reader expects."""
    size = max(path.stat().st_size, 64)
    path.write_bytes((b"\x00\xffgarbage\x13\x37" * (size // 12 + 1))[:size])
    return path


def _remove(path: Path) -> Path:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return path


def _ckpt_data(root: Path) -> Path:
    (path,) = (root / CHECKPOINT).glob("ckpt.data-*")
    return path


def _split_malformed(split):
    def edit(meta):
        meta["splits"][split]["shards"] = [{"name": "shard-0.tfrecord"}]

    return edit


# Each damage: (root, split the stage reads) -> (the path the line must start with, stage whose rerun fixes it)
DATA_DAMAGE = {
    "prepared-missing": lambda root, split: (_remove(root / PREPARED), "prepare"),
    "meta-missing": lambda root, split: (_remove(root / PREPARED / "meta.json"), "prepare"),
    "meta-not-json": lambda root, split: (_truncate(root / PREPARED / "meta.json", 40), "prepare"),
    "meta-other-schema": lambda root, split: (_edit_meta(root, lambda m: m.update(schema_version=99)), "prepare"),
    "meta-shards-malformed": lambda root, split: (_edit_meta(root, _split_malformed(split)), "prepare"),
    "meta-compression-unknown": lambda root, split: (
        _edit_meta(root, lambda m: m.update(compression="zstd")),
        "prepare",
    ),
    "shard-flipped-byte": lambda root, split: (_flip_byte(_shards(root, split)[-1]), "prepare"),
    "shard-truncated": lambda root, split: (_truncate(_shards(root, split)[-1]), "prepare"),
    "shard-empty": lambda root, split: (_truncate(_shards(root, split)[-1], 0), "prepare"),
    "shard-missing": lambda root, split: (_remove(_shards(root, split)[-1]), "prepare"),
}
CHECKPOINT_DAMAGE = {
    "checkpoint-missing": lambda root, split: (_remove(root / CHECKPOINT), "train"),
    "index-missing": lambda root, split: (_remove(root / CHECKPOINT / "ckpt.index").parent, "train"),
    "index-truncated": lambda root, split: (_truncate(root / CHECKPOINT / "ckpt.index").parent, "train"),
    "index-garbage": lambda root, split: (_garbage(root / CHECKPOINT / "ckpt.index").parent, "train"),
    "data-missing": lambda root, split: (_remove(_ckpt_data(root)).parent, "train"),
    "data-truncated": lambda root, split: (_truncate(_ckpt_data(root)).parent, "train"),
    "data-garbage": lambda root, split: (_garbage(_ckpt_data(root)).parent, "train"),
    "data-flipped-byte": lambda root, split: (_flip_byte(_ckpt_data(root)).parent, "train"),
    "model-json-missing": lambda root, split: (_remove(root / CHECKPOINT / "model.json"), "train"),
    "model-json-garbage": lambda root, split: (_garbage(root / CHECKPOINT / "model.json"), "train"),
    "model-json-not-object": lambda root, split: (_write(root / CHECKPOINT / "model.json", "[16]\n"), "train"),
    "model-json-negative": lambda root, split: (
        _write(root / CHECKPOINT / "model.json", '{"hidden_units": [-3]}'),
        "train",
    ),
    "model-json-deskew-not-bool": lambda root, split: (
        _write(root / CHECKPOINT / "model.json", '{"hidden_units": [16], "deskew": "yes"}'),
        "train",
    ),
    "model-json-other-width": lambda root, split: (  # valid, but not the checkpoint's shapes: the folder is named
        _write(root / CHECKPOINT / "model.json", '{"hidden_units": [32]}').parent,
        "train",
    ),
}
METRICS_DAMAGE = {
    "metrics-missing": lambda root, split: (_remove(root / METRICS), "evaluate"),
    "metrics-not-json": lambda root, split: (_truncate(root / METRICS, 10), "evaluate"),
    "metrics-no-test-accuracy": lambda root, split: (_write(root / METRICS, '{"val": {"accuracy": 0.5}}'), "evaluate"),
}
SAVED_MODEL_DAMAGE = {
    "saved-model-missing": lambda root, split: (_remove(root / SAVED_MODEL), "export"),
    "saved-model-empty": lambda root, split: (_empty_folder(root / SAVED_MODEL), "export"),
    "saved-model-pb-garbage": lambda root, split: (_garbage(root / SAVED_MODEL / "saved_model.pb").parent, "export"),
    "saved-model-pb-truncated": lambda root, split: (_truncate(root / SAVED_MODEL / "saved_model.pb").parent, "export"),
    "variables-missing": lambda root, split: (_remove(root / SAVED_MODEL / "variables").parent, "export"),
    "variables-index-garbage": lambda root, split: (
        _garbage(root / SAVED_MODEL / "variables/variables.index").parents[1],
        "export",
    ),
    "variables-data-garbage": lambda root, split: (
        _garbage(next((root / SAVED_MODEL / "variables").glob("variables.data-*"))).parents[1],
        "export",
    ),
    "variables-data-truncated": lambda root, split: (
        _truncate(next((root / SAVED_MODEL / "variables").glob("variables.data-*"))).parents[1],
        "export",
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _empty_folder(path: Path) -> Path:
    shutil.rmtree(path)
    path.mkdir()
    return path


# The split each stage reads last (a damaged shard must be found even after good ones were read).
SPLIT_READ = {"train": "train", "evaluate": "test", "export": "test", "score_saved_model": "test"}
STAGE_INPUTS = {
    "train": [DATA_DAMAGE],
    "evaluate": [DATA_DAMAGE, CHECKPOINT_DAMAGE],
    "export": [DATA_DAMAGE, CHECKPOINT_DAMAGE, METRICS_DAMAGE],
    "score_saved_model": [DATA_DAMAGE, SAVED_MODEL_DAMAGE],
}
INPUT_CASES = [
    pytest.param(
        stage,
        name,
        id=f"{stage}-{name}",
    )
    for stage, tables in STAGE_INPUTS.items()
    for table in tables
    for name in table
]
_ALL_DAMAGE = {**DATA_DAMAGE, **CHECKPOINT_DAMAGE, **METRICS_DAMAGE, **SAVED_MODEL_DAMAGE}


def _check_input_error(line: str, named: Path, fix_stage: str) -> None:
    assert line.startswith(f"error: {named}"), f"the line should start with the path {named}: {line}"
    assert f"dvc repro {fix_stage}" in line, line
    assert "{{function_node" not in line, f"TensorFlow internals in the message: {line}"


@pytest.mark.usefixtures("deterministic_ops")  # train.main turns op determinism on; switch it off after
@pytest.mark.parametrize("stage, damage", INPUT_CASES)
def test_damaged_input_gives_one_line_and_touches_nothing(repo, capfd, stage, damage):
    named, fix_stage = _ALL_DAMAGE[damage](repo, SPLIT_READ[stage])
    before = _snapshot(repo)
    code, out, err = _run_in_process(stage, _stage_argv(stage, repo, repo / "params.yaml"), capfd)
    assert code == 1, err
    _check_input_error(_one_error_line(err), named, fix_stage)
    assert _changes(before, _snapshot(repo)) == []


def test_export_without_metrics_fails_before_tensorflow(repo):
    """A real subprocess: export reads evaluate's metrics before the slow TensorFlow import."""
    named, fix = METRICS_DAMAGE["metrics-missing"](repo, "test")
    before = _snapshot(repo)
    done = _run_stage("export", _stage_argv("export", repo, repo / "params.yaml"), repo, timeout=120)
    assert done.returncode == 1, done.stderr
    _check_input_error(_one_error_line(done.stderr), named, fix)
    assert _changes(before, _snapshot(repo)) == []


def test_prepare_without_idx_files_names_the_folder(tmp_path):
    """prepare's input is data.idx_dir: a missing IDX file is named with where to put it (no TensorFlow needed)."""
    root = tmp_path / "repo"
    for path in _stage_outputs("prepare"):
        _fake_previous(root / path)
    (root / "data" / "raw").mkdir(parents=True)
    params_path = _write_params(root / "params.yaml", _tiny_params(root / "data" / "raw"))
    _age(root)
    before = _snapshot(root)
    done = _run_stage("prepare", _stage_argv("prepare", root, params_path), root, timeout=120)
    assert done.returncode == 1, done.stderr
    line = _one_error_line(done.stderr)
    assert str(root / "data" / "raw") in line and "data.idx_dir" in line, line
    assert _changes(before, _snapshot(root)) == []


def test_prepare_subprocess_with_truncated_idx_fails_cleanly(tmp_path):
    """The stage: exit code != 0, exactly one stderr line `error: <file>: ...`, no output folder."""
    data = make_mnist(60, 20)
    blobs = idx_files(data)
    blobs["train_images"] = blobs["train_images"][:-1000]
    raw = write_idx_files(tmp_path / "raw", blobs)
    out = tmp_path / "prepared"
    start = time.perf_counter()
    result = run(
        prepare_argv(data_params_file(tmp_path / "params.yaml", source="idx", idx_dir=str(raw)), out),
        REPO,
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"error: {raw / 'train-images-idx3-ubyte'}: expected {60 * 784} bytes of pixels, "
        f"found {60 * 784 - 1000} (truncated?)"
    )
    assert not out.exists() and not any(p.name.startswith((".tmp-", ".old-")) for p in tmp_path.iterdir())
    assert elapsed < 30, f"a bad input should fail before TensorFlow is imported ({elapsed:.1f} s)"


SUBPROCESS_INPUT_CASES = [
    ("train", "shard-flipped-byte"),
    ("evaluate", "data-truncated"),
    ("export", "prepared-missing"),
    ("score_saved_model", "saved-model-pb-garbage"),
]


@pytest.mark.slow
@pytest.mark.parametrize("stage, damage", SUBPROCESS_INPUT_CASES, ids=[f"{s}-{d}" for s, d in SUBPROCESS_INPUT_CASES])
def test_damaged_input_as_a_subprocess(repo, stage, damage):
    """The same, as a user runs it: TensorFlow's start-up noise must not add lines to the one error."""
    named, fix_stage = _ALL_DAMAGE[damage](repo, SPLIT_READ[stage])
    before = _snapshot(repo)
    done = _run_stage(stage, _stage_argv(stage, repo, repo / "params.yaml"), repo)
    assert done.returncode == 1, done.stderr
    _check_input_error(_one_error_line(done.stderr), named, fix_stage)
    assert _changes(before, _snapshot(repo)) == []


# === 3. divergence ===================================================================================


@pytest.mark.slow
@pytest.mark.parametrize(
    "hidden_units, previous",
    [([32, 32, 32], False), ([32], True)],
    ids=["deep-no-previous-checkpoint", "shallow-previous-checkpoint"],
)
def test_divergent_run_writes_no_checkpoint(repo, hidden_units, previous):
    """learning_rate 1e6: the loss explodes (to inf/nan, or finite but >= 1e3); one line, no checkpoint."""
    params_path = _write_params(
        repo / "diverge.yaml",
        _tiny_params(repo / "data" / "raw", **{"model.hidden_units": hidden_units, "train.learning_rate": 1e6}),
    )
    train_outputs = _stage_outputs("train")
    if not previous:
        for path in train_outputs:
            _remove(repo / path)
    _age(repo)
    before = _snapshot(repo, folder_mtimes=False)  # the temporary folder comes and goes beside the outputs

    done = _run_stage("train", _stage_argv("train", repo, params_path), repo)
    assert done.returncode == 1, done.stdout + done.stderr
    line = _one_error_line(done.stderr)
    assert "diverged" in line, line
    assert re.search(r"\bepoch 1\b", line) and re.search(r"\bstep \d+\b", line), line
    assert "train.learning_rate" in line, line
    assert _changes(before, _snapshot(repo, folder_mtimes=False)) == []
    if not previous:
        assert not (repo / CHECKPOINT).exists()
    assert leftovers(repo) == []


# === 4a. atomic.output_path killed at every step ======================================================

_KILLER = textwrap.dedent(
    """
    import os, shutil, signal, sys
    from pathlib import Path
    from stages.lib import atomic

    final, point = Path(sys.argv[1]), sys.argv[2]
    is_dir = not final.suffix

    def die(at):
        if point == at:
            os.kill(os.getpid(), signal.SIGKILL)

    renames, real_replace, real_rmtree = [], os.replace, shutil.rmtree

    def replace(src, dst):
        renames.append(dst)
        die(f"before-rename-{len(renames)}")
        real_replace(src, dst)
        die(f"after-rename-{len(renames)}")

    def rmtree(path, *args, **kwargs):
        if point == "removing-old" and Path(path).name.startswith(".old-"):
            next(p for p in Path(path).iterdir()).unlink()  # part of the old copy is gone
            die("removing-old")
        real_rmtree(path, *args, **kwargs)

    os.replace, shutil.rmtree = replace, rmtree
    with atomic.output_path(final, is_dir=is_dir) as tmp:
        if is_dir:
            for index in range(3):
                (tmp / f"part-{index}").write_text(f"new part {index}\\n" * 1000)
                die(f"writing-{index}")
        else:
            with open(tmp, "w") as f:
                f.write("new file\\n" * 1000)
                f.flush()
                die("writing-0")
                f.write("the end\\n")
    """
)


def _previous_version(final: Path) -> None:
    if final.suffix:
        final.write_text("previous file\n")
    else:
        final.mkdir()
        for name in ("part-0", "part-1", "only-in-previous"):
            (final / name).write_text(f"previous {name}\n")


# (kind, previous version exists, kill point, what the output must be right after the kill)
ATOMIC_POINTS = [
    ("folder", True, "writing-1", "previous"),
    ("folder", True, "before-rename-1", "previous"),
    ("folder", True, "after-rename-1", "absent"),  # between the two renames: no output, never a mixed one
    ("folder", True, "after-rename-2", "new"),
    ("folder", True, "removing-old", "new"),
    ("folder", False, "writing-1", "absent"),
    ("folder", False, "before-rename-1", "absent"),
    ("folder", False, "after-rename-1", "new"),
    ("file", True, "writing-0", "previous"),
    ("file", True, "before-rename-1", "previous"),
    ("file", True, "after-rename-1", "new"),
    ("file", False, "writing-0", "absent"),
    ("file", False, "before-rename-1", "absent"),
]


@pytest.mark.parametrize(
    "kind, previous, point, expected",
    ATOMIC_POINTS,
    ids=[f"{k}-{'previous' if p else 'first'}-{point}" for k, p, point, _ in ATOMIC_POINTS],
)
def test_atomic_output_killed_at_every_step(tmp_path, kind, previous, point, expected):
    final = tmp_path / "out" / ("result.json" if kind == "file" else "result")
    final.parent.mkdir()
    if previous:
        _previous_version(final)
    old = _output_state(final)

    def run(point_name):
        return subprocess.run(
            [sys.executable, "-c", _KILLER, str(final), point_name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )

    killed = run(point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    after_kill = _output_state(final)
    done = run("none")
    assert done.returncode == 0, done.stderr
    new = _output_state(final)
    assert new != old and new is not None
    assert after_kill == {"previous": old, "absent": None, "new": new}[expected]
    assert leftovers(tmp_path) == []


# === 4b. the stages killed with SIGKILL ================================================================


def _tmp_sibling(relative: str) -> str:
    path = Path(relative)
    return str(path.parent / f".tmp-{path.name}")


def _created_since(path: Path, mtime_ns: int) -> bool:
    try:
        return os.lstat(path).st_mtime_ns != mtime_ns
    except FileNotFoundError:
        return False


def _kill_at(stage: str, argv: list[str], root: Path, moment) -> str:
    """Start the stage, SIGKILL it at `moment` (seconds after start, or when a path under root appears,
    created by this run: an earlier killed run's leftovers are given an old mtime first)."""
    for path in root.rglob("*"):
        if any(part.startswith((".tmp-", ".old-")) for part in path.relative_to(root).parts):
            os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS), follow_symlinks=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", f"stages.{stage}", *argv],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    start = time.monotonic()
    try:
        if isinstance(moment, float):
            try:
                proc.wait(timeout=moment)
                return f"finished before {moment} s"
            except subprocess.TimeoutExpired:
                pass
        else:
            target = root / moment
            while not _created_since(target, OLD_MTIME_NS):
                if proc.poll() is not None:
                    return f"finished before {moment} appeared"
                assert time.monotonic() - start < STAGE_TIMEOUT, f"{moment} never appeared"
                time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"killed at {time.monotonic() - start:.2f} s ({moment})"
    finally:
        try:  # the stage's own children (export's fresh-process check), started in its session
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _kill_then_rerun(stage: str, root: Path, params_path: Path, moments: list) -> list[str]:
    """Kill the stage at each moment, noting every output's state; then run it to the end and check
    that each noted state was the output absent, its previous version or the final one, never partial."""
    outputs = _stage_outputs(stage)
    argv = _stage_argv(stage, root, params_path)
    previous = {path: _output_state(root / path) for path in outputs}
    seen, report = [], []
    for moment in moments:
        report.append(_kill_at(stage, argv, root, moment))
        seen.append((moment, {path: _output_state(root / path) for path in outputs}))

    done = _run_stage(stage, argv, root)
    assert done.returncode == 0, f"{stage} after the kills: {done.stdout}\n{done.stderr}"
    assert done.stderr.strip() == "", done.stderr
    assert leftovers(root) == [], "a rerun must remove what killed runs left behind"
    final = {path: _output_state(root / path) for path in outputs}
    for path in outputs:
        assert final[path] != previous[path], f"{path}: the test needs a previous version that differs"
        for moment, states in seen:
            state = states[path]
            assert state in (None, previous[path], final[path]), f"{path} partial after a kill at {moment}: {state}"

    def describe(state, path):
        return "absent" if state is None else "previous" if state == previous[path] else "new"

    for index, (_, states) in enumerate(seen):
        found = ", ".join(f"{Path(path).name} {describe(states[path], path)}" for path in outputs)
        report[index] += f" -> {found}"
    print(f"\n{stage}:\n  " + "\n  ".join(report))
    return report


@pytest.mark.slow
def test_prepare_killed_leaves_previous_or_nothing(repo):
    out = dict(_stage_options("prepare"))["--out"]
    samples = dict(_stage_options("prepare"))["--samples"]
    shard_size = 25  # many small shards: a longer time writing
    params_path = _write_params(
        repo / "seed1.yaml", _tiny_params(repo / "data" / "raw", **{"data.seed": 1, "data.shard_size": shard_size})
    )
    test_shards = -(-N_TEST // shard_size)
    first_test_shard = (
        f"{_tmp_sibling(out)}/test-00000-of-{test_shards:05d}.tfrecord"  # train and val written, meta.json not
    )
    moments = [0.5, 2.0, 4.0, _tmp_sibling(out), first_test_shard, _tmp_sibling(samples)]
    _kill_then_rerun("prepare", repo, params_path, moments)


@pytest.mark.slow
def test_train_killed_leaves_previous_or_nothing(repo):
    options = dict(_stage_options("train"))
    params_path = _write_params(repo / "seed1.yaml", _tiny_params(repo / "data" / "raw", **{"train.seed": 1}))
    moments = [
        0.5,
        2.0,
        4.0,
        _tmp_sibling(options["--live"]),
        _tmp_sibling(options["--checkpoint"]),
        _tmp_sibling(options["--curves"]),
    ]
    _kill_then_rerun("train", repo, params_path, moments)


@pytest.mark.slow
def test_export_killed_leaves_previous_or_nothing(repo):
    """The previous SavedModel is another model's (see mini_repo); export's check runs in a child process."""
    tmp = _tmp_sibling(SAVED_MODEL)
    moments = [0.5, 2.0, 4.0, tmp, f"{tmp}/variables", f"{tmp}/fingerprint.pb", _tmp_sibling(EXPORT_REPORT)]
    _kill_then_rerun("export", repo, repo / "params.yaml", moments)


# === 5. determinism: dvc repro, then dvc repro --force =================================================


@pytest.mark.slow
def test_repro_force_gives_identical_hashes(tmp_path):
    repo = tmp_path / "repo"
    tiny_repo(
        repo,
        make_mnist(N_TRAIN, N_TEST, seed=3),
        "copy of mnist-mlp for the determinism test",
        data=dict(val_size=VAL_SIZE, shard_size=SHARD_SIZE),
        model=dict(hidden_units=[16]),
        train=dict(epochs=2, batch_size=32),
    )

    run(["dvc", "repro"], repo)
    first_lock = lock_outs(repo)
    first_saved_model = tree_bytes(repo / SAVED_MODEL)
    first_report = json.loads((repo / EXPORT_REPORT).read_text())
    second = run(["dvc", "repro", "--force"], repo)
    output = second.stdout + second.stderr
    assert all(f"Running stage '{stage}'" in output for stage in STAGES), output
    second_lock = lock_outs(repo)
    second_saved_model = tree_bytes(repo / SAVED_MODEL)
    second_report = json.loads((repo / EXPORT_REPORT).read_text())

    for path in (PREPARED, CHECKPOINT, METRICS):
        assert first_lock[path] == second_lock[path], f"{path}: {first_lock[path]} then {second_lock[path]}"
    assert first_saved_model.keys() == second_saved_model.keys()
    differing = sorted(name for name in first_saved_model if first_saved_model[name] != second_saved_model[name])
    assert set(differing) <= {"fingerprint.pb"}, differing
    # fingerprint.pb holds a random UUID per save, by design; nothing else may change.
    assert first_report == second_report  # its size leaves fingerprint.pb out
    changed = sorted(path for path in first_lock if first_lock[path] != second_lock.get(path))
    assert set(changed) <= {SAVED_MODEL}, f"outputs that changed under --force: {changed}"
    print(
        f"\noutputs whose dvc.lock hash changed under --force: {changed}; files differing in {SAVED_MODEL}: {differing}"
    )


@pytest.mark.slow
def test_prepare_subprocess_tfds_offline_fails_fast(tmp_path):
    """The stage with data.source tfds, nothing prepared and no network: a quick one-line error."""
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # nothing listens
    out = tmp_path / "prepared"
    params = data_params_file(tmp_path / "params.yaml", source="tfds", tfds_data_dir=str(tmp_path / "tfds"))
    start = time.perf_counter()
    result = subprocess.run(prepare_argv(params, out), cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    elapsed = time.perf_counter() - start
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: data.source is tfds but the TFDS download server")
    assert "data.source: bundled" in result.stderr and "data.source: idx" in result.stderr
    assert not out.exists()
    assert elapsed < 60, elapsed  # TensorFlow + TFDS imports; not TFDS's ~3.5 minutes of retries
