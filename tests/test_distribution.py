"""tf.distribute with the custom loop: two mirrored CPU replicas match one device on the same global
batch and stay identical to each other; without the gradient all-reduce they would drift apart;
two worker processes on localhost (TF_CONFIG, RING) train in step."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_DISTRIBUTED, make_params, make_trainer, tiny_data

from stages.lib import cli

pytestmark = pytest.mark.usefixtures("tf")

ATOL = 1e-5  # summing two half-batch gradients instead of one batch's changes the last bits


def _mirrored():
    from stages.lib import distribution

    strategy = distribution.make_strategy("mirrored", 2)
    assert strategy.num_replicas_in_sync == 2
    return strategy


def _replica_values(variable) -> list[np.ndarray]:
    return [v.numpy() for v in variable.values]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_mirrored_replicas_match_one_device(jit_compile):
    """Same global batches: two replicas (half a batch each) end on one device's weights, and every
    variable, optimizer state included, is identical on both replicas."""
    import tensorflow as tf

    p = make_params(
        **{**TINY_DISTRIBUTED, "train__jit_compile": jit_compile, "train__label_smoothing": 0.1, "train__max_norm": 1.0}
    )
    one = make_trainer(p, tiny_data()[0], strategy=tf.distribute.get_strategy())
    two = make_trainer(p, tiny_data()[0], strategy=_mirrored())
    losses_one, correct_one = one.steps(tf.constant(6, tf.int32))
    losses_two, correct_two = two.steps(tf.constant(6, tf.int32))
    np.testing.assert_allclose(losses_two.numpy(), losses_one.numpy(), rtol=0, atol=ATOL)
    assert abs(int(correct_two) - int(correct_one)) <= 1
    assert [int(c) for c in _replica_values(two.optimizer.iterations)] == [6, 6]
    for a, b in zip(one.model.trainable_variables, two.model.trainable_variables):
        first, second = _replica_values(b)
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(first, a.numpy(), rtol=0, atol=ATOL)
    for slot in two.optimizer.m + two.optimizer.v:
        np.testing.assert_array_equal(*_replica_values(slot))


def test_without_the_all_reduce_replicas_drift_apart(monkeypatch):
    """The trap the all-reduce avoids: in replica context our optimizer's assignments reach only the
    local copy, so replicas that each apply their own gradients silently diverge."""
    import tensorflow as tf

    from stages.lib import training

    original = training.Trainer._replica_step

    def no_all_reduce(self, images, labels):
        context = tf.distribute.get_replica_context()
        monkeypatch.setattr(context, "all_reduce", lambda op, value: value)
        return original(self, images, labels)

    monkeypatch.setattr(training.Trainer, "_replica_step", no_all_reduce)
    trainer = make_trainer(
        make_params(**{**TINY_DISTRIBUTED, "train__jit_compile": False}), tiny_data()[0], strategy=_mirrored()
    )
    trainer.steps(tf.constant(3, tf.int32))
    first, second = _replica_values(trainer.model.weights[0])
    assert not np.allclose(first, second)


def test_mirrored_run_learns_like_the_default():
    import tensorflow as tf

    from stages.lib import training

    p = make_params(**{**TINY_DISTRIBUTED, "train__jit_compile": False})
    tf.keras.utils.set_random_seed(p.train.seed)
    default = training.run(*tiny_data(), p.model, p.train)
    tf.keras.utils.set_random_seed(p.train.seed)
    mirrored = training.run(*tiny_data(), p.model, p.train, strategy=_mirrored())
    np.testing.assert_allclose(
        [r["loss"] for r in mirrored.history], [r["loss"] for r in default.history], rtol=0, atol=ATOL
    )
    assert mirrored.best_val_accuracy == default.best_val_accuracy
    for a, b in zip(default.model.trainable_variables, mirrored.model.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=ATOL)


def test_a_batch_that_does_not_split_over_the_replicas_is_refused():
    p = make_params(**{**TINY_DISTRIBUTED, "train__batch_size": 33})
    with pytest.raises(cli.UserError, match="train.batch_size = 33 does not split evenly over 2 replicas"):
        make_trainer(p, tiny_data()[0], strategy=_mirrored())


def test_multi_worker_needs_tf_config(monkeypatch):
    from stages.lib import distribution

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(cli.UserError, match="TF_CONFIG is not set"):
        distribution.make_strategy("multi_worker", 2)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(cli.UserError, match="TF_CONFIG is not valid JSON"):
        distribution.make_strategy("multi_worker", 2)


def test_describe_names_strategy_and_replicas():
    import tensorflow as tf

    from stages.lib import distribution

    assert distribution.describe("default", tf.distribute.get_strategy()) == "strategy default, 1 replica"
    assert distribution.describe("mirrored", _mirrored()) == "strategy mirrored, 2 replicas"
    assert distribution.is_chief(tf.distribute.get_strategy())


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


WORKER_TIMEOUT = 240  # seconds; the run itself takes ~20 s


def _run_workers(argv_of_worker, env: dict, cwd=None) -> list[str]:
    """Start two processes forming a TF_CONFIG cluster on 127.0.0.1 (`argv_of_worker(i)` each), wait
    for both within WORKER_TIMEOUT, check they succeeded, and return their outputs."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = [
        subprocess.Popen(
            argv_of_worker(i),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
        )
        for i in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=WORKER_TIMEOUT)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    for i, (w, output) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0, f"worker {i} exited {w.returncode}:\n{output[-3000:]}"
    return outputs


def test_two_workers_on_localhost_train_in_step(tmp_path):
    """Two processes, a TF_CONFIG cluster on 127.0.0.1, RING all-reduce: both finish, worker 0 is the
    chief, both hold the same weights, and those are one device's weights on the same global batches."""
    from stages.lib import training

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    child = str(REPO / "tests" / "multi_worker_child.py")
    _run_workers(lambda i: [sys.executable, child, str(tmp_path / f"worker{i}.npz")], env)
    first, second = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    assert bool(first["chief"]) and not bool(second["chief"])
    assert int(first["replicas"]) == int(second["replicas"]) == 2
    np.testing.assert_array_equal(first["losses"], second["losses"])

    import tensorflow as tf

    p = make_params(**TINY_DISTRIBUTED)
    tf.keras.utils.set_random_seed(p.train.seed)  # as the workers (and stages/train.py) do
    alone = training.run(*tiny_data(), p.model, p.train)
    for i, v in enumerate(alone.model.trainable_variables):
        np.testing.assert_array_equal(first[f"w{i}"], second[f"w{i}"])
        np.testing.assert_allclose(first[f"w{i}"], v.numpy(), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_train_stage_as_two_workers_writes_only_the_chiefs_outputs(tmp_path):
    """`python -m stages.train` with train.strategy multi_worker in two processes: both log the
    strategy, the chief writes the checkpoint and reports, the other worker's outputs go to a
    temporary folder that is gone when it exits."""
    import yaml
    from conftest import base_params, make_mnist, write_idx

    write_idx(tmp_path / "raw", make_mnist(600, 100, seed=3))
    raw = base_params()
    raw["data"].update(source="idx", idx_dir=str(tmp_path / "raw"), verify=False, val_size=100, shard_size=500)
    raw["model"]["hidden_units"] = [16]
    raw["train"].update(epochs=2, batch_size=32, strategy="multi_worker")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(tmp_path / "scratch")}
    (tmp_path / "scratch").mkdir()
    prepared = tmp_path / "prepared"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.prepare",
            "--params",
            str(params_file),
            "--out",
            str(prepared),
            "--samples",
            str(tmp_path / "samples.png"),
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=WORKER_TIMEOUT,
    )

    outs = [tmp_path / f"worker{i}" for i in range(2)]
    logs = _run_workers(
        lambda i: [
            sys.executable,
            "-m",
            "stages.train",
            "--params",
            str(params_file),
            "--data",
            str(prepared),
            "--checkpoint",
            str(outs[i] / "checkpoint"),
            "--live",
            str(outs[i] / "live"),
            "--curves",
            str(outs[i] / "curves.png"),
        ],
        env,
        cwd=REPO,
    )
    for log in logs:
        assert "strategy multi_worker, 2 replicas" in log, log
    chief, other = outs
    assert (chief / "checkpoint" / "model.json").is_file() and (chief / "curves.png").is_file()
    assert (chief / "live" / "metrics.json").is_file()
    assert not other.exists()
    assert list((tmp_path / "scratch").iterdir()) == []  # the other worker's temporary outputs are gone
