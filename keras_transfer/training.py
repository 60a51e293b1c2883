"""`fine_tune`: the two-stage transfer-learning recipe.

Stage 1 trains the head on a frozen backbone. A frozen backbone maps each image to the same features every
epoch, so by default it runs ONCE over the data and the head trains on the cached features; the head layers are
shared with the full model, so nothing has to be copied back. Stage 2 applies an unfreezing policy, recompiles
with a lower learning rate (cosine decay with warmup) and continues with continuous epoch numbers.

With a `run_dir`, the run survives being killed: each stage keeps a `keras.callbacks.BackupAndRestore`
backup, the end of stage 1 is recorded, and rerunning the same call resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.policies import set_trainable

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
FEATURE_MEMORY_LIMIT = 2 * 1024**3  # cached features above this size go to disk
STAGE1_DONE = "stage1.weights.h5"


def fine_tune(
    model,
    train,
    val=None,
    *,
    epochs=5,
    fine_tune_epochs=5,
    unfreeze="stages:1",
    learning_rate=1e-3,
    fine_tune_learning_rate=1e-5,
    optimizer="adam",
    label_smoothing=0.0,
    callbacks=(),
    run_dir=None,
    strategy=None,
    cache_features="auto",
    jit_compile="auto",
    train_batchnorm=False,
    head_init=None,
    verbose="auto",
):
    """Trains a model from `build_model` in two stages: the head, then the unfrozen top of the backbone.

    Args:
        model: a model from `build_model` (built inside `strategy.scope()` when a strategy is given).
        train: a `tf.data.Dataset` of `(images, labels)` batches, e.g. from `load_dataset`.
        val: an optional validation dataset of the same form.
        epochs: stage-1 epochs (head only, backbone frozen). 0 skips stage 1.
        fine_tune_epochs: stage-2 epochs. 0 skips stage 2.
        unfreeze: the `set_trainable` policy for stage 2, e.g. `"stages:1"`, `"from:block5"`, `"all"`.
        learning_rate: stage-1 learning rate.
        fine_tune_learning_rate: stage-2 peak learning rate, reached after a linear warmup over the first
            10% of stage-2 steps and then decayed along a cosine; or a `keras.optimizers.schedules` object.
        optimizer: `"adam"`, `"adamw"`, `"sgd"` (momentum 0.9) or `"rmsprop"`.
        label_smoothing: label smoothing for the cross-entropy loss.
        callbacks: extra Keras callbacks, called in both stages after the run-folder callbacks.
        run_dir: folder for the best checkpoint (`checkpoints/best.keras`), `history.csv`, TensorBoard `logs/`
            and the `backup/` that lets a killed run resume when called again.
        strategy: a `tf.distribute.Strategy` (see `get_strategy`); compiling happens inside its scope.
        cache_features: `"auto"` caches backbone features for stage 1 unless the training data is augmented
            (marked by `load_dataset(augment=True)`) or the strategy spans several workers; True or False force it.
        jit_compile: XLA compilation, passed to `model.compile`; `"auto"` turns it on for GPUs only (on this
            project's 2-core CPU machines XLA measured slower).
        train_batchnorm: let stage 2 train the BatchNormalization layers it unfreezes (for training from scratch).
            Their moving statistics then lag behind the weights after a short run, so they are recomputed over
            the training images at the end (`recompute_batchnorm`).
        head_init: None, or `"probe"`: start stage 1 from a logistic regression fitted on the cached features
            (LP-FT, Kumar et al. 2022), so fine-tuning starts at the linear probe's accuracy with a loss that is
            not yet zero. Needs cached features and a head without hidden dense layers.
        verbose: `"lines"` logs one line per epoch through `logging` (about ten per stage when a stage is longer
            than 10 epochs), with the stage in it; anything else is passed to `model.fit`: `"auto"`, 0 (silent),
            1 (progress bar) or 2 (Keras's per-epoch line).

    Returns:
        A `keras.callbacks.History` covering the epochs this call trained, numbered continuously across stages.

    Raises:
        ValueError: for an unknown optimizer or policy, negative epochs, or a bad `cache_features`.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}. Expected one of: {', '.join(OPTIMIZERS)}. "
                         f"Received: optimizer={optimizer!r}")  # fmt: skip
    for name, value in (("epochs", epochs), ("fine_tune_epochs", fine_tune_epochs)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0. Received: {name}={value!r}")
    if verbose not in ("auto", "lines", 0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 'lines', 0, 1 or 2. Received: verbose={verbose!r}")
    if head_init not in (None, "probe"):
        raise ValueError(f"head_init must be None or 'probe'. Received: head_init={head_init!r}")
    if cache_features not in ("auto", True, False):
        raise ValueError(f"cache_features must be 'auto', True or False. Received: cache_features={cache_features!r}")
    if fine_tune_epochs:
        set_trainable(model, unfreeze, train_batchnorm=train_batchnorm)  # a bad policy fails now, not after stage 1
    strategy = strategy or tf.distribute.get_strategy()
    augmented = getattr(train, "keras_transfer_augmented", False)  # datasets derived below lose the mark
    loss, metrics, prepare = _loss_and_metrics(model, label_smoothing)
    train = _with_known_size(prepare(train))
    val = _with_known_size(prepare(val)) if val is not None else None
    history = keras.callbacks.History()
    history.history, history.epoch = {}, []
    paths = _run_paths(run_dir)
    shared = _run_callbacks(model, paths, val is not None)  # one best checkpoint across both stages

    if epochs:
        set_trainable(model, "none")
        if paths and os.path.exists(paths["stage1"]):
            model.load_weights(paths["stage1"])
            logger.info("Stage 1 already finished in %s; its weights are restored.", run_dir)
        else:
            use_cache = cache_features is True or (
                cache_features == "auto"
                and not augmented
                and not _is_multi_worker(strategy)
            )
            fit_model, fit_train, fit_val = model, train, val
            with strategy.scope():  # the head model and its optimizer must belong to the strategy too
                if use_cache:
                    fit_model, fit_train, fit_val = _head_on_features(model, train, val, run_dir)
                if head_init == "probe":
                    _probe_head(model, fit_train if use_cache else None)
                fit_model.compile(optimizer=_optimizer(optimizer, learning_rate), loss=loss, metrics=metrics,
                                  jit_compile=jit_compile)
            progress = _progress(verbose, "head", 0, epochs + fine_tune_epochs)
            logger.info("Stage 1: head on a frozen backbone for %d epochs%s", epochs,
                        " (cached backbone features)" if use_cache else "")  # fmt: skip
            h = fit_model.fit(fit_train, validation_data=fit_val, epochs=epochs, shuffle=False,
                              verbose=progress["verbose"], callbacks=_backup(paths, "stage1") + shared
                              + list(callbacks) + progress["callbacks"])  # fmt: skip
            _extend(history, h)
            if paths:
                _save_atomically(model, paths["stage1"])

    if fine_tune_epochs:
        summary = set_trainable(model, unfreeze, train_batchnorm=train_batchnorm)
        logger.info("%s: %s", "Stage 2" if epochs else "All stages at once (no head-only stage)", summary)
        steps = int(train.cardinality()) * fine_tune_epochs
        with strategy.scope():
            model.compile(optimizer=_optimizer(optimizer, _schedule(fine_tune_learning_rate, steps)),
                          loss=loss, metrics=metrics, jit_compile=jit_compile)  # fmt: skip
        progress = _progress(verbose, "tune", epochs, epochs + fine_tune_epochs)
        h = model.fit(train, validation_data=val, initial_epoch=epochs, epochs=epochs + fine_tune_epochs, shuffle=False,
                      verbose=progress["verbose"], callbacks=_backup(paths, "stage2") + shared + list(callbacks)
                      + progress["callbacks"])  # fmt: skip
        _extend(history, h)
        if train_batchnorm and summary.trainable_layers:
            recompute_batchnorm(model, train)
    return history


class EpochLines(keras.callbacks.Callback):
    """Logs one line per epoch, `stage` and the metrics in it; in a stage longer than 10 epochs, every
    `ceil(epochs / 10)`-th epoch and the last (a 200-epoch few-shot stage would otherwise print 200 lines)."""

    def __init__(self, stage, first_epoch=0, total_epochs=None):
        super().__init__()
        self.stage, self.first_epoch, self.total_epochs = stage, first_epoch, total_epochs

    def on_train_begin(self, logs=None):
        length = self.params["epochs"] - self.first_epoch
        self.every = -(-length // 10) if length > 10 else 1

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params["epochs"]
        if (epoch + 1 - self.first_epoch) % self.every and not last:
            return
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        total = self.total_epochs or self.params["epochs"]
        logger.info("epoch %*d/%d  %-4s  %s  (%.1f s)", len(str(total)), epoch + 1, total, self.stage, metrics,
                    time.perf_counter() - self.started)  # fmt: skip


def _progress(verbose, stage, first_epoch, total_epochs):
    if verbose == "lines":
        return {"verbose": 0, "callbacks": [EpochLines(stage, first_epoch, total_epochs)]}
    return {"verbose": verbose, "callbacks": []}


def recompute_batchnorm(model, dataset):
    """Sets the moving statistics of the model's trainable BatchNormalization layers to their average over
    `dataset`, in one pass.

    After a short training run the moving averages (momentum 0.99, 0.999 in MobileNet) still sit near their
    initial values, and inference-mode accuracy can read as chance. Each batch is run in training mode with the
    momentum set so that the moving value becomes the running mean of the batch statistics. Layers that are
    frozen keep their statistics.

    Args:
        model: a Keras model.
        dataset: batches of `(images, labels)` or of images.

    Returns:
        The number of BatchNormalization layers updated.
    """
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]  # fmt: skip
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        for k, batch in enumerate(dataset):
            images = batch[0] if isinstance(batch, tuple) else batch
            for layer in layers:
                layer.momentum = k / (k + 1)  # moving = (k * moving + batch) / (k + 1)
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    logger.info("Recomputed the statistics of %d BatchNormalization layers over %d batches", len(layers), k + 1)
    return len(layers)


def _loss_and_metrics(model, label_smoothing):
    """The loss that fits the output layer, its metrics, and the label transform it needs."""
    units = model.output_shape[-1]
    activation = model.get_layer("predictions").get_config()["activation"]
    if activation == "sigmoid":
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        return loss, [keras.metrics.BinaryAccuracy(name="accuracy")], _as_float_labels
    if label_smoothing:
        # Sparse cross-entropy has no label smoothing in Keras 3: smooth one-hot labels instead.
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        one_hot = lambda ds: ds.map(lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), units)))  # noqa: E731
        return loss, [keras.metrics.CategoricalAccuracy(name="accuracy")], one_hot
    loss = keras.losses.SparseCategoricalCrossentropy()
    return loss, [keras.metrics.SparseCategoricalAccuracy(name="accuracy")], lambda ds: ds


def _as_float_labels(ds):
    return ds.map(lambda x, y: (x, tf.cast(tf.reshape(y, (tf.shape(y)[0], -1)), tf.float32)))


def _optimizer(name, learning_rate):
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    return {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "rmsprop": keras.optimizers.RMSprop}[
        name
    ](learning_rate)


def _schedule(learning_rate, total_steps):
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return learning_rate
    warmup = max(1, total_steps // 10)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, total_steps - warmup), warmup_target=float(learning_rate), warmup_steps=warmup
    )


def _with_known_size(dataset):
    """The dataset with its number of batches known, counted once when filtering left it unknown.

    Keras needs it: with an unknown size, progress bars have no total, the stage-2 schedule no length, and
    Keras 3.15's `optimizer.iterations` counts one step too many per epoch (measured: 8 after 2 epochs of 3
    batches), which would corrupt a resumed schedule. The count is stable: a file that fails to decode fails
    every epoch, and with a cache the counting pass fills it.
    """
    n = int(dataset.cardinality())
    if n < 0:
        n = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
    return dataset.apply(tf.data.experimental.assert_cardinality(n))


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.cluster_resolver.cluster_spec().num_tasks("worker") > 1


# --- cached bottleneck features --------------------------------------------------------------------------------


def head_model(model):
    """A model from `head_pool` features to predictions that SHARES the head layers of `model`."""
    names = [layer.name for layer in model.layers]
    pool = model.get_layer("head_pool")
    features = keras.Input(shape=pool.output.shape[1:], name="features")
    x = features
    for layer in model.layers[names.index("head_pool") + 1 :]:
        x = layer(x)
    return keras.Model(features, x, name=f"{model.name}_head")


def feature_extractor(model):
    """The model from images to `head_pool` features (the frozen part of stage 1)."""
    return keras.Model(model.input, model.get_layer("head_pool").output, name=f"{model.name}_features")


def _head_on_features(model, train, val, run_dir):
    extractor = feature_extractor(model)
    predict = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
    cache_dir = os.path.join(run_dir, "features") if run_dir else tempfile.mkdtemp(prefix="keras_transfer_features_")

    def cached(dataset, name, shuffle):
        feats, labels, batch_size, size = [], [], None, 0
        for x, y in dataset:
            batch_size = batch_size or int(x.shape[0])
            feats.append(predict(x).numpy())
            labels.append(y.numpy())
            size += feats[-1].nbytes
        features, labels = np.concatenate(feats), np.concatenate(labels)
        ds = tf.data.Dataset.from_tensor_slices((features, labels))
        if size > FEATURE_MEMORY_LIMIT:
            path = os.path.join(cache_dir, name)
            ds.save(path)
            ds = tf.data.Dataset.load(path)
            logger.info("Cached %d %s features (%.1f GB) on disk in %s", len(labels), name, size / 1e9, path)
        if shuffle:
            ds = ds.shuffle(len(labels), seed=0, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    logger.info("Computing backbone features once for stage 1")
    return (head_model(model), cached(train, "train", True), cached(val, "validation", False) if val is not None else None)


def _probe_head(model, features):
    """Sets the `predictions` layer to a logistic regression fitted on cached `(features, labels)` batches, on
    features divided by their mean L2 norm (a scale, so the fit stays a linear map of the raw features)."""
    from sklearn.linear_model import LogisticRegression

    dense = model.get_layer("predictions")
    if features is None or dense.get_config()["activation"] != "softmax":
        raise ValueError("head_init='probe' needs cached features (no augmentation, cache_features not False) and a "
                         "softmax head. Received: head_init='probe'")  # fmt: skip
    batches = [(np.asarray(x), np.asarray(y)) for x, y in features]
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    y = y.argmax(axis=1) if y.ndim == 2 else y.reshape(-1)  # one-hot when label smoothing is on
    kernel, bias = (np.asarray(w) for w in dense.get_weights())
    if x.shape[1] != kernel.shape[0]:
        raise ValueError("head_init='probe' needs a head without hidden dense layers (dense_units=()). "
                         "Received: head_init='probe'")  # fmt: skip
    scale = float(np.mean(np.linalg.norm(x, axis=1))) or 1.0
    fit = LogisticRegression(C=10.0, max_iter=2000).fit(x / scale, y)
    coef, intercept = fit.coef_, fit.intercept_
    if len(fit.classes_) == 2:  # scikit-learn keeps one row for two classes: the logit of the second
        coef, intercept = np.stack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, intercept[0]])
    kernel[:], bias[:] = 0.0, -10.0  # classes absent from the training images: never predicted
    kernel[:, fit.classes_], bias[fit.classes_] = coef.T / scale, intercept
    dense.set_weights([kernel, bias])
    logger.info("Stage 1 starts from a logistic regression on the cached features (head_init='probe')")


# --- run folder -----------------------------------------------------------------------------------------------


def _run_paths(run_dir):
    if not run_dir:
        return None
    os.makedirs(run_dir, exist_ok=True)
    for sub in ("checkpoints", "logs", "backup"):
        os.makedirs(os.path.join(run_dir, sub), exist_ok=True)
    return {
        "stage1": os.path.join(run_dir, STAGE1_DONE),
        "best": os.path.join(run_dir, "checkpoints", "best.keras"),
        "csv": os.path.join(run_dir, "history.csv"),
        "logs": os.path.join(run_dir, "logs"),
        "backup": os.path.join(run_dir, "backup"),
    }


class _FullModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Saves the full model even while stage 1 fits the head on cached features."""

    def __init__(self, full_model, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._full_model = full_model

    def set_model(self, model):
        super().set_model(self._full_model)


def _backup(paths, stage):
    # Kept after training ends, so rerunning a finished run trains nothing more.
    return [keras.callbacks.BackupAndRestore(os.path.join(paths["backup"], stage), delete_checkpoint=False)] if paths else []


def _run_callbacks(model, paths, has_val):
    if not paths:
        return []
    return [
        _FullModelCheckpoint(model, paths["best"], monitor="val_loss" if has_val else "loss", save_best_only=True),
        keras.callbacks.CSVLogger(paths["csv"], append=True),
        keras.callbacks.TensorBoard(paths["logs"]),
    ]


def _save_atomically(model, path):
    tmp = path.replace(".weights.h5", ".tmp.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, path)


def _extend(history, h):
    history.epoch += h.epoch
    for key, values in h.history.items():
        history.history.setdefault(key, []).extend(values)
