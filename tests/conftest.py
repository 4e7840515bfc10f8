"""What the tests share (the only place helpers live; no test module imports another): the repo's params,
tiny synthetic MNIST-format data, IDX writers, file hashes, running commands, tiny copies of this repo.

TensorFlow is imported only through the `tf` fixture (once per session, after the CPU is split into two
logical devices, which is possible only before TensorFlow starts), so the params and sources tests stay
fast and the suite passes in any file order.
"""

import copy
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

with open(REPO / "params.yaml") as _f:
    _BASE_PARAMS = yaml.safe_load(_f)
# The synthetic classes below differ only by where their block sits. Deskewing re-centres every image
# and would erase that, so tests on synthetic data run without it; model.deskew has its own tests, and
# CI's `dvc repro` runs it on the real data.
SYNTHETIC_MODEL = {"deskew": False}
_BASE_PARAMS["model"].update(SYNTHETIC_MODEL)


def base_params() -> dict:
    """The repo's params.yaml parsed as a dict, with SYNTHETIC_MODEL; a fresh deep copy each call."""
    return copy.deepcopy(_BASE_PARAMS)


def with_overrides(raw: dict, overrides: dict) -> dict:
    """Set dotted keys, e.g. {"train.epochs": 3}; a value of `DELETE` removes the key."""
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return raw


DELETE = object()


# train.* switched to plain Adam at a constant rate, every regulariser off: tests that assert on the
# loop's numbers start from here, so a change of the defaults in params.yaml does not move them.
PLAIN_TRAIN = dict(
    train__optimizer="adam",
    train__learning_rate=0.001,
    train__momentum=0.0,
    train__nesterov=False,
    train__weight_decay=0.0,
    train__lr_schedule="constant",
    train__warmup_epochs=0,
    train__label_smoothing=0.0,
    train__dropout_input=0.0,
    train__dropout_hidden=0.0,
    train__max_norm=0.0,
    train__augment_shift=0,
    train__seed=0,
)


# A 784-32-10 MLP, 3 epochs of batch 32, 4 steps per tf.function call: the training loop's tests.
TINY_TRAIN = dict(
    PLAIN_TRAIN,
    model__hidden_units=[32],
    train__epochs=3,
    train__batch_size=32,
    train__steps_per_call=4,
)
# The same on two replicas (mirrored CPUs, or two worker processes in tests/multi_worker_child.py).
TINY_DISTRIBUTED = dict(TINY_TRAIN, train__epochs=2, train__cpu_replicas=2)


def make_params(**overrides):
    """Validated Params from base_params() with dotted overrides given as `train__epochs=3`."""
    from stages.lib import params

    raw = with_overrides(base_params(), {k.replace("__", "."): v for k, v in overrides.items()})
    return params.validate(raw)


# --- synthetic MNIST-format data -----------------------------------------------------------------

# Each class is a bright 7x7 block at its own place on a 4x3 grid of the 28x28 canvas: trivially
# separable, so a tiny MLP learns it in a few epochs, yet noisy and jittered so examples differ.
_BLOCK = 7
_ORIGINS = [(2 + 6 * (k % 4), 2 + 8 * (k // 4)) for k in range(10)]


def make_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.int64)
    jitter = rng.integers(-1, 2, size=(n, 2))
    for i, label in enumerate(labels):
        row, col = _ORIGINS[int(label)]
        row, col = row + jitter[i, 0], col + jitter[i, 1]
        images[i, row : row + _BLOCK, col : col + _BLOCK] += rng.integers(150, 196)
    return np.clip(images, 0, 255).astype(np.uint8)


def make_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, 28, 28), int64 labels (n,)) with balanced, shuffled classes 0..9."""
    rng = np.random.default_rng(seed + 1_000)
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    return make_images(labels, seed), labels


def make_mnist(n_train: int, n_test: int, seed: int = 0):
    from stages.lib.sources import Mnist

    train_x, train_y = make_split(n_train, seed)
    test_x, test_y = make_split(n_test, seed + 1)
    return Mnist(train_x, train_y, test_x, test_y)


def tiny_data(n_train: int = 256, n_val: int = 64):
    """((train images (n, 784), labels), (val images, labels)) of the synthetic classes, for training.run."""
    train_x, train_y = make_split(n_train, seed=0)
    val_x, val_y = make_split(n_val, seed=5)
    return (train_x.reshape(-1, 784), train_y), (val_x.reshape(-1, 784), val_y)


def make_trainer(p, train_data, batch_size: int | None = None, strategy=None):
    """A training.Trainer for params `p` on (images, labels), under `strategy` when given."""
    import contextlib

    from stages.lib import training
    from stages.lib.model import MLP

    train_x, train_y = train_data
    batch_size = batch_size or p.train.batch_size
    dataset = training.batches(train_x, train_y, batch_size, p.train.seed)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = MLP(p.model.hidden_units, seed=p.train.seed)
        extra = () if strategy is None else (strategy,)
        return training.Trainer(model, p.train, batch_size, len(train_y) // batch_size, dataset, *extra)


def shuffled(data, seed: int = 1):
    """`data` (a sources.Mnist) with the train and the test split each in another order."""
    from stages.lib.sources import Mnist

    rng = np.random.default_rng(seed)
    p, q = rng.permutation(len(data.train_labels)), rng.permutation(len(data.test_labels))
    return Mnist(data.train_images[p], data.train_labels[p], data.test_images[q], data.test_labels[q])


def drawing(size=(360, 240), paper=255, ink=0, width=14, scale=1.0, speck=False):
    """A hand-drawn 4 (a PIL image), off-centre on a wide canvas: dark ink on white paper unless told otherwise."""
    from PIL import Image, ImageDraw

    s = scale
    image = Image.new("L", (round(size[0] * s), round(size[1] * s)), paper)
    draw = ImageDraw.Draw(image)
    draw.line([(150 * s, 40 * s), (110 * s, 150 * s), (200 * s, 150 * s)], fill=ink, width=width, joint="curve")
    draw.line([(180 * s, 90 * s), (180 * s, 210 * s)], fill=ink, width=width)
    if speck:  # a speck of dust far from the digit
        draw.rectangle([330 * s, 10 * s, 330 * s + 3, 10 * s + 3], fill=ink)
    return image


# --- IDX files -----------------------------------------------------------------------------------

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, images: bool) -> bytes:
    """The IDX encoding: big-endian magic (0x803 images, 0x801 labels), dimensions, then uint8 data."""
    array = np.asarray(array)
    magic = 0x00000803 if images else 0x00000801
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def idx_files(data) -> dict[str, bytes]:
    """{key: IDX bytes} of the four arrays of `data` (a sources.Mnist), keys as in IDX_NAMES."""
    return {key: idx_bytes(getattr(data, key), images=key.endswith("images")) for key in IDX_NAMES}


def write_idx_files(folder, files: dict[str, bytes], compress=False) -> Path:
    """Write {key: bytes} under the standard names; `compress` True (all .gz), False (none) or a set of keys."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, payload in files.items():
        gz = compress is True or (isinstance(compress, set) and key in compress)
        name = IDX_NAMES[key] + (".gz" if gz else "")
        (folder / name).write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return folder


def write_idx(folder, data, compress=False) -> Path:
    """Write the four standard IDX files of `data` (a sources.Mnist) into `folder`: plain, .gz, or a mix
    (`compress` a set of keys)."""
    return write_idx_files(folder, idx_files(data), compress)


# --- files and dvc.yaml --------------------------------------------------------------------------


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_bytes(root, rel: str = ".") -> dict[str, bytes]:
    """{path relative to root: bytes} of the file root/rel, or of every file under the folder root/rel."""
    root = Path(root)
    top = root / rel
    if top.is_file():
        return {rel: top.read_bytes()}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def leftovers(root) -> list[str]:
    """What atomic writes leave only when killed: .tmp-* and .old-* entries under root (relative paths)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.name.startswith((".tmp-", ".old-")))


def declared_paths(entries) -> set[str]:
    """Paths of a dvc.yaml deps/outs/metrics list, whose entries are strings or {path: options}."""
    paths = set()
    for entry in entries or []:
        paths.update([entry] if isinstance(entry, str) else entry)
    return paths


def lock_outs(repo) -> dict[str, str]:
    """{path: md5} of every stage output recorded in repo/dvc.lock."""
    lock = yaml.safe_load((Path(repo) / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def names_key(message: str, key: str) -> bool:
    """The full dotted params key appears in `message` as a whole (not as part of a longer key)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


# --- commands, and tiny copies of this repo --------------------------------------------------------

DVC_TIMEOUT = 600  # seconds for one dvc command on tiny data, on a busy machine


def run(argv, cwd, timeout=DVC_TIMEOUT, check=True) -> subprocess.CompletedProcess:
    """Run a command (dvc, git, python -m stages...) with the test's python first on PATH; check its exit code."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONDONTWRITEBYTECODE": "1"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert done.returncode == 0, (
            f"{' '.join(map(str, argv))} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done


def git(repo, *args) -> subprocess.CompletedProcess:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    return run(["git", *identity, "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args], repo, 120)


def project_files() -> list[str]:
    """The repo's files as a fresh clone (plus uncommitted work) has them: tracked, and untracked but not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(path for path in listed.split("\0") if path and (REPO / path).is_file())


def tiny_repo(repo, mnist, message: str, **sections) -> None:
    """A git repo at `repo` with the project's pipeline files (not its tests nor dvc.lock), `mnist` as
    gzipped IDX files in data/raw, and params.yaml switched to them (idx source, verify off), each
    `sections` mapping (data=..., model=..., train=...) updating that params section. Committed."""
    repo = Path(repo)
    files = project_files()
    assert ".dvc/config" in files and "dvc.yaml" in files and "params.yaml" in files
    for path in files:
        if path.startswith("tests/") or path == "dvc.lock":
            continue  # the tests are not part of the pipeline; a stale lock would only be rewritten
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / path, repo / path)
    raw = base_params()
    raw["data"].update(source="idx", idx_dir="data/raw", verify=False)
    for section, values in sections.items():
        raw[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_idx(repo / "data" / "raw", mnist, compress=True)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    assert git(repo, "status", "--porcelain").stdout == ""  # data/raw is ignored, nothing else left out


# --- the prepare stage -----------------------------------------------------------------------------


def data_params_file(path, **data_overrides) -> Path:
    """A params file at `path`: base_params() with the given data.* keys changed."""
    raw = base_params()
    raw["data"].update(data_overrides)
    Path(path).write_text(yaml.safe_dump(raw, sort_keys=False))
    return Path(path)


def prepare_argv(params, out) -> list[str]:
    """`python -m stages.prepare` writing only next to `out` (its samples picture too)."""
    out = Path(out)
    samples = out.parent / f"{out.name}-samples.png"
    return [
        sys.executable,
        "-m",
        "stages.prepare",
        "--params",
        str(params),
        "--out",
        str(out),
        "--samples",
        str(samples),
    ]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def params_dict() -> dict:
    return base_params()


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, imported once (quietly) for the modules that need it, with the CPU split into two
    logical devices (before any op runs, the only time that is possible) for the mirrored-strategy tests."""
    from stages.lib import cli

    tf = cli.import_tensorflow()
    from stages.lib import distribution

    distribution.split_cpu(2)
    return tf


@pytest.fixture
def deterministic_ops(tf):
    """Op determinism on for one test, as train.py does, then off again (TF has no public switch-off)."""
    from tensorflow.python.framework import config as tf_config

    tf.config.experimental.enable_op_determinism()
    yield
    tf_config.disable_op_determinism()


@pytest.fixture(scope="session")
def full_mnist_idx(tmp_path_factory):
    """The real MNIST (from the bundled copy) as IDX folders: plain, gzipped, and shuffled (slow tests)."""
    from stages.lib import sources

    data = sources.load_bundled()
    root = tmp_path_factory.mktemp("mnist-idx")
    return data, {
        "plain": write_idx(root / "plain", data),
        "gz": write_idx(root / "gz", data, compress=True),
        "shuffled": write_idx(root / "shuffled", shuffled(data, seed=2024)),
    }
