"""What `compile` gets, decided by the head and the labels: the loss (the head decides it, as keras-hub's
`ImageClassifier.compile(loss="auto")` does), metrics, the label transform, class weights, the optimizer and the
learning-rate schedule."""

from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)


def is_class_weight(value):
    if value is None or value == "balanced":
        return True
    return isinstance(value, dict) and all(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0 and is_number(v) and v > 0
        for k, v in value.items()
    )


def class_weights(train, num_classes, class_weight, multi_label=False):
    """`fine_tune`'s `class_weight` as a dict of class id -> weight (several labels per image: of each label's
    positives), or None. `"balanced"` counts the labels of `train` in one pass (the images are read once too).

    Raises:
        ValueError: for a class id outside the model's outputs, or a class without training images.
    """
    if class_weight is None:
        return None
    if class_weight != "balanced":
        unknown = sorted(k for k in class_weight if k >= max(num_classes, 2))
        if unknown:
            raise ValueError(
                f"class_weight names class ids the model does not predict (0..{max(num_classes, 2) - 1}): "
                f"{unknown}. Received: class_weight={class_weight!r}"
            )
        return {int(k): float(v) for k, v in class_weight.items()}
    labels = np.concatenate([np.asarray(y, np.float64) for y in train.map(lambda x, y: y)])
    if multi_label:
        positives = labels.sum(axis=0)
        weights = np.where(positives > 0, (len(labels) - positives) / np.maximum(positives, 1), 1.0)
    else:
        counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=max(num_classes, 2))
        missing = np.flatnonzero(counts == 0).tolist()
        if missing:
            raise ValueError(
                f"class_weight='balanced' needs training images of every class; class ids {missing} have none. "
                "Pass a dict of weights instead."
            )
        weights = len(labels) / (len(counts) * counts)
    logger.info("Class weights (balanced): %s", ", ".join(f"{i}: {w:.3g}" for i, w in enumerate(weights)))
    return {i: float(w) for i, w in enumerate(weights)}


def check_labels(view, train):
    """Checks that `train`'s labels fit the model's head (`view`: its `models.model_view`; the head decides the
    label kind: one sigmoid per label for several labels per image, else one label per image); raises when they do
    not, saying which head to use."""
    spec = train.element_spec[1] if isinstance(train.element_spec, tuple) else None
    units, activation = _head(view)
    multi = spec is not None and spec.shape.rank == 2 and spec.dtype.is_floating and spec.shape[-1] not in (None, 1)
    if multi and spec.shape[-1] != units:
        raise ValueError(
            f"The labels have {spec.shape[-1]} columns (several labels per image) but the model has {units} outputs: "
            f"build it with num_classes={spec.shape[-1]}."
        )
    if multi and activation != "sigmoid":
        raise ValueError(
            "The training labels hold several labels per image (0/1 rows) but the model's head is softmax, which "
            "predicts one label per image: build it with activation='sigmoid'."
        )
    if not multi and activation == "sigmoid" and units > 1 and spec is not None and spec.dtype.is_integer:
        raise ValueError(
            f"The model has {units} sigmoid outputs (several labels per image) but the training labels are one "
            "integer per image: build it with activation='softmax', or load several labels per image "
            "(load_dataset(Table(..., label_delimiter=...)) or label_columns=...)."
        )


# With label smoothing the loss is measured against smoothed labels, whose lowest value rewards an unsure model:
# early stopping and the best checkpoint watch the plain cross-entropy instead, a metric under this name.
UNSMOOTHED = "cross_entropy"


def watched(label_smoothing, validation=True):
    """The history key that early stopping and the best checkpoint watch: the validation loss, or the plain
    cross-entropy (`UNSMOOTHED`) when `label_smoothing` changes the loss; its training form without `validation`."""
    name = UNSMOOTHED if label_smoothing else "loss"
    return f"val_{name}" if validation else name


def objective(view, label_smoothing=0.0, class_weight=None):
    """The loss that fits the output layer (`view`: the model's `models.model_view`; the head decides the loss, as
    keras-hub's `compile(loss="auto")`), its metrics, and the label transform it needs. With `label_smoothing` the
    metrics include the plain cross-entropy (`UNSMOOTHED`), which `watched` names."""
    loss, metrics, prepare = _objective(view, label_smoothing, class_weight)
    if label_smoothing:
        plain = (
            keras.metrics.BinaryCrossentropy
            if isinstance(loss, (keras.losses.BinaryCrossentropy, PositiveWeightedCrossentropy))
            else keras.metrics.CategoricalCrossentropy
        )
        metrics = [*metrics, plain(name=UNSMOOTHED)]
    return loss, metrics, prepare


def _objective(view, label_smoothing, class_weight):
    units, activation = _head(view)
    if view.multi_label:  # several labels per image: accuracy over (image, label) pairs says little
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        if class_weight:
            weights = [class_weight.get(j, 1.0) for j in range(units)]
            loss = PositiveWeightedCrossentropy(weights, label_smoothing=label_smoothing)
        metrics = [
            InformativeAUC(multi_label=True, num_labels=units, name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ]
        return loss, metrics, lambda ds: ds
    if activation == "sigmoid":
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        return loss, [keras.metrics.BinaryAccuracy(name="accuracy")], _as_float_labels
    if label_smoothing:
        # Sparse cross-entropy has no label smoothing in Keras 3: smooth one-hot labels instead.
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        one_hot = lambda ds: ds.map(lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), units)))
        return loss, [keras.metrics.CategoricalAccuracy(name="accuracy")], one_hot
    loss = keras.losses.SparseCategoricalCrossentropy()
    return loss, [keras.metrics.SparseCategoricalAccuracy(name="accuracy")], lambda ds: ds


@keras.saving.register_keras_serializable(package="keras_transfer")
class InformativeAUC(keras.metrics.AUC):
    """Keras's multi-label AUC averaged over the labels that have both positive and negative images so far: a label
    on every image (or on none) has no AUC, and Keras's mean counts it as 0."""

    def result(self):
        positives = self.true_positives[0] + self.false_negatives[0]  # at the lowest threshold every image counts
        negatives = self.false_positives[0] + self.true_negatives[0]
        informative = keras.ops.cast(keras.ops.logical_and(positives > 0, negatives > 0), self.dtype)
        object.__setattr__(self, "label_weights", informative)
        try:
            return super().result()
        finally:
            object.__setattr__(self, "label_weights", None)


@keras.saving.register_keras_serializable(package="keras_transfer")
class PositiveWeightedCrossentropy(keras.losses.Loss):
    """Binary cross-entropy over several labels per image with each label's positive term weighted
    (`pos_weight` of `tf.nn.weighted_cross_entropy_with_logits`, on probabilities): `class_weight` of a
    multi-label `fine_tune`."""

    def __init__(self, positive_weights, label_smoothing=0.0, name="positive_weighted_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weights, self.label_smoothing = [float(w) for w in positive_weights], float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype) * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        p = tf.clip_by_value(y_pred, keras.backend.epsilon(), 1.0 - keras.backend.epsilon())
        weights = tf.constant(self.positive_weights, y_pred.dtype)
        return -tf.reduce_mean(weights * y_true * tf.math.log(p) + (1.0 - y_true) * tf.math.log(1.0 - p), axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "positive_weights": self.positive_weights,
            "label_smoothing": self.label_smoothing,
        }


def _as_float_labels(ds):
    return ds.map(lambda x, y: (x, tf.cast(tf.reshape(y, (tf.shape(y)[0], -1)), tf.float32)))


def make_optimizer(name, learning_rate):
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    return {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "rmsprop": keras.optimizers.RMSprop}[name](
        learning_rate
    )


def warmup_cosine(learning_rate, total_steps):
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return learning_rate
    warmup = max(1, total_steps // 10)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, total_steps - warmup), warmup_target=float(learning_rate), warmup_steps=warmup
    )


def _head(view):
    """`(units, activation)` of the model's `predictions` layer."""
    if view.output is None:
        raise ValueError(
            f"Model {view.model_name!r} has no layer named 'predictions'; build it with keras_transfer.build_model. "
            f"Received: model={view.model_name!r}"
        )
    return view.output.units, view.output.get_config()["activation"]


def is_number(value):
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value)
