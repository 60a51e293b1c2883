"""Every use of private Keras and TensorFlow, in one place.

Checked with Keras 3.15.1 on TensorFlow 2.21 (`KERAS_RANGE` is the range setup.cfg allows). Each entry of
`TARGETS` names a private object this module reads or replaces and the SHA-256 prefix of its source as checked.
On another version the source is compared before use: where it changed, the call fails with a message naming
the object and the version checked, instead of patching code it no longer understands (a wrong result).
`tests/test_compat.py` pins every target.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect

import keras
import tensorflow as tf

CHECKED_WITH = "3.15.1"
TARGETS = {  # "module:attribute.path" -> SHA-256 prefix of its source under CHECKED_WITH
    "keras.src.layers.layer:Layer._flatten_layers": "662dcf281bc32c53",
    "keras.src.saving.serialization_lib:in_safe_mode": "c617d342b83ef354",
    "keras.src.backend.tensorflow.trainer:TensorFlowTrainer._maybe_symbolic_build": "92a504f5eba9b29f",
    "keras.src.backend.tensorflow.trainer:reduce_per_replica": "2e7d54b1e6edc29a",
    "keras.src.backend.tensorflow.trainer:_collective_all_reduce_multi_worker": "0302369d850e6694",
    "keras.src.backend.tensorflow.trainer:_is_per_replica_instance": "19a5613a75de7a78",
    "keras.src.layers.layer:Layer._track_variable": "2f03e5ffbfe1d662",
    "keras.src.layers.layer:Layer._build_at_init": "dc6e5ba48ae65d7c",
    "tensorflow.python.trackable.base:Trackable._trackable_children": "215ee46a59b2d9e4",
    "keras.src.optimizers.base_optimizer:BaseOptimizer._get_variable_index": "c4cd541aea39e6e2",
    "tensorflow.python.eager.context:Context.wait_at_barrier": "9cf6c97cdc4b5b7e",
    "keras.src.trainers.trainer:Trainer._compute_loss": "13153b89c765b0d6",
    "keras.src.losses.loss:unscale_loss_for_distribution": "3903c7ed7f69c5ac",
}
# The Keras versions setup.cfg allows: the one these fingerprints were taken on and its patch releases, where
# `target` still compares each source before use. tests/test_compat.py checks setup.cfg says the same.
KERAS_RANGE = ">=3.15.1,<3.16"
_checked = set()


def target(name):
    """The private Keras object `name` (a key of `TARGETS`), after checking its source is the one checked.

    Raises:
        RuntimeError: when this Keras lacks the object or its source changed since `CHECKED_WITH`.
    """
    module_name, _, path = name.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise _changed(name, f"it no longer exists ({e})") from None
    if name not in _checked:
        if fingerprint(obj) != TARGETS[name]:
            raise _changed(name, "its source changed")
        _checked.add(name)
    return obj


def fingerprint(obj):
    """SHA-256 prefix of an object's source (`"unavailable"` when Python cannot read it)."""
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return "unavailable"
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _changed(name, why):
    return RuntimeError(
        f"keras_transfer uses the private Keras object {name.replace(':', '.')}, checked with Keras {CHECKED_WITH}; "
        f"in the installed Keras {keras.__version__} {why}, so keras_transfer will not guess. Install "
        f"keras=={CHECKED_WITH}, or report this with both versions."
    )


def track_variable(layer, variable):
    """Makes `layer` own `variable` (a Keras variable made outside `build`), as `add_weight` would."""
    target("keras.src.layers.layer:Layer._track_variable")(layer, variable)


def mark_built(layer):
    """Marks a layer whose variables were all made in `__init__` as built (`Layer._build_at_init`)."""
    target("keras.src.layers.layer:Layer._build_at_init")(layer)


def trackable_children(node):
    """The objects a loaded SavedModel object holds (TensorFlow's `_trackable_children`), or {} for others."""
    if not hasattr(node, "_trackable_children"):
        return {}
    target("tensorflow.python.trackable.base:Trackable._trackable_children")
    return node._trackable_children()


def flatten_layers(layer):
    """Every layer nested inside `layer` (sub-models and layers held by layers), without `layer` itself."""
    return list(target("keras.src.layers.layer:Layer._flatten_layers")(layer, include_self=False))


def child_layers(layer):
    """The layers `layer` holds directly (a transformer encoder's blocks), without `layer` itself."""
    return list(target("keras.src.layers.layer:Layer._flatten_layers")(layer, include_self=False, recursive=False))


def scale_updates(optimizer, scales):
    """Makes `optimizer` scale each variable's update by `scales[variable.path]` (1 for a path not there), by
    scaling the learning rate its `update_step` applies (the documented method optimizers implement; every Keras
    optimizer's update is proportional to it). The variable `update_step` receives is the backend's (a
    `tf.Variable`, per replica under a strategy); `BaseOptimizer._get_variable_index` maps it to the Keras variable
    whose path it is. AdamW's decoupled weight decay is applied outside `update_step` and is not scaled."""
    index = target("keras.src.optimizers.base_optimizer:BaseOptimizer._get_variable_index")
    update_step = optimizer.update_step

    def scaled_update_step(gradient, variable, learning_rate):
        path = optimizer._trainable_variables[index(optimizer, variable)].path
        return update_step(gradient, variable, learning_rate * scales.get(path, 1.0))

    optimizer.update_step = scaled_update_step
    return optimizer


def wait_at_barrier(name, timeout):
    """Blocks until every task of the multi-worker cluster reaches the coordination service's barrier `name`
    (TensorFlow's `Context.wait_at_barrier`); fails after `timeout` seconds, or at once when a task stopped."""
    from tensorflow.python.eager import context

    target("tensorflow.python.eager.context:Context.wait_at_barrier")
    context.context().wait_at_barrier(name, int(timeout * 1000))


def compute_loss(model, x, y, y_pred, sample_weight):
    """The compiled loss of `model` on one replica's batch, in training, as its own `train_step` computes it
    (`Trainer._compute_loss`: the loss scaled for the strategy's replicas, the model's own losses added), for a
    `train_step` of ours (`semi_supervised.fixmatch_step`)."""
    return target("keras.src.trainers.trainer:Trainer._compute_loss")(
        model, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )


def track_loss(model, loss, batch_size):
    """Adds one batch's `compute_loss` to the `loss` that `fit` reports (the compiled model's loss tracker, with
    the replica scaling undone), as its own `train_step` does."""
    unscale = target("keras.src.losses.loss:unscale_loss_for_distribution")
    model._loss_tracker.update_state(unscale(loss), sample_weight=batch_size)


def in_safe_mode():
    """Whether Keras is loading a model in safe mode (`safe_mode` of `load_model`, or the global setting)."""
    return target("keras.src.saving.serialization_lib:in_safe_mode")()


def patch_multi_worker_fit():
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
    target("keras.src.backend.tensorflow.trainer:TensorFlowTrainer._maybe_symbolic_build")
    reduce_per_replica = target("keras.src.backend.tensorflow.trainer:reduce_per_replica")
    is_multi_worker = target("keras.src.backend.tensorflow.trainer:_collective_all_reduce_multi_worker")
    is_per_replica = target("keras.src.backend.tensorflow.trainer:_is_per_replica_instance")

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: (
                        self.distribute_strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(batches),
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_across_workers(values, strategy, reduction):
        if is_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None) if is_per_replica(v) else v, values
            )
        return reduce_per_replica(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_across_workers
    trainer._keras_transfer_multi_worker_fix = True
