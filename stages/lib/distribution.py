"""tf.distribute strategies for the custom loop (train.strategy):

- default:      one device, TensorFlow's default strategy (no replicas to keep in step);
- mirrored:     one replica per GPU; with no GPU, the CPU split into train.cpu_replicas logical devices,
                so the multi-replica path runs (and is tested) on any machine;
- multi_worker: one process per machine, the cluster read from TF_CONFIG, RING all-reduce.
"""

import json
import os

import tensorflow as tf

from stages.lib.cli import UserError

STRATEGIES = ("default", "mirrored", "multi_worker")


def split_cpu(replicas: int) -> None:
    """Expose the CPU as `replicas` logical devices. Possible only before TensorFlow runs its first op."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or []
    if len(current) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:
        raise UserError(
            f"cannot split the CPU into {replicas} logical devices: TensorFlow is already initialised "
            f"with {len(current) or 1}"
        ) from None


def make_strategy(name: str, cpu_replicas: int) -> tf.distribute.Strategy:
    """The strategy named by train.strategy. Call it before any other TensorFlow work."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        split_cpu(cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("train.strategy is multi_worker but TF_CONFIG is not set (see docs/scaling.md)")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as exc:
            raise UserError(f"TF_CONFIG is not valid JSON ({exc})") from None
        ring = tf.distribute.experimental.CommunicationImplementation.RING
        options = tf.distribute.experimental.CommunicationOptions(implementation=ring)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")


def distribute(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """The dataset split across replicas: each global batch becomes one slice per replica. Between
    workers the slices are taken by data (AutoShardPolicy.DATA): every worker reads the same seeded
    stream from its own copy of data/prepared, so no file-level split is needed."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True where outputs are written: every single-process strategy, and worker 0 (or 'chief') of a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def describe(name: str, strategy: tf.distribute.Strategy) -> str:
    replicas = strategy.num_replicas_in_sync
    return f"strategy {name}, {replicas} replica{'s' if replicas != 1 else ''}"
