"""`fine_tune`: the two-stage transfer-learning recipe.

Stage 1 trains the head on a frozen backbone. A frozen backbone maps each image to the same features every
epoch, so by default it runs ONCE over the data and the head trains on the cached features; the head layers are
shared with the full model, so nothing has to be copied back. Stage 2 applies an unfreezing policy, recompiles
with a lower learning rate (cosine decay with warmup) and continues with continuous epoch numbers.

With a `run_dir`, the run survives being killed: every epoch is committed to the run folder (`runs.py`: backup
of the weights and optimizer state, history row, best checkpoint), the end of stage 1 is recorded, and rerunning
the same call resumes after the last committed epoch. The folder records the call's settings and data, and
another call into it is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.callbacks import InUserEpochs, epoch_lines, passes_per_epoch
from keras_transfer.compat import scale_updates
from keras_transfer.config import OPTIMIZERS
from keras_transfer.data import with_known_size
from keras_transfer.distribute import from_chief, is_multi_worker, sync_from_chief
from keras_transfer.files import atomic_path
from keras_transfer.heads import fit_probe
from keras_transfer.models import (
    batchnorm_layers,
    feature_extractor,
    head_model,
    model_view,
)
from keras_transfer.objectives import (
    check_labels,
    class_weights,
    is_class_weight,
    is_number,
    make_optimizer,
    objective,
    warmup_cosine,
    watched,
)
from keras_transfer.policies import apply_placement, layer_decay_scales, place_policy
from keras_transfer.runs import (
    EpochCommit,
    claim,
    feature_cache,
    locked,
    prepare_folder,
    remove_features,
    resume,
    run_callbacks,
    run_file,
)
from keras_transfer.semi_supervised import FIXMATCH_RATIO, FIXMATCH_THRESHOLD, fixmatch_data, fixmatch_step

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """The less common settings of `fine_tune`; each may also be passed to `fine_tune` by name.

    Attributes:
        optimizer: `"adam"`, `"adamw"`, `"sgd"` (momentum 0.9) or `"rmsprop"`.
        label_smoothing: label smoothing for the cross-entropy loss, in [0, 1).
        cache_features: `"auto"` computes the frozen backbone's features once for stage 1 unless the model
            augments its images (`build_model(augment=...)`) or the strategy spans several workers; True or
            False force it. Augmenting in your own input pipeline? Pass False: the pipeline cannot be seen.
        jit_compile: XLA compilation, passed to `model.compile`; `"auto"` turns it on for GPUs only (on CPU,
            XLA measured 13-14x slower for EfficientNet-Lite0 prediction on this project's machines).
        train_batchnorm: let stage 2 train the BatchNormalization layers it unfreezes (for training from
            scratch). Their moving statistics then lag behind the weights after a short run, so they are
            recomputed over the training images at the end (`recompute_batchnorm`).
        min_steps_per_epoch: a training set of fewer batches runs several epochs per Keras epoch (see
            `fine_tune`'s Returns); 1 runs one Keras epoch per epoch.
        head_init: `"auto"`: `"probe"` where the head allows it (a softmax layer, or one sigmoid per label, right on
            the pooled features), else None; None: a random head; `"probe"`: start stage 1 from a logistic
            regression fitted on the backbone's features
            of the training images as they are (computed once; augmentation acts in training only) (LP-FT, Kumar
            et al. 2022), so fine-tuning starts at the linear probe's accuracy with a loss that is not yet zero.
            Needs a head without hidden dense layers.
        layer_decay: stage 2's layer-wise learning rates: the head at the full rate, the backbone's top stage (of
            its table row) at `layer_decay` of it, the next at `layer_decay ** 2`, and so on (timm's layer decay,
            fastai's discriminative rates); it scales each update, whatever the optimizer. 1.0: off.
        class_weight: None; `"balanced"`: each class weighted by n_images / (n_classes * n_class_images), as
            scikit-learn's, counted over the training labels in one pass (several labels per image: each label's
            positives weighted by its negatives / positives); or a dict of class id -> weight (several labels
            per image: the weight of the label's positives). Applied in both stages, the cached one too.
        feature_memory_limit: cached features of more bytes than this go to a temporary folder on disk (removed
            when `fine_tune` returns), fewer stay in memory.
    """

    optimizer: str = "adam"
    label_smoothing: float = 0.0
    cache_features: object = "auto"
    jit_compile: object = "auto"
    train_batchnorm: bool = False
    head_init: str | None = "auto"
    min_steps_per_epoch: int = 20
    class_weight: object = None
    layer_decay: float = 1.0
    feature_memory_limit: int = 2 * 1024**3

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"Unknown optimizer {self.optimizer!r}. Expected one of: {', '.join(OPTIMIZERS)}. "
                f"Received: optimizer={self.optimizer!r}"
            )
        checks = (
            (
                "label_smoothing",
                is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
                "a number in [0, 1)",
            ),
            ("cache_features", self.cache_features in ("auto", True, False), "'auto', True or False"),
            ("jit_compile", self.jit_compile in ("auto", True, False), "'auto', True or False"),
            ("train_batchnorm", isinstance(self.train_batchnorm, bool), "True or False"),
            ("head_init", self.head_init in (None, "probe", "auto"), "None, 'probe' or 'auto'"),
            ("min_steps_per_epoch", is_number(self.min_steps_per_epoch) and self.min_steps_per_epoch >= 1, ">= 1"),
            (
                "class_weight",
                is_class_weight(self.class_weight),
                "None, 'balanced' or a dict of class id -> weight > 0",
            ),
            ("layer_decay", is_number(self.layer_decay) and 0 < self.layer_decay <= 1, "a number in (0, 1]"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}. Received: {name}={getattr(self, name)!r}")


def fine_tune(
    model,
    train,
    val=None,
    *,
    head_epochs=1,
    fine_tune_epochs=10,
    unfreeze="all",
    learning_rate=1e-3,
    fine_tune_learning_rate=1e-4,
    options=None,
    callbacks=(),
    run_dir=None,
    strategy=None,
    verbose="auto",
    unlabelled=None,
    **kwargs,
):
    """Trains a model from `build_model` in two stages: the head, then the unfrozen top of the backbone.

    Args:
        model: a model from `build_model` (built inside `strategy.scope()` when a strategy is given).
        train: a `tf.data.Dataset` of `(images, labels)` batches, e.g. from `load_dataset`.
        val: an optional validation dataset of the same form.
        head_epochs: stage-1 epochs (head only, backbone frozen); 0 skips stage 1.
        fine_tune_epochs: stage-2 epochs; 0 skips stage 2.
        unfreeze: the `set_trainable` policy for stage 2, e.g. `"stages:1"`, `"from:block5"`, `"all"`.
        learning_rate: stage-1 learning rate, > 0.
        fine_tune_learning_rate: stage-2 peak learning rate (> 0), reached after a linear warmup over the first
            10% of stage-2 steps and then decayed along a cosine; or a `keras.optimizers.schedules` object.
        options: a `TrainingOptions` (optimizer, label smoothing, feature caching, XLA, BatchNorm, LP-FT); its
            fields may also be passed here by name, e.g. `optimizer="sgd"`.
        callbacks: extra Keras callbacks, called in both stages after the run-folder callbacks.
        run_dir: folder for the best checkpoint (`checkpoints/best.keras`), `history.csv`, TensorBoard `logs/`
            and the `backup/` that lets a killed run resume when called again. It holds one run: it records
            this call's settings and data (`run.json`) and refuses a call with others; it is locked while the
            call runs.
        strategy: a `tf.distribute.Strategy` (see `get_strategy`); compiling happens inside its scope.
        verbose: `"lines"` logs one line per epoch through `logging` (about ten per stage when a stage is longer
            than 10 epochs), with the stage in it; anything else is passed to `model.fit`: `"auto"`, 0 (silent),
            1 (progress bar) or 2 (Keras's per-epoch line).
        unlabelled: images without labels (a dataset of image batches, or of `(images, labels)` batches whose
            labels are ignored, e.g. `info.unlabelled` of `load_dataset(..., unlabelled=...)`): stage 2 trains on
            them too, with FixMatch (`semi_supervised.fixmatch_step`: each labelled batch with twice its size of
            unlabelled images, the model's confident classes of them as they are taught on strongly augmented
            copies). A softmax head only.

    Returns:
        A `keras.callbacks.History` covering the epochs this call trained, numbered continuously across stages.
        A stage of many epochs over a small training set (fewer than 20 batches) runs them in groups, one
        Keras epoch repeating the data several times (the same optimizer steps, less overhead per epoch): the
        history, `history.csv`, the checkpoints and your callbacks then see the last epoch of each group, and
        validation runs once per group. A stage keeps at least 10 groups.

    Raises:
        ValueError: for an unknown optimizer or policy, negative epochs, a learning rate <= 0 or a bad option;
            for a `run_dir` that holds another run (`runs.RunFolderMismatch`, naming what differs).
        RuntimeError: when another process is training into `run_dir`.

    Example:
    >>> import keras_transfer as kt
    >>> train, val, _, info = kt.load_dataset("digits", image_size=32, batch_size=64)
    >>> model = kt.build_model("small_cnn", info.num_classes, input_shape=32, weights=None)
    >>> history = kt.fine_tune(model, train, val, head_epochs=1, fine_tune_epochs=1, unfreeze="all", verbose=0)
    >>> history.epoch
    [0, 1]
    """
    options = dataclasses.replace(options or TrainingOptions(), **_option_fields(kwargs))
    _check_schedule(head_epochs, fine_tune_epochs, learning_rate, fine_tune_learning_rate, verbose)
    run = _prepare_run(model, train, val, options, callbacks, run_dir, strategy, verbose)
    run.unlabelled = _check_unlabelled(run.view, unlabelled)
    _place(run, unfreeze if fine_tune_epochs else None)  # a bad policy fails before stage 1 (nothing changed yet)
    run.total_epochs = head_epochs + fine_tune_epochs
    settings = dict(head_epochs=head_epochs, fine_tune_epochs=fine_tune_epochs, unfreeze=unfreeze)
    settings.update(learning_rate=learning_rate, fine_tune_learning_rate=fine_tune_learning_rate)
    history = keras.callbacks.History()
    history.history, history.epoch = {}, []
    with locked(run_dir) if run_dir else contextlib.nullcontext():
        if run_dir:
            claim(run_dir, "fine_tune", _identity(run, settings), "Pass another run_dir, or empty this one.")
            prepare_folder(run_dir)
        try:
            if head_epochs:
                _extend(history, _train_head(run, head_epochs, learning_rate))
            if fine_tune_epochs:
                _extend(history, _train_unfrozen(run, head_epochs, fine_tune_epochs, fine_tune_learning_rate))
        finally:
            remove_features(run_dir, run.scratch_dir)
    return history


def _identity(run, settings):
    """What makes a `fine_tune` call's result: its settings, the model's shape and the data's batches."""
    spec = lambda ds: None if ds is None else {"batches": int(ds.cardinality()), "spec": str(ds.element_spec)}
    model = {
        "backbone": run.view.key,
        "parameters": int(run.model.count_params()),
        "input_size": run.view.input_size,
        "outputs": int(run.model.output_shape[-1]),
    }
    options = dataclasses.asdict(run.options)
    data = {"train": spec(run.train), "validation": spec(run.val)}
    if run.unlabelled is not None:
        data["unlabelled"] = {"method": "fixmatch", "spec": str(run.unlabelled.element_spec)}
    return {**settings, "options": options, "model": model, **data}


def _check_unlabelled(view, unlabelled):
    """`unlabelled` for FixMatch, checked: None, or a `tf.data.Dataset` beside a softmax head."""
    if unlabelled is None:
        return None
    if not isinstance(unlabelled, tf.data.Dataset):
        raise ValueError(
            f"unlabelled must be a tf.data.Dataset of image batches. Received: unlabelled={type(unlabelled).__name__}"
        )
    activation = None if view.output is None else view.output.get_config()["activation"]
    if activation != "softmax":
        raise ValueError(
            "unlabelled images (FixMatch) need a softmax head of one label per image (build_model's default); "
            f"this model's 'predictions' layer has activation {activation!r}. Received: unlabelled=<a dataset>"
        )
    return unlabelled


@dataclasses.dataclass
class _Run:
    """What both stages of one `fine_tune` call share."""

    model: object
    train: object
    val: object
    options: TrainingOptions
    strategy: object
    run_dir: str | None
    callbacks: list  # run-folder callbacks, then the caller's
    loss: object
    metrics: list
    verbose: object
    view: object  # the model's `models.model_view`
    total_epochs: int = 0
    scratch_dir: str | None = None  # features too large for memory (see `runs.feature_cache`); removed at the end
    class_weight: dict | None = None  # one label per image; several labels weigh their positives in the loss
    placements: dict = dataclasses.field(default_factory=dict)  # "head" / "tune" -> the stage's `Placement`
    scales: dict | None = None  # stage 2's layer-decay scales, when layer_decay is not 1
    unlabelled: object = None  # stage 2's unlabelled images (FixMatch), or None


def _option_fields(kwargs):
    known = {field.name for field in dataclasses.fields(TrainingOptions)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"fine_tune() got an unexpected keyword argument {unknown[0]!r}; options are: {', '.join(sorted(known))}"
        )
    return kwargs


def _check_schedule(head_epochs, fine_tune_epochs, learning_rate, fine_tune_learning_rate, verbose):
    for name, value in (("head_epochs", head_epochs), ("fine_tune_epochs", fine_tune_epochs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0. Received: {name}={value!r}")
    for name, value in (("learning_rate", learning_rate), ("fine_tune_learning_rate", fine_tune_learning_rate)):
        schedule = isinstance(value, keras.optimizers.schedules.LearningRateSchedule)
        if not schedule and not (is_number(value) and value > 0):
            raise ValueError(f"{name} must be a number > 0 or a learning-rate schedule. Received: {name}={value!r}")
    if verbose not in ("auto", "lines", 0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 'lines', 0, 1 or 2. Received: verbose={verbose!r}")


def _prepare_run(model, train, val, options, callbacks, run_dir, strategy, verbose):
    view = model_view(model)  # what the model is, read once
    check_labels(view, train)
    weights = class_weights(train, model.output_shape[-1], options.class_weight, view.multi_label)
    loss, metrics, prepare = objective(view, options.label_smoothing, weights)
    val = with_known_size(prepare(val)) if val is not None else None
    run_dir = os.fspath(run_dir) if run_dir else None
    return _Run(
        model,
        with_known_size(prepare(train)),
        val,
        options,
        strategy or tf.distribute.get_strategy(),
        run_dir,
        run_callbacks(run_dir) + list(callbacks),
        loss,
        metrics,
        verbose,
        view,
        class_weight=None if view.multi_label else weights,
    )


def _place(run, unfreeze):
    """Both stages' policies placed over the backbone's layers once (pure: checked, nothing changed), and stage
    2's layer-decay scales; each stage applies its own."""
    view = run.view
    run.placements["head"] = place_policy(view, "frozen")
    if unfreeze is not None:
        run.placements["tune"] = place_policy(view, unfreeze)
        if run.options.layer_decay != 1.0:
            run.scales = layer_decay_scales(view, run.options.layer_decay)  # needs the row's stages


def _train_head(run, epochs, learning_rate):
    """Stage 1: the head on a frozen backbone, on cached features when `_use_cache` says so."""
    apply_placement(run.model, run.placements["head"])
    finished = bool(run.run_dir and os.path.exists(run_file(run.run_dir, "stage1")))
    if is_multi_worker(run.strategy):  # the chief's run folder decides, on every worker
        finished = bool(from_chief(run.strategy, [finished])[0])
    if finished:
        if run.run_dir:
            with warnings.catch_warnings():  # the file has no optimizer state, and stage 1's optimizer is not needed
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                run.model.load_weights(run_file(run.run_dir, "stage1"))
        sync_from_chief(run.strategy, run.model.weights)
        logger.info(
            "Stage 1 already finished in %s; its weights are restored.", run.run_dir or "the chief's run folder"
        )
        return None
    use_cache, probe = _use_cache(run), _probe_start(run)
    with run.strategy.scope():  # the head model and its optimizer must belong to the strategy too
        # the probe is fitted on features of the images as they are (augmentation acts only in training)
        on_features = _head_on_features(run) if use_cache or probe else None
        fit_model, train, val = on_features if use_cache else (run.model, run.train, run.val)
        if probe:
            _probe_head(run.view, on_features[1])
        fit_model.compile(
            optimizer=make_optimizer(run.options.optimizer, learning_rate),
            loss=run.loss,
            metrics=run.metrics,
            jit_compile=run.options.jit_compile,
        )
    logger.info(
        "Stage 1: head on a frozen backbone for %d epoch%s%s",
        epochs,
        "s" if epochs != 1 else "",
        " (cached backbone features)" if use_cache else "",
    )
    history = _fit(run, fit_model, train, val, "head", 0, epochs)
    remove_features(run.run_dir, run.scratch_dir)
    if run.run_dir:
        with atomic_path(run_file(run.run_dir, "stage1")) as tmp:
            run.model.save_weights(tmp)  # the mark that stage 1 is done, holding the weights stage 2 starts from
    return history


def _train_unfrozen(run, first_epoch, epochs, learning_rate):
    """Stage 2: the policy's part of the backbone unfrozen, a warmup-cosine schedule, continuous epoch numbers."""
    summary = apply_placement(run.model, run.placements["tune"], train_batchnorm=run.options.train_batchnorm)
    logger.info("%s: %s", "Stage 2" if first_epoch else "All stages at once (no head-only stage)", summary)
    train = _stage2_data(run)
    schedule = warmup_cosine(learning_rate, int(train.cardinality()) * epochs)
    with run.strategy.scope():
        optimizer = make_optimizer(run.options.optimizer, schedule)
        if run.options.layer_decay != 1.0:
            scale_updates(optimizer, run.scales)
            logger.info(
                "Layer decay %g: each backbone stage at %g of the rate of the part above it",
                run.options.layer_decay,
                run.options.layer_decay,
            )
        run.model.compile(
            optimizer=optimizer,
            loss=run.loss,
            metrics=run.metrics,
            jit_compile=run.options.jit_compile,
        )
    if run.unlabelled is not None:
        # Under a strategy `fit` builds the compiled loss and metrics from its first batch, and FixMatch's holds
        # (images, unlabelled images) pairs the model cannot take: a labelled batch builds them first.
        run.model.evaluate(run.train.take(1), verbose=0)
        run.model.train_step = fixmatch_step(run.model)  # this model's fit only; removed after stage 2
    try:
        history = _fit(run, run.model, train, run.val, "tune", first_epoch, first_epoch + epochs)
    finally:
        run.model.__dict__.pop("train_step", None)
        run.model.train_function = None
    if run.options.train_batchnorm and summary.trainable_layers:
        recompute_batchnorm(run.model, run.train)
    return history


def _stage2_data(run):
    """Stage 2's training batches: `run.train`, or with unlabelled images FixMatch's pairs, an epoch of them one
    pass over the unlabelled images (the labelled batches repeating)."""
    if run.unlabelled is None:
        return run.train
    train = with_known_size(fixmatch_data(run.train, run.unlabelled))
    logger.info(
        "FixMatch: %d unlabelled images per labelled one in each batch, threshold %g; an epoch is %d steps (one "
        "pass over the unlabelled images)",
        FIXMATCH_RATIO,
        FIXMATCH_THRESHOLD,
        int(train.cardinality()),
    )
    return train


def _use_cache(run):
    """Whether stage 1 computes the frozen features once; the reason is logged, so the choice is never silent."""
    choice = run.options.cache_features
    if choice != "auto":
        logger.info("Stage 1 features: %s (cache_features=%s)", "computed once" if choice else "every epoch", choice)
        return choice
    if run.view.augmented:
        logger.info("Stage 1 runs the backbone every epoch: the model augments its images (layer 'augmentation').")
        return False
    if is_multi_worker(run.strategy):
        logger.info("Stage 1 runs the backbone every epoch: features are not cached across several workers.")
        return False
    logger.info("Stage 1 computes the backbone features once (the model has no augmentation layer).")
    return True


def _fit(run, model, train, val, stage, first_epoch, last_epoch):
    """One stage's `model.fit`, resumed after its last committed epoch. A training set of fewer than
    `min_steps_per_epoch` batches is repeated so that one Keras epoch makes several passes (same optimizer steps,
    less per-epoch overhead, validation once per group); the history, the run folder and the callbacks still count
    the epochs asked for."""
    batches = int(train.cardinality())
    passes = passes_per_epoch(batches, last_epoch - first_epoch, run.options.min_steps_per_epoch)
    monitor = watched(run.options.label_smoothing, validation=val is not None)
    commit = [EpochCommit(run.run_dir, run.model, stage, monitor)] if run.run_dir else []
    callbacks = commit + run.callbacks + epoch_lines(run.verbose, stage, first_epoch, run.total_epochs)
    verbose = 0 if run.verbose == "lines" else run.verbose
    if passes > 1:
        logger.info(
            "The training set has %d batch%s: its %d epochs run in %d group%s of %d (validation and "
            "checkpoints after each group)",
            batches,
            "es" if batches != 1 else "",
            last_epoch - first_epoch,
            (last_epoch - first_epoch) // passes,
            "s" if last_epoch - first_epoch > passes else "",
            passes,
        )
        progress_bar = [keras.callbacks.ProgbarLogger()] if verbose else []  # counting epochs as asked, too
        train, callbacks = train.repeat(passes), [InUserEpochs(callbacks + progress_bar, first_epoch, passes, verbose)]
        verbose = 0
    for metric in run.metrics:  # shared by both stages' compile: a new compile's first epoch would count the last
        metric.reset_state()  # epoch of stage 1 too (Keras resets compiled metrics only once they are built)
    done = _resume(run, model, stage)  # the last committed epoch of the stage
    history = model.fit(
        train,
        validation_data=val,
        initial_epoch=first_epoch if done is None else first_epoch + (done - first_epoch + 1) // passes,
        epochs=first_epoch + (last_epoch - first_epoch) // passes,
        shuffle=False,
        verbose=verbose,
        callbacks=callbacks,
        class_weight=run.class_weight,
    )
    history.epoch = [first_epoch + (e - first_epoch + 1) * passes - 1 for e in history.epoch]
    return history


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
    layers = [layer for layer in batchnorm_layers(model) if layer.trainable]
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


def _resume(run, model, stage):
    """`runs.resume` from the run folder; under several workers, the chief's (the only one with a run folder):
    its last committed epoch, and its weights and optimizer state (resumed or not), on every worker. None when the
    stage has none."""
    if not is_multi_worker(run.strategy):
        return resume(run.run_dir, model, stage) if run.run_dir else None
    if model.optimizer is not None and not model.optimizer.built:
        with run.strategy.scope():
            model.optimizer.build(model.trainable_variables)  # on every worker: its state is sent too
    done = resume(run.run_dir, model, stage) if run.run_dir else None
    done = int(from_chief(run.strategy, [-1 if done is None else done])[0])
    # every worker starts the stage from the chief's state: what a worker set by itself (the probe's head, fitted
    # on features its own float arithmetic computed) would otherwise make them train apart
    sync_from_chief(run.strategy, model.weights + (list(model.optimizer.variables) if model.optimizer else []))
    if done < 0:
        return None
    if not run.run_dir:
        logger.info("Resuming after epoch %d (committed in the chief's run folder)", done + 1)
    return done


def _head_on_features(run):
    """The head model on features computed once by the frozen backbone, and its train and validation data."""
    predict, head = feature_extractor(run.model), head_model(run.model)

    def cached(dataset, name, shuffle):
        feats, labels, batch_size, size = [], [], None, 0
        for x, y in dataset:
            batch_size = batch_size or int(x.shape[0])
            feats.append(predict(x).numpy())
            labels.append(y.numpy())
            size += feats[-1].nbytes
        features, labels = np.concatenate(feats), np.concatenate(labels)
        ds = tf.data.Dataset.from_tensor_slices((features, labels))
        if size > run.options.feature_memory_limit:
            run.scratch_dir = run.scratch_dir or feature_cache(run.run_dir)
            path = os.path.join(run.scratch_dir, name)
            ds.save(path)
            ds = tf.data.Dataset.load(path)
            logger.info("Cached %d %s features (%.1f GB) on disk in %s", len(labels), name, size / 1e9, path)
        if shuffle:
            ds = ds.shuffle(len(labels), seed=0, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    val = cached(run.val, "validation", False) if run.val is not None else None
    return head, cached(run.train, "train", True), val


def _probe_start(run):
    """Whether stage 1 starts at the linear probe (`head_init`; "auto": where the head allows it, said so)."""
    if run.options.head_init != "auto":
        return run.options.head_init == "probe"
    if not run.view.probe_fits:
        logger.info(
            "Stage 1 starts from a random head (head_init='auto'): a linear probe needs a softmax layer (or one "
            "sigmoid per label) right on the pooled features, without hidden dense layers."
        )
    return run.view.probe_fits


def _probe_head(view, features):
    """Sets the `predictions` layer to the linear probe (`heads.fit_probe`) of cached `(features, labels)` batches."""
    dense, multi_label = view.output, view.multi_label
    if not (dense.get_config()["activation"] == "softmax" or multi_label):
        raise ValueError(
            "head_init='probe' needs a softmax head (or one sigmoid per label, for several labels per image). "
            "Received: head_init='probe'"
        )
    batches = [(np.asarray(x), np.asarray(y)) for x, y in features]
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    kernel = dense.get_weights()[0]
    if x.shape[1] != kernel.shape[0]:
        raise ValueError(
            "head_init='probe' needs a head without hidden dense layers (dense_units=()). Received: head_init='probe'"
        )
    # labels are one-hot when label smoothing is on; 0/1 rows (one-vs-rest regressions) for several labels
    dense.set_weights(list(fit_probe(x, y, kernel.shape[1], multi_label=multi_label)))
    logger.info("Stage 1 starts from a logistic regression on the backbone's features (LP-FT)")


def _extend(history, h):
    if h is None:  # a stage finished by an earlier call
        return
    history.epoch += h.epoch
    for key, values in h.history.items():
        history.history.setdefault(key, []).extend(values)
