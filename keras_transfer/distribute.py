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

from keras_transfer.compat import patch_multi_worker_fit
from keras_transfer.config import MIXED_PRECISION, STRATEGIES

logger = logging.getLogger(__name__)


def get_strategy(name="auto", peer_timeout=None):
    """Returns a `tf.distribute.Strategy`.

    Args:
        name: `"auto"` (a TPU when one is attached, else multi-worker when `TF_CONFIG` lists more than one
            worker, else mirrored over several GPUs, else the default strategy), `"default"`, `"one_device"`
            (the first GPU, else the CPU), `"mirrored"` (every local GPU; without GPUs, every logical CPU
            device), `"multi_worker"` (reads `TF_CONFIG`) or `"tpu"`.
        peer_timeout: seconds a multi-worker collective (a step's gradient sum) may wait for another worker before
            it fails (None: no limit, TensorFlow's default).

    Returns:
        The strategy.

    Raises:
        ValueError: for an unknown name, or `"tpu"` when no TPU can be found.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy {name!r}. Expected one of: {', '.join(STRATEGIES)}. Received: name={name!r}"
        )
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
        _workers_in_tf_config()  # a TF_CONFIG that does not parse is named before TensorFlow reads it
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=peer_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        patch_multi_worker_fit()  # Keras 3 fit under several workers (keras-team/keras#20585), see compat.py
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
    if not isinstance(config, dict) or not isinstance(config.get("cluster", {}), dict):
        raise ValueError(
            'TF_CONFIG must be a JSON object like {"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
            f'"worker", "index": 0}}}}. Received: TF_CONFIG={os.environ["TF_CONFIG"]!r}'
        )
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def worker_rank():
    """`(workers, rank)` of this process in `TF_CONFIG`'s cluster (the chief first, then the workers, as
    MultiWorkerMirroredStrategy numbers them); `(1, 0)` without a cluster of several."""
    workers = _workers_in_tf_config()
    if workers < 2:
        return 1, 0
    config = json.loads(os.environ["TF_CONFIG"])
    task = config.get("task", {})
    chiefs = len(config["cluster"].get("chief", []))
    return workers, int(task.get("index", 0)) + (chiefs if task.get("type") == "worker" else 0)


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
        raise ValueError(
            f"Unknown mixed precision mode {mode!r}. Expected one of: {', '.join(MIXED_PRECISION)}. "
            f"Received: mode={mode!r}"
        )
    policy = {"off": "float32", "auto": "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"}
    name = policy.get(mode, mode)
    keras.mixed_precision.set_global_policy(name)
    return name
