"""`get_strategy`: one code path from a laptop CPU to several GPUs, machines or a TPU, and mixed precision.

Build and compile inside `strategy.scope()`; the global batch is the per-replica batch times
`strategy.num_replicas_in_sync`.
"""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION = ("off", "auto", "mixed_float16", "mixed_bfloat16")


def get_strategy(name="auto"):
    """Returns a `tf.distribute.Strategy`.

    Args:
        name: `"auto"` (a TPU when one is attached, else multi-worker when `TF_CONFIG` lists more than one
            worker, else mirrored over several GPUs, else the default strategy), `"default"`, `"one_device"`
            (the first GPU, else the CPU), `"mirrored"` (every local GPU; without GPUs, every logical CPU
            device), `"multi_worker"` (reads `TF_CONFIG`) or `"tpu"`.

    Returns:
        The strategy.

    Raises:
        ValueError: for an unknown name, or `"tpu"` when no TPU can be found.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}. Expected one of: {', '.join(STRATEGIES)}. Received: name={name!r}")
    if name == "auto":
        name = _auto()
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        strategy = tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    elif name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    elif name == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _fix_keras_multi_worker_fit()
    else:
        strategy = _tpu_strategy()
    logger.debug("Strategy %s with %d replicas", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def _auto():
    if _tpu_present():
        return "tpu"
    if _workers_in_tf_config() > 1:
        return "multi_worker"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def _workers_in_tf_config():
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}. Received: TF_CONFIG={os.environ['TF_CONFIG']!r}") from e
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tpu_present():
    # Only look where a TPU announces itself: asking the resolver off Google Cloud waits on a metadata server.
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR") or os.path.exists("/dev/accel0"))


def _tpu_strategy():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ValueError(f"No TPU found ({e}). Use strategy 'auto', 'default', 'mirrored' or 'one_device'.") from e
    return tf.distribute.TPUStrategy(resolver)


def set_mixed_precision(mode="auto"):
    """Sets Keras's global dtype policy and returns its name.

    Args:
        mode: `"off"` (float32), `"auto"` (`mixed_float16` on GPU, `mixed_bfloat16` on CPU or TPU),
            `"mixed_float16"` or `"mixed_bfloat16"`. Models from `build_model` keep float32 outputs.

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in MIXED_PRECISION:
        raise ValueError(f"Unknown mixed precision mode {mode!r}. Expected one of: {', '.join(MIXED_PRECISION)}. "
                         f"Received: mode={mode!r}")  # fmt: skip
    policy = {"off": "float32", "auto": "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"}
    name = policy.get(mode, mode)
    keras.mixed_precision.set_global_policy(name)
    return name


def _fix_keras_multi_worker_fit():
    """Makes Keras 3's `model.fit` work under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Two places in keras/src/backend/tensorflow/trainer.py break with several workers, both in how values
    spread over replicas are collapsed, not in the training step itself:
    - `_maybe_symbolic_build` averages the first distributed batch with `strategy.reduce(...)`, which fails
      eagerly with "Attempt to convert a value (PerReplica...)". A batch is only needed for its structure and
      shapes, so one replica's local batch does.
    - `reduce_per_replica` averages the per-replica (scalar) logs with `strategy.reduce("MEAN", v, axis=0)`;
      scalars have no axis 0. `axis=None` averages across replicas, as tf.keras did.
    Applied once, only when a multi-worker strategy is created; the tests train two workers on 127.0.0.1.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_keras_transfer_multi_worker_fix", False):
        return

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v,
                    next(batches),
                )  # fmt: skip
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    reduce_per_replica = trainer.reduce_per_replica

    def reduce_across_workers(values, strategy, reduction):
        if trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None) if trainer._is_per_replica_instance(v) else v, values
            )
        return reduce_per_replica(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_across_workers
    trainer._keras_transfer_multi_worker_fix = True
