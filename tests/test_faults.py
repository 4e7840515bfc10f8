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

import contextlib
import errno
import glob
import gzip
import importlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
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
    """A glob of the writer's temporary copy: `.tmp-<pid>-<random>-<name>` (atomic.py)."""
    path = Path(relative)
    return str(path.parent / f".tmp-[0-9]*-{path.name}")


def _created_since(path: Path, mtime_ns: int) -> bool:
    if glob.has_magic(str(path)):
        return any(_created_since(Path(match), mtime_ns) for match in glob.glob(str(path)))
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


# === 6. hostile inputs (issue 14) ======================================================================
# Small inputs that declare huge sizes, paths that are not regular files, data files naming paths
# outside their folder, two writers at once, and the operating system's own errors. Each ends in one
# `error:` line with the documented exit code within CASE_SECONDS, with peak RSS under CASE_RSS_BYTES
# (measured in the stage's own process: ru_maxrss, not an address-space limit), nothing written.

CASE_SECONDS = 10  # after TensorFlow's import (4-5 s, more on a busy machine) for stages that need it
CASE_RSS_BYTES = 1.5e9
_IMPORT_ALLOWANCE = 120  # seconds for `import tensorflow` on a busy machine, before a case's clock starts

_MEASURED = textwrap.dedent(
    """
    import importlib, json, sys, time
    start = time.monotonic()
    from stages.lib import cli
    report, stage, preload, *argv = sys.argv[1:]
    if preload == "tf":
        cli.import_tensorflow()
        start = time.monotonic()  # the case's clock: after the import every TensorFlow stage pays
    module = importlib.import_module(f"stages.{stage}")
    code = 0
    try:
        cli.run(module.main, argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        with open(report, "w") as f:
            json.dump({"seconds": time.monotonic() - start}, f)
    sys.exit(code)
    """
)


# Peak RSS is read by a small parent of the stage (RUSAGE_CHILDREN): a child forked straight from
# pytest, which holds TensorFlow, would inherit pytest's high-water mark across exec.
_PEAK_OF_CHILD = textwrap.dedent(
    """
    import json, resource, subprocess, sys
    code = subprocess.call(sys.argv[2:])
    with open(sys.argv[1], "w") as f:
        json.dump({"max_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}, f)
    sys.exit(code)
    """
)


def _measured_run(stage: str, argv: list[str], cwd: Path, report: Path, tensorflow: bool = False, env_path=()):
    """Run the stage in a fresh process; fail if it outlasts CASE_SECONDS or peaks above CASE_RSS_BYTES."""
    timeout = CASE_SECONDS + (_IMPORT_ALLOWANCE if tensorflow else 0)
    command = [sys.executable, "-c", _PEAK_OF_CHILD, f"{report}.rss"]
    command += [sys.executable, "-c", _MEASURED, str(report), stage, "tf" if tensorflow else "-", *argv]
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(*env_path),
        start_new_session=True,  # so a hanging stage can be killed with its wrapper
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{stage} still running after {timeout} s: a hang")
    done = subprocess.CompletedProcess(command, proc.returncode, out, err)
    measured = {**json.loads(report.read_text()), **json.loads(Path(f"{report}.rss").read_text())}
    report.unlink()
    Path(f"{report}.rss").unlink()
    print(f"{stage}: {measured['seconds']:.2f} s, peak RSS {measured['max_rss_bytes'] / 1e6:.0f} MB")
    print(done.stderr.strip()[-500:])
    assert measured["seconds"] < CASE_SECONDS, (measured, done.stderr[-2000:])
    assert measured["max_rss_bytes"] < CASE_RSS_BYTES, (measured, done.stderr[-2000:])
    return done


def _walk_snapshot(root: Path) -> dict:
    """Like _snapshot, but never opens what is not a regular file (a FIFO would block, /dev/zero never ends)."""
    state = {}
    for folder, dirs, files in os.walk(root):  # does not follow links to folders
        for name in dirs + files:
            path = Path(folder) / name
            key, info = str(path.relative_to(root)), os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                state[key] = (sha256(path), info.st_mtime_ns)
            elif stat.S_ISLNK(info.st_mode):
                state[key] = ("link", os.readlink(path), info.st_mtime_ns)
            else:  # a folder (its mtime changes as temporary copies come and go), a FIFO, a socket
                state[key] = (stat.S_IFMT(info.st_mode), None if name in dirs else info.st_mtime_ns)
    return state


def _fifo(path: Path) -> Path:
    _remove(path) if os.path.lexists(path) else None
    os.mkfifo(path)
    return path


def _socket(path: Path):
    """A UNIX socket bound at `path` (kept open by the returned object)."""
    _remove(path) if os.path.lexists(path) else None
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


def _link(path: Path, target) -> Path:
    _remove(path) if os.path.lexists(path) else None
    os.symlink(target, path)
    return path


def _directory(path: Path) -> Path:
    _remove(path) if os.path.lexists(path) else None
    path.mkdir()
    (path / "inside").write_text("a file in a folder\n")
    return path


def _sparse(path: Path, size: int = 200 << 20) -> Path:
    """A file of `size` bytes that takes no disk space (all zeros)."""
    _remove(path) if os.path.lexists(path) else None
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# Special files in place of a regular one: (id, make(path) -> keep-alive object, words the line must contain)
NOT_REGULAR = [
    ("fifo", _fifo, "a FIFO"),
    ("directory", _directory, "a directory"),
    ("dev-zero", lambda path: _link(path, "/dev/zero"), "a character device"),
    ("socket", _socket, "a socket"),
    ("link-loop", lambda path: _link(path, path.name), "a symbolic link loop"),
    ("broken-link", lambda path: _link(path, "nowhere"), "a broken symbolic link"),
]


# --- 6a. params.yaml --------------------------------------------------------------------------------

_BOMB_LEVELS = 9  # 9**9 = 387 million strings once expanded; the file is under 1 KB


def _alias_bomb_params() -> str:
    """params.yaml whose train.epochs is a list of nested aliases: ~387M elements once expanded."""
    anchors = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    anchors += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, _BOMB_LEVELS)]
    text = yaml.safe_dump(base_params(), sort_keys=False)
    bomb, count = re.subn(r"(?m)^(  epochs: ).*$", lambda m: m[1] + "[" + ", ".join(anchors) + "]", text)
    assert count == 1
    return bomb


def _params_text(overrides: dict) -> str:
    return yaml.safe_dump(with_overrides(base_params(), overrides), sort_keys=False)


def _duplicate_key_params() -> str:
    text = _params_text({})
    patched, count = re.subn(r"(?m)^(  epochs: .*)$", r"\1\n  epochs: 3", text)
    assert count == 1
    return patched


# (id, what params.yaml is: text, or a NOT_REGULAR maker; fragment the line must contain)
HOSTILE_PARAMS = [
    ("alias-bomb", _alias_bomb_params(), "YAML aliases"),
    ("duplicate-key", _duplicate_key_params(), "duplicate key 'epochs'"),
    ("seed-2-32", _params_text({"train.seed": 2**32}), "train.seed"),
    ("data-seed-2-64", _params_text({"data.seed": 2**64}), "data.seed"),
    ("model-too-big", _params_text({"model.hidden_units": [65_536] * 3}), "budget"),
    ("too-deep", _params_text({"model.hidden_units": [8] * 5000}), "model.hidden_units"),
    ("long-value", _params_text({"train.optimizer": "x" * 200_000}), "train.optimizer"),
    *[(f"params-{name}", make, words) for name, make, words in NOT_REGULAR],
]


@pytest.mark.parametrize("content, fragment", [c[1:] for c in HOSTILE_PARAMS], ids=[c[0] for c in HOSTILE_PARAMS])
def test_hostile_params_exit_2_fast_and_small(tmp_path, content, fragment):
    root = tmp_path / "repo"
    for stage in ("prepare", "train"):
        for option, value in _stage_options(stage):
            if option != "--params" and not (root / value).exists():
                _fake_previous(root / value)
    params_path = tmp_path / "params.yaml"
    keep = content(params_path) if callable(content) else params_path.write_text(content)
    blocker = tmp_path / "no-tensorflow" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(_NO_TENSORFLOW)
    _age(root)
    before = _walk_snapshot(root)
    for stage in ("prepare", "train"):
        done = _measured_run(
            stage, _stage_argv(stage, root, params_path), root, tmp_path / "measure.json", env_path=[blocker.parent]
        )
        assert done.returncode == 2, f"{stage}: {done.returncode}\n{done.stderr[-3000:]}"
        line = _one_error_line(done.stderr)
        assert line.startswith(f"error: {params_path}: ") and fragment in line, line
        assert len(line) < 400, f"the message must quote a shortened value: {len(line)} characters"
        assert done.stdout == ""
    assert _changes(before, _walk_snapshot(root)) == []
    del keep


# --- 6b. IDX files ------------------------------------------------------------------------------------


def _idx_header(count: int, images: bool = True) -> bytes:
    magic = 0x00000803 if images else 0x00000801
    dims = [count, 28, 28] if images else [count]
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


def _gzip_bomb(path: Path, count: int, expanded: int = 8 << 30) -> Path:
    """A .gz of a few MB whose stream is the IDX header of `count` images, then `expanded` zero bytes
    (one compressed member of 16 MB of zeros, repeated: gzip readers read all members as one stream)."""
    member = gzip.compress(bytes(16 << 20), compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(gzip.compress(_idx_header(count), mtime=0))
        for _ in range(expanded // (16 << 20)):
            f.write(member)
    return path


def _in_place_of(name: str, make):
    """A damage of data/raw: remove the IDX file `name` (plain and .gz), then make(path) where it was."""

    def damage(raw: Path):
        for path in (raw / name.removesuffix(".gz"), raw / (name.removesuffix(".gz") + ".gz")):
            if path.exists():
                path.unlink()
        return raw / name, make(raw / name)

    return damage


_IMAGES, _LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
HOSTILE_IDX = [
    ("gzip-bomb-8GB", _in_place_of(_IMAGES + ".gz", lambda path: _gzip_bomb(path, N_TRAIN)), "bytes too many"),
    (
        "claims-4-billion",
        _in_place_of(_IMAGES, lambda path: path.write_bytes(_idx_header(2**32 - 1))),
        "claims 4,294,967,295 images",
    ),
    (  # an EMNIST-size count is admitted (then found truncated)
        "claims-800000",
        _in_place_of(_IMAGES, lambda path: path.write_bytes(_idx_header(800_000))),
        f"expected {800_000 * 784} bytes of pixels, found 0",
    ),
    (
        "labels-claim-4-billion-gz",
        _in_place_of(_LABELS + ".gz", lambda path: path.write_bytes(gzip.compress(_idx_header(2**32 - 1, False)))),
        "claims 4,294,967,295 labels",
    ),
    *[(f"idx-{name}", _in_place_of(_IMAGES, make), words) for name, make, words in NOT_REGULAR],
]


@pytest.mark.parametrize("damage, fragment", [c[1:] for c in HOSTILE_IDX], ids=[c[0] for c in HOSTILE_IDX])
def test_hostile_idx_files_fail_fast_and_small(repo, tmp_path, damage, fragment):
    raw = repo / "data" / "raw"
    params_path = _write_params(repo / "hostile.yaml", _tiny_params(raw))
    named, keep = damage(raw)
    _age(repo)
    before = _walk_snapshot(repo)
    done = _measured_run("prepare", _stage_argv("prepare", repo, params_path), repo, tmp_path / "measure.json")
    assert done.returncode == 1, done.stderr[-3000:]
    line = _one_error_line(done.stderr)
    assert line.startswith(f"error: {named}: ") and fragment in line, line
    assert _changes(before, _walk_snapshot(repo)) == []
    del keep


# --- 6c. prepared data: meta.json and its shards -------------------------------------------------------


def _meta_path(root: Path) -> Path:
    return root / PREPARED / "meta.json"


def _copy_shard_to(root: Path, target: Path, split: str = "test") -> Path:
    shutil.copyfile(_shards(root, split)[0], target)
    return target


def _meta_edit(edit):
    """A damage that edits meta.json in place (the line must name meta.json)."""

    def damage(root: Path):
        meta = json.loads(_meta_path(root).read_text())
        edit(meta, root)
        _meta_path(root).write_text(json.dumps(meta))
        return _meta_path(root), None

    return damage


def _set_test_file(name_of):
    def edit(meta, root):
        meta["splits"]["test"]["shards"][0]["file"] = name_of(root)

    return edit


def _damage_at(path_of, make):
    def damage(root: Path):
        path = path_of(root)
        return path, make(path)

    return damage


def _write_text(text: str):
    def make(path: Path):
        path.write_text(text)

    return make


# (id, damage(root) -> (path the line must start with, keep-alive), fragment the line must contain)
HOSTILE_PREPARED = [
    (  # a copy of a real shard outside the folder: the sha256 matches, the name must not be followed
        "shard-outside-the-folder",
        _meta_edit(
            _set_test_file(lambda root: os.path.relpath(_copy_shard_to(root, root / "x.tfrecord"), root / PREPARED))
        ),
        "expected 'test-00000-of-00001.tfrecord'",
    ),
    (
        "shard-absolute-path",
        _meta_edit(_set_test_file(lambda root: str(_copy_shard_to(root, root / "x.tfrecord")))),
        "expected 'test-00000-of-00001.tfrecord'",
    ),
    (
        "shard-in-a-subfolder",
        _meta_edit(_set_test_file(lambda root: "sub/test-00000-of-00001.tfrecord")),
        "expected 'test-00000-of-00001.tfrecord'",
    ),
    (  # val's shards listed as the test split, with their own (consistent) sizes and checksums
        "shards-of-another-split",
        _meta_edit(lambda meta, root: meta["splits"]["test"].update(shards=meta["splits"]["val"]["shards"])),
        "of split test",
    ),
    ("count-as-text", _meta_edit(lambda meta, root: meta["splits"]["test"].update(count="200")), "splits.test.count"),
    (
        "count-huge",
        _meta_edit(lambda meta, root: meta["splits"]["test"].update(count=10**15)),
        "expected an integer in 0..",
    ),
    (
        "shard-counts-disagree",
        _meta_edit(lambda meta, root: meta["splits"]["test"]["shards"][0].update(count=7)),
        "its shards hold 7 examples",
    ),
    (
        "class-counts-disagree",
        _meta_edit(lambda meta, root: meta["splits"]["test"].update(class_counts=[1] * 10)),
        "class_counts add up to 10",
    ),
    (
        "compression-not-the-names",
        _meta_edit(lambda meta, root: meta.update(compression="gzip")),
        ".tfrecord.gz",
    ),
    ("split-missing", _meta_edit(lambda meta, root: meta["splits"].pop("test")), "no 'test' split listed"),
    ("split-unknown", _meta_edit(lambda meta, root: meta["splits"].update(extra={})), "splits are"),
    ("meta-a-list", _damage_at(_meta_path, _write_text("[1, 2, 3]\n")), "not schema version"),
    ("meta-nested-deeply", _damage_at(_meta_path, _write_text("[" * 200_000)), "unreadable"),
    ("meta-sparse-200MB", _damage_at(_meta_path, _sparse), "too large"),
    *[(f"meta-{name}", _damage_at(_meta_path, make), words) for name, make, words in NOT_REGULAR],
    *[
        (f"shard-{name}", _damage_at(lambda root: _shards(root, "test")[0], make), words)
        for name, make, words in NOT_REGULAR
        if name in ("fifo", "directory", "dev-zero")  # (a socket's path would be too long for AF_UNIX)
    ],
]


@contextlib.contextmanager
def _alarm(seconds: int):
    """Raise TimeoutError in this process after `seconds` (it interrupts a blocking open or read in
    Python; a hang inside TensorFlow's C++ is what the subprocess cases guard against)."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _in_process_case(stage: str, repo: Path, capfd) -> str:
    """Run the stage in-process; it must fail with exit 1 and one line within CASE_SECONDS (in one of two
    runs), its peak RSS growing by less than CASE_RSS_BYTES, nothing changed; returns the line."""
    before = _walk_snapshot(repo)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for attempt in (1, 2):  # this VM stalls for seconds now and then: a second run tells a stall from a slow stage
        start = time.monotonic()
        with _alarm(CASE_SECONDS + 5):
            code, out, err = _run_in_process(stage, _stage_argv(stage, repo, repo / "params.yaml"), capfd)
        seconds = time.monotonic() - start
        print(f"{stage}: {seconds:.2f} s (run {attempt})")
        if seconds < CASE_SECONDS:
            break
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    print(f"{stage}: peak RSS grew {growth / 1e6:.0f} MB")
    assert code == 1, err
    assert seconds < CASE_SECONDS and growth < CASE_RSS_BYTES
    assert _changes(before, _walk_snapshot(repo)) == []
    line = _one_error_line(err)
    print(line)
    return line


@pytest.mark.parametrize("damage, fragment", [c[1:] for c in HOSTILE_PREPARED], ids=[c[0] for c in HOSTILE_PREPARED])
def test_hostile_prepared_data(repo, capfd, damage, fragment):
    named, keep = damage(repo)
    line = _in_process_case("evaluate", repo, capfd)
    assert line.startswith(f"error: {named}: ") and fragment in line, line
    assert "dvc repro prepare" in line, line
    del keep


# --- 6d. the checkpoint: model.json and TensorFlow's files ---------------------------------------------


def _model_json(root: Path) -> Path:
    return root / CHECKPOINT / "model.json"


HOSTILE_CHECKPOINT = [
    (
        "model-json-many-layers",
        _damage_at(_model_json, _write_text(json.dumps({"hidden_units": [1] * 100_000}))),
        "does not match the checkpoint",
    ),
    ("model-json-sparse-200MB", _damage_at(_model_json, _sparse), "too large"),
    *[(f"model-json-{name}", _damage_at(_model_json, make), words) for name, make, words in NOT_REGULAR],
]
# TensorFlow's own reader would block in C++ on these, where no alarm reaches: run as subprocesses.
HOSTILE_CHECKPOINT_FILES = [
    ("ckpt-index-fifo", _damage_at(lambda root: root / CHECKPOINT / "ckpt.index", _fifo), "a FIFO"),
    ("ckpt-data-dev-zero", _damage_at(_ckpt_data, lambda path: _link(path, "/dev/zero")), "a character device"),
]


@pytest.mark.parametrize(
    "damage, fragment", [c[1:] for c in HOSTILE_CHECKPOINT], ids=[c[0] for c in HOSTILE_CHECKPOINT]
)
def test_hostile_checkpoint(repo, capfd, damage, fragment):
    named, keep = damage(repo)
    named = repo / CHECKPOINT if "does not match" in fragment else named
    line = _in_process_case("evaluate", repo, capfd)
    assert line.startswith(f"error: {named}") and fragment in line, line
    assert "dvc repro train" in line, line
    del keep


@pytest.mark.parametrize(
    "damage, fragment", [c[1:] for c in HOSTILE_CHECKPOINT_FILES], ids=[c[0] for c in HOSTILE_CHECKPOINT_FILES]
)
def test_hostile_checkpoint_files_as_a_subprocess(repo, tmp_path, damage, fragment):
    named, keep = damage(repo)
    _age(repo)
    before = _walk_snapshot(repo)
    argv = _stage_argv("evaluate", repo, repo / "params.yaml")
    done = _measured_run("evaluate", argv, repo, tmp_path / "measure.json", tensorflow=True)
    assert done.returncode == 1, done.stderr[-3000:]
    line = _one_error_line(done.stderr)
    assert line.startswith(f"error: {named}: ") and fragment in line and "dvc repro train" in line, line
    assert _changes(before, _walk_snapshot(repo)) == []
    del keep


def test_model_json_claiming_a_huge_width_allocates_nothing(repo, tmp_path):
    """[20000, 20000] is 400M weights (1.6 GB) if built: model.json is checked against the checkpoint first."""
    _model_json(repo).write_text(json.dumps({"hidden_units": [20_000, 20_000], "deskew": False}))
    _age(repo)
    before = _walk_snapshot(repo)
    argv = _stage_argv("evaluate", repo, repo / "params.yaml")
    done = _measured_run("evaluate", argv, repo, tmp_path / "measure.json", tensorflow=True)
    assert done.returncode == 1, done.stderr[-3000:]
    line = _one_error_line(done.stderr)
    assert line.startswith(f"error: {repo / CHECKPOINT}: ") and "does not match the checkpoint" in line, line
    assert _changes(before, _walk_snapshot(repo)) == []


# --- 6e. the operating system's errors and TensorFlow's resource errors, injected ---------------------
# (tests run as root in CI, where permissions stop no write: the errors are raised where they would be)


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _os_error_on_temporary(monkeypatch, code: int, function: str = "open"):
    """os.open / os.replace fail with `code` for any path of an atomic writer's temporary copy."""
    real = getattr(os, function)

    def failing(path, *args, **kwargs):
        if "/.tmp-" in str(path) or str(path).startswith(".tmp-"):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, function, failing)


def _enospc_in_write_text(monkeypatch):
    from stages.lib import atomic

    def open_then_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(atomic, "open", open_then_full, raising=False)


def _enospc_writing_meta(monkeypatch):
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "meta.json" and "/.tmp-" in str(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def _tf_out_of_memory(monkeypatch):
    import tensorflow as tf

    from stages.lib import model

    message = "OOM when allocating tensor with shape[10000,800] and type float on /job:localhost/device:CPU:0"
    monkeypatch.setattr(model, "predict_logits", _raise(tf.errors.ResourceExhaustedError(None, None, message)))


def _shard_read_fails(monkeypatch, repo):
    """Opening the first validation shard fails with EIO, as on a failing disk."""
    from stages.lib import cli

    shard, real_open = _shards(repo, "val")[0], cli.open_regular

    def open_regular(path, *args, **kwargs):
        if Path(path).resolve() == shard.resolve():
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(shard))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cli, "open_regular", open_regular)


def _memory_error(monkeypatch):
    from stages.lib import records

    monkeypatch.setattr(records, "read_split", _raise(MemoryError()))


# (id, stage, inject(monkeypatch, repo), what the line must start with (relative to repo or None), fragment)
OS_ERRORS = [
    (
        "disk-full-writing",
        "evaluate",
        lambda mp, repo: _enospc_in_write_text(mp),
        "reports/per_class.json",
        "No space left on device",
    ),
    (
        "read-only-folder",
        "evaluate",
        lambda mp, repo: _os_error_on_temporary(mp, errno.EROFS),
        "reports/",
        "Read-only file system",
    ),
    (
        "rename-not-permitted",
        "evaluate",
        lambda mp, repo: _os_error_on_temporary(mp, errno.EACCES, "replace"),
        "reports/per_class.json",
        "Permission denied",
    ),
    (
        "shard-unreadable",
        "evaluate",
        lambda mp, repo: _shard_read_fails(mp, repo),
        f"{PREPARED}/val-",
        "Input/output error",
    ),
    ("tf-out-of-memory", "evaluate", lambda mp, repo: _tf_out_of_memory(mp), None, "shape[10000,800]"),
    ("out-of-memory", "evaluate", lambda mp, repo: _memory_error(mp), None, "out of memory"),
    (
        "disk-full-preparing",
        "prepare",
        lambda mp, repo: _enospc_writing_meta(mp),
        f"{PREPARED}: cannot write it",
        "No space left on device",
    ),
]


@pytest.mark.parametrize("stage, inject, named, fragment", [c[1:] for c in OS_ERRORS], ids=[c[0] for c in OS_ERRORS])
def test_os_and_resource_errors_give_one_line(repo, capfd, monkeypatch, stage, inject, named, fragment):
    if stage == "prepare":
        _write_params(repo / "params.yaml", _tiny_params(repo / "data" / "raw", **{"data.seed": 1}))
    _age(repo)
    inject(monkeypatch, repo)
    line = _in_process_case(stage, repo, capfd)
    monkeypatch.undo()
    if named:
        assert line.startswith(f"error: {repo / named}"), line
    assert fragment in line, line
    assert leftovers(repo) == []


# --- 6f. two writers at once: two direct `prepare` runs into the same output ---------------------------

_PAUSED_PREPARE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from stages.lib import cli
    cli.import_tensorflow()
    from stages import prepare
    from stages.lib import records
    paused, go, *argv = sys.argv[1:]
    real_write_split = records.write_split

    def write_split(folder, split, *args, **kwargs):
        entry = real_write_split(folder, split, *args, **kwargs)
        if split == "train":  # the train shards are in the temporary folder, meta.json is not: wait here
            Path(paused).write_text(str(folder))
            deadline = time.monotonic() + 300
            while not Path(go).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return entry

    records.write_split = write_split
    cli.run(prepare.main, argv)
    """
)


@pytest.mark.slow
def test_two_prepare_runs_at_once_never_mix(repo, tmp_path):
    """The first run is held while writing (train shards written, meta.json not), the second runs to its
    end meanwhile, then the first goes on. Each must end in success or one clear line, and data/prepared
    must be exactly one run's complete output. (Before the lock and unique names, the second removed the
    first's temporary folder and the first crashed writing into it.)"""
    raw = repo / "data" / "raw"
    params_first = _write_params(repo / "first.yaml", _tiny_params(raw, **{"data.seed": 1}))
    params_second = _write_params(repo / "second.yaml", _tiny_params(raw, **{"data.seed": 2, "data.shard_size": 100}))
    paused, go = tmp_path / "paused", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_PREPARE, str(paused), str(go), *_stage_argv("prepare", repo, params_first)],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        start = time.monotonic()
        while not paused.exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() - start < STAGE_TIMEOUT, "the first run never reached its pause"
            time.sleep(0.05)
        second = _run_stage("prepare", _stage_argv("prepare", repo, params_second), repo)
    finally:
        go.write_text("")
        out, err = first.communicate(timeout=STAGE_TIMEOUT)
    outcomes = {"first": (first.returncode, err), "second": (second.returncode, second.stderr)}
    print(outcomes)
    for name, (code, stderr) in outcomes.items():
        if code == 0:
            assert stderr.strip() == "", f"{name}: {stderr}"
        else:
            assert code == 1, f"{name} exited {code}: {stderr}"
            line = _one_error_line(stderr)
            assert line.startswith(f"error: {repo / PREPARED}: another run") and "is writing it" in line, line
    winners = [name for name, (code, _) in outcomes.items() if code == 0]
    assert len(winners) >= 1
    out_dir = repo / PREPARED
    meta = json.loads((out_dir / "meta.json").read_text())
    listed = {shard["file"]: shard for split in meta["splits"].values() for shard in split["shards"]}
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(["meta.json", *listed]), "files of both runs"
    for name, shard in listed.items():
        assert sha256(out_dir / name) == shard["sha256"], name
    train_shards = len(meta["splits"]["train"]["shards"])
    expected = {"first": -(-(N_TRAIN - VAL_SIZE) // SHARD_SIZE), "second": -(-(N_TRAIN - VAL_SIZE) // 100)}
    assert train_shards in [expected[name] for name in winners], (train_shards, winners)
    assert leftovers(repo) == []
