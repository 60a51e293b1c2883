"""`get_strategy`: one code path from a laptop CPU to several GPUs, machines or a TPU, and mixed precision.

Build and compile inside `strategy.scope()`; the global batch is the per-replica batch times
`strategy.num_replicas_in_sync`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.compat import patch_multi_worker_fit, wait_at_barrier
from keras_transfer.config import MIXED_PRECISION, STRATEGIES

logger = logging.getLogger(__name__)


def get_strategy(name="auto", peer_timeout=None):
    """Returns a `tf.distribute.Strategy`.

    Args:
        name: `"auto"` (a TPU when one is attached, else multi-worker when `TF_CONFIG` lists more than one
            worker, else mirrored over several GPUs, else the default strategy), `"default"`, `"one_device"`
            (the first GPU, else the CPU), `"mirrored"` (every local GPU; without GPUs, every logical CPU
            device), `"multi_worker"` (reads `TF_CONFIG`) or `"tpu"`.
        peer_timeout: seconds a multi-worker strategy may wait for the other workers of `TF_CONFIG` to start, and
            a collective (a step's gradient sum) for another worker, before it fails (None: no limit, TensorFlow's
            default). A worker that does not come within it: one line names its address and the process is killed
            (exit status 137; the wait is inside TensorFlow, out of Python's reach).

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
        with _missing_workers_named(peer_timeout):  # the constructor waits for every worker to start
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
    config = _tf_config()
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tf_config():
    """`TF_CONFIG` read and checked (`{}` when unset): a cluster of lists of addresses, none repeated, and the task
    of this process one of them.

    Raises:
        ValueError: naming what is wrong and the value received.
    """
    text = os.environ.get("TF_CONFIG", "") or "{}"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}. Received: TF_CONFIG={text!r}") from e
    cluster = config.get("cluster", {}) if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
        raise ValueError(
            'TF_CONFIG must be a JSON object like {"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
            f'"worker", "index": 0}}}}. Received: TF_CONFIG={text!r}'
        )
    addresses = [a for job in cluster.values() for a in job]
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise ValueError(
            f"TF_CONFIG's cluster lists {', '.join(map(repr, repeated))} more than once: every task needs an address "
            f"of its own (another port on the same host). Received: TF_CONFIG={text!r}"
        )
    task = config.get("task", {})
    if len(addresses) > 1:
        kind, index = task.get("type"), task.get("index")
        if kind not in ("chief", "worker") or not isinstance(index, int) or not 0 <= index < len(cluster.get(kind, [])):
            jobs = ", ".join(f"{job} 0-{len(v) - 1}" for job, v in cluster.items() if v)
            raise ValueError(
                f"TF_CONFIG's task {json.dumps(task)} is not in its cluster ({jobs}): give each process the same "
                f'cluster and its own "task": {{"type": "worker", "index": i}}. Received: TF_CONFIG={text!r}'
            )
    return config


def cluster_addresses():
    """The tasks of `TF_CONFIG`'s cluster as `(name, address)`, in rank order (`worker_rank`): `("worker 1",
    "10.0.0.2:2222")`; a chief is named `"chief"`."""
    cluster = _tf_config().get("cluster", {})
    named = [("chief", a) for a in cluster.get("chief", [])]
    return named + [(f"worker {i}", a) for i, a in enumerate(cluster.get("worker", []))]


def worker_rank():
    """`(workers, rank)` of this process in `TF_CONFIG`'s cluster (the chief first, then the workers, as
    MultiWorkerMirroredStrategy numbers them); `(1, 0)` without a cluster of several."""
    workers = _workers_in_tf_config()
    if workers < 2:
        return 1, 0
    config = _tf_config()
    task = config.get("task", {})
    chiefs = len(config["cluster"].get("chief", []))
    return workers, int(task.get("index", 0)) + (chiefs if task.get("type") == "worker" else 0)


def is_multi_worker(strategy):
    """Whether `strategy` spans several workers (processes that each run the same program)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    jobs = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(jobs.get("worker", [])) + len(jobs.get("chief", [])) > 1


def from_chief(strategy, values):
    """The chief's `values` (arrays, or numbers) on every worker of a multi-worker `strategy`: a decision or a
    state only the chief read (the run folder is the chief's), made the same on all. Every worker must call it
    at the same point, with values of the same shapes and dtypes. Returns a list of numpy arrays."""
    values = [np.asarray(v) for v in values]
    sent = [tf.constant(v, tf.float64) for v in values]  # one dtype for one packed sum; exact for weights, counts

    @tf.function
    def first_replica(tensors):
        def step(tensors):
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group, 0)  # replica 0 is the chief's first device
            return context.all_reduce("sum", [tf.where(first, t, tf.zeros_like(t)) for t in tensors])

        return strategy.run(step, args=(tensors,))

    received = strategy.experimental_local_results(first_replica(sent))[0]
    return [np.asarray(r).astype(v.dtype) for r, v in zip(received, values)]


def sync_from_chief(strategy, variables):
    """Sets `variables` (Keras variables: a model's weights, an optimizer's state) to the chief's values on
    every worker (`from_chief`); nothing under another strategy."""
    if not is_multi_worker(strategy):
        return
    variables = list(variables)
    for variable, value in zip(variables, from_chief(strategy, [v.numpy() for v in variables])):
        variable.assign(value)


def finish_together(strategy, timeout=24 * 3600):
    """Under several workers, waits until every worker is here (the chief when its run is written): a worker that
    ended first would look to the others like one that crashed. Nothing under another strategy."""
    if is_multi_worker(strategy):
        wait_at_barrier("keras_transfer_finished", timeout)


@contextlib.contextmanager
def _missing_workers_named(timeout):
    """While the block waits for the cluster to form: after `timeout` seconds, one line naming the workers that
    do not answer on their address (or saying all answer but the cluster did not form), then the process is
    killed (exit status 137). TensorFlow waits holding Python's lock, so the watch is a small process of its own
    (it ends when this block does, or this process). No limit when `timeout` is None."""
    workers, rank = worker_rank()
    if timeout is None or workers < 2:
        yield
        return
    tasks = cluster_addresses()
    others = [f"{name}={address}" for name, address in tasks if name != tasks[rank][0]]
    heading = f"{tasks[rank][0]} ({tasks[rank][1]}) waited {timeout:g} s for the {workers} workers of TF_CONFIG"
    watch = subprocess.Popen(
        [sys.executable, "-c", _WATCH, str(timeout), str(os.getpid()), heading, *others], stdin=subprocess.PIPE
    )
    try:
        yield
    finally:
        watch.stdin.close()  # the watch ends without a word
        watch.wait()


_WATCH = """
import os, select, signal, socket, sys
timeout, parent, heading, others = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
if select.select([sys.stdin], [], [], timeout)[0]:
    sys.exit(0)
def answers(address):
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
        return True
    except (OSError, ValueError):
        return False
silent = [f"{name} at {address}" for name, _, address in (o.partition("=") for o in others) if not answers(address)]
what = (f"{', '.join(silent)} did not answer" if silent else "every worker answers on its address, but the cluster "
        "did not form (does every worker have the same cluster in TF_CONFIG and a task index of its own?)")
print(f"keras-transfer: error: {heading}: {what}. Start every worker with the same command and cluster, check the "
      "addresses and that the ports are open between the machines; --peer-timeout sets this wait.",
      file=sys.stderr, flush=True)
os.kill(parent, signal.SIGKILL)
"""


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
