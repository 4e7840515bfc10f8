"""The params schema: every bad value is one ParamsError naming the full key; the stages exit 2 on it,
with one `error:` line, no traceback and nothing written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DELETE, REPO, SYNTHETIC_MODEL, base_params, names_key, with_overrides

from stages.lib import cli, params


def test_repo_params_are_valid():
    p = params.load(REPO / "params.yaml")
    assert p.train.optimizer in ("adam", "sgd")
    synthetic = params.validate(base_params())  # the same file, with SYNTHETIC_MODEL
    assert synthetic.model == p.model.model_copy(update=SYNTHETIC_MODEL)
    assert (synthetic.data, synthetic.train) == (p.data, p.train)


def test_every_schema_key_is_in_params_yaml_and_back():
    """params.yaml and the schema list the same keys (defaults live in the file, the schema requires all)."""

    def keys(node, prefix=""):
        out = set()
        for key, value in node.items():
            out.add(prefix + key)
            if isinstance(value, dict):
                out |= keys(value, prefix + key + ".")
        return out

    assert keys(base_params()) == set(params._known_keys(params.Params))


# (id, overrides, the full key the message must name, a further fragment it must contain)
BAD = [
    ("typo-key", {"train.learnig_rate": 0.1}, "train.learnig_rate", "did you mean train.learning_rate?"),
    ("typo-section", {"trian": {"epochs": 3}}, "trian", "did you mean train?"),
    ("unknown-key", {"data.colour": "red"}, "data.colour", "unknown key"),
    ("epochs-string", {"train.epochs": "ten"}, "train.epochs", "integer"),
    ("epochs-float", {"train.epochs": 3.0}, "train.epochs", "integer"),
    ("seed-float", {"train.seed": 1.5}, "train.seed", "integer"),
    ("data-seed-float", {"data.seed": 0.0}, "data.seed", "integer"),
    ("seed-negative", {"train.seed": -1}, "train.seed", "greater than or equal to 0"),
    ("bool-as-int", {"train.jit_compile": 1}, "train.jit_compile", "boolean"),
    ("bool-as-string", {"data.verify": "yes"}, "data.verify", "boolean"),
    ("lr-bool", {"train.learning_rate": True}, "train.learning_rate", "number"),
    ("lr-word", {"train.learning_rate": "fast"}, "train.learning_rate", "number"),
    ("lr-zero", {"train.learning_rate": 0}, "train.learning_rate", "greater than 0"),
    ("lr-negative", {"train.learning_rate": -1e-3}, "train.learning_rate", "greater than 0"),
    ("lr-nan", {"train.learning_rate": float("nan")}, "train.learning_rate", ""),
    ("lr-huge", {"train.learning_rate": 1e7}, "train.learning_rate", "less than or equal"),
    ("momentum-1", {"train.optimizer": "sgd", "train.momentum": 1.0}, "train.momentum", "less than 1"),
    ("dropout-1", {"train.dropout_hidden": 1.0}, "train.dropout_hidden", "less than 1"),
    ("smoothing-negative", {"train.label_smoothing": -0.1}, "train.label_smoothing", "greater than or equal to 0"),
    ("weight-decay-1", {"train.weight_decay": 1.0}, "train.weight_decay", "less than 1"),
    ("shift-9", {"train.augment_shift": 9}, "train.augment_shift", "less than or equal to 8"),
    ("epochs-0", {"train.epochs": 0}, "train.epochs", "greater than or equal to 1"),
    ("batch-0", {"train.batch_size": 0}, "train.batch_size", "greater than or equal to 1"),
    ("steps-per-call-0", {"train.steps_per_call": 0}, "train.steps_per_call", "greater than or equal to 1"),
    ("val-size-0", {"data.val_size": 0}, "data.val_size", "greater than or equal to 1"),
    ("val-size-all", {"data.val_size": 60_000}, "data.val_size", "less than or equal to 59999"),
    ("shard-size-0", {"data.shard_size": 0}, "data.shard_size", "greater than or equal to 1"),
    ("hidden-empty", {"model.hidden_units": []}, "model.hidden_units", "at least 1"),
    ("hidden-zero", {"model.hidden_units": [64, 0]}, "model.hidden_units.1", "greater than or equal to 1"),
    ("hidden-float", {"model.hidden_units": [64.0]}, "model.hidden_units.0", "integer"),
    ("hidden-scalar", {"model.hidden_units": 64}, "model.hidden_units", "list"),
    ("deskew-text", {"model.deskew": "yes"}, "model.deskew", "boolean"),
    ("optimizer-enum", {"train.optimizer": "rmsprop"}, "train.optimizer", "'adam' or 'sgd'"),
    ("schedule-enum", {"train.lr_schedule": "linear"}, "train.lr_schedule", "'constant' or 'cosine'"),
    ("source-enum", {"data.source": "web"}, "data.source", "'bundled'"),
    ("compression-enum", {"data.compression": "zip"}, "data.compression", "'none' or 'gzip'"),
    ("idx-dir-null", {"data.idx_dir": None}, "data.idx_dir", "string"),
    ("missing-key", {"train.jit_compile": DELETE}, "train.jit_compile", "missing key"),
    ("missing-section", {"model": DELETE}, "model", "missing key"),
    ("section-not-mapping", {"train": 5}, "train", ""),
    ("warmup-too-long", {"train.warmup_epochs": 20, "train.epochs": 20}, "train.warmup_epochs", "train.epochs"),
    ("warmup-longer", {"train.warmup_epochs": 21, "train.epochs": 20}, "train.warmup_epochs", "train.epochs"),
    ("momentum-with-adam", {"train.optimizer": "adam", "train.momentum": 0.9}, "train.momentum", "sgd"),
    ("nesterov-with-adam", {"train.optimizer": "adam", "train.nesterov": True}, "train.nesterov", "sgd"),
    (
        "nesterov-without-momentum",
        {"train.optimizer": "sgd", "train.momentum": 0.0, "train.nesterov": True},
        "train.nesterov",
        "train.momentum",
    ),
    ("strategy-enum", {"train.strategy": "tpu"}, "train.strategy", "'default', 'mirrored' or 'multi_worker'"),
    ("cpu-replicas-0", {"train.cpu_replicas": 0}, "train.cpu_replicas", "greater than or equal to 1"),
    (
        "batch-not-split-over-replicas",
        {"train.strategy": "mirrored", "train.cpu_replicas": 3, "train.batch_size": 128},
        "train.cpu_replicas",
        "train.batch_size",
    ),
    (
        "batch-larger-than-train",
        {"data.val_size": 59_000, "train.batch_size": 1001},
        "train.batch_size",
        "data.val_size",
    ),
]


@pytest.mark.parametrize("overrides, key, fragment", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_params_name_the_key(overrides, key, fragment):
    raw = with_overrides(base_params(), overrides)
    with pytest.raises(params.ParamsError) as caught:
        params.validate(raw, "my-params.yaml")
    message = str(caught.value)
    assert message.startswith("my-params.yaml: ")
    assert names_key(message, key), message
    assert fragment in message
    assert "\n" not in message
    assert caught.value.exit_code == cli.EXIT_USAGE == 2
    assert "pydantic" not in message and "errors.pydantic.dev" not in message


def test_renamed_key_is_reported_with_did_you_mean():
    raw = with_overrides(base_params(), {"train.learning_rate": DELETE, "train.learnig_rate": 0.1})
    with pytest.raises(params.ParamsError, match=r"train\.learnig_rate \(did you mean train\.learning_rate\?\)"):
        params.validate(raw)


@pytest.mark.parametrize("text", ["1e-3", "1E-3", "+1e-3", ".5e-2", "5.0e-3"])
def test_exponent_without_dot_is_a_number(tmp_path, text):
    """PyYAML reads `1e-3` (no dot) as a string; the schema accepts it as the number it is."""
    source = (REPO / "params.yaml").read_text()
    patched, count = re.subn(r"(?m)^(  learning_rate: )\S+", rf"\g<1>{text}", source)
    assert count == 1
    path = tmp_path / "params.yaml"
    path.write_text(patched)
    assert isinstance(yaml.safe_load(patched)["train"]["learning_rate"], (str, float))
    p = params.load(path)
    assert isinstance(p.train.learning_rate, float)
    assert p.train.learning_rate == pytest.approx(float(text))


def test_int_is_accepted_for_a_float():
    assert params.validate(with_overrides(base_params(), {"train.learning_rate": 1})).train.learning_rate == 1.0


# --- the file level ------------------------------------------------------------------------------

BAD_FILES = [
    ("yaml-syntax", "data:\n  source: bundled\n  val_size: [1, 2\n", "not valid YAML"),
    ("yaml-tab", "train:\n\tepochs: 3\n", "not valid YAML"),
    ("a-list", "- data\n- model\n", "expected a mapping"),
    ("a-scalar", "42\n", "expected a mapping"),
    ("empty", "", "expected a mapping"),
]


@pytest.mark.parametrize("text, fragment", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_params_files(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(params.ParamsError) as caught:
        params.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message


def test_yaml_error_gives_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  source: bundled\n  seed: [0\nmodel: {}\n")
    with pytest.raises(params.ParamsError, match=r"line \d+"):
        params.load(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(params.ParamsError, match=r"nowhere\.yaml: cannot read params file"):
        params.load(tmp_path / "nowhere.yaml")


def test_params_does_not_import_tensorflow():
    """A bad value must be reported fast: the schema module is free of TensorFlow."""
    code = "import sys; import stages.lib.params, stages.lib.cli; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


# The stages' own refusal of a bad params file (exit 2, one line, nothing written, before TensorFlow) is in
# test_faults.py, which runs every case there through all four stages.


# --- hostile files (issue 14): bounded values, strict YAML, only a regular file -----------------------


@pytest.mark.parametrize(
    "hidden_units",
    [[800, 800], [1024, 1024], [1200, 1200], [1024, 1024, 1024], [700, 500], [16]],
    ids=lambda units: "x".join(map(str, units)),
)
def test_the_budget_admits_every_documented_model(hidden_units):
    """README and benchmarks/RESULTS.md use these; 3x1024 (2.9M parameters) is the largest."""
    assert params.validate(with_overrides(base_params(), {"model.hidden_units": hidden_units}))


@pytest.mark.parametrize(
    "overrides, key, fragment",
    [
        ({"model.hidden_units": [65_536] * 3}, "model.hidden_units", "budget of 20,000,000"),
        ({"model.hidden_units": [8] * (params.MAX_HIDDEN_LAYERS + 1)}, "model.hidden_units", "at most 32 items"),
        ({"train.seed": 2**32}, "train.seed", "less than or equal to 4294967295"),
        ({"data.seed": 2**64}, "data.seed", "less than or equal to 4294967295"),
        ({"data.shard_size": 2**31}, "data.shard_size", "less than or equal to 2147483647"),
        ({"train.steps_per_call": 2**40}, "train.steps_per_call", "less than or equal to 2147483647"),
        ({"train.max_norm": float("inf")}, "train.max_norm", "less than or equal"),
    ],
    ids=["too-big", "too-deep", "seed-2-32", "data-seed-2-64", "shard-size-2-31", "steps-2-40", "max-norm-inf"],
)
def test_values_beyond_what_numpy_and_tensorflow_take_are_refused(overrides, key, fragment):
    with pytest.raises(params.ParamsError) as caught:
        params.validate(with_overrides(base_params(), overrides))
    assert names_key(str(caught.value), key) and fragment in str(caught.value), caught.value


def test_largest_seed_is_accepted():
    assert params.validate(with_overrides(base_params(), {"train.seed": 2**32 - 1})).train.seed == 2**32 - 1


def _repo_params_with(tmp_path, pattern: str, replacement: str) -> Path:
    text, count = re.subn(pattern, replacement, (REPO / "params.yaml").read_text(), count=1, flags=re.M)
    assert count == 1
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_a_duplicate_key_is_refused_with_its_line(tmp_path):
    path = _repo_params_with(tmp_path, r"^(  epochs: .*)$", r"\1\n  epochs: 3")
    with pytest.raises(params.ParamsError, match=r"line \d+: duplicate key 'epochs'"):
        params.load(path)


def test_a_duplicate_section_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text() + "train:\n  epochs: 3\n")
    with pytest.raises(params.ParamsError, match=r"duplicate key 'train'"):
        params.load(path)


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    """Nine levels of nine aliases: 387M strings once expanded, and the error message quoted them all."""
    levels = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = _repo_params_with(tmp_path, r"^(  epochs: ).*$", r"\g<1>[" + ", ".join(levels) + "]")
    with pytest.raises(params.ParamsError) as caught:
        params.load(path)
    assert "YAML aliases (*a0) are not allowed" in str(caught.value) and len(str(caught.value)) < 200


def test_a_huge_value_is_quoted_shortened(tmp_path):
    path = _repo_params_with(tmp_path, r"^(  optimizer: )\S+", r"\g<1>" + "x" * 500_000)
    with pytest.raises(params.ParamsError) as caught:
        params.load(path)
    assert names_key(str(caught.value), "train.optimizer") and len(str(caught.value)) < 300


def test_deep_nesting_is_one_line(tmp_path):
    path = _repo_params_with(tmp_path, r"^(  optimizer: )\S+", r"\g<1>" + "[" * 50_000 + "]" * 50_000)
    with pytest.raises(params.ParamsError, match="nested too deeply|not valid YAML"):
        params.load(path)


def test_an_oversized_file_is_not_read(tmp_path):
    path = tmp_path / "params.yaml"
    with open(path, "wb") as f:
        f.truncate(params.MAX_FILE_BYTES + 1)
    with pytest.raises(params.ParamsError, match=r"cannot read params file \(1048577 bytes, too large"):
        params.load(path)


@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero", "loop"])
def test_a_params_path_that_is_not_a_regular_file_is_named(tmp_path, kind):
    path = tmp_path / "params.yaml"
    {
        "fifo": lambda: os.mkfifo(path),
        "directory": lambda: path.mkdir(),
        "dev-zero": lambda: path.symlink_to("/dev/zero"),
        "loop": lambda: path.symlink_to(path.name),
    }[kind]()
    words = {
        "fifo": "a FIFO",
        "directory": "a directory",
        "dev-zero": "a character device",
        "loop": "a symbolic link loop",
    }
    with pytest.raises(params.ParamsError, match=rf"cannot read params file \({words[kind]}"):
        params.load(path)


# --- params.yaml in the style `dvc exp run -S` writes ----------------------------------------------------


def _other_value(value):
    """A non-default value of the same kind, as a Hydra override writes it."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, (int, float)):
        return str(value + 1)
    if isinstance(value, list):
        return "[" + ",".join(map(str, value[:-1] + [value[-1] + 1])) + "]"
    return "elsewhere"  # str or None (an empty value)


def test_dvc_exp_run_set_changes_exactly_one_line_of_params_yaml(tmp_path, monkeypatch):
    """`dvc exp run -S key=value` rewrites params.yaml through DVC's apply_overrides (ruamel round trip): in
    DVC's own style (block lists, empty values instead of null) the rewrite keeps every other line, comments
    included, for every key, model.hidden_units too."""
    import yaml
    from conftest import REPO
    from dvc.utils.hydra import apply_overrides

    original = (REPO / "params.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(original)
    apply_overrides(str(path), ["train.seed=" + str(yaml.safe_load(original)["train"]["seed"])])
    assert path.read_text() == original, "params.yaml is not in the style DVC writes"

    for section, values in yaml.safe_load(original).items():
        for key, value in values.items():
            path.write_text(original)
            apply_overrides(str(path), [f"{section}.{key}={_other_value(value)}"])
            before, after = original.splitlines(), path.read_text().splitlines()
            assert len(after) == len(before), (section, key)
            changed = [(a, b) for a, b in zip(before, after) if a != b]
            assert len(changed) == 1, (section, key, changed)
            comment = before[before.index(changed[0][0])].partition("#")[2]
            assert not comment or changed[0][1].endswith("#" + comment), (section, key, changed)
