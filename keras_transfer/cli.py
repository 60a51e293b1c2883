"""The `keras-transfer` command (also `python scripts/finetune.py`): load, build, fine-tune, evaluate, export.

Every flag's default comes from `RunConfig`; `--config file.yaml` sets the same keys, and flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys

from keras_transfer import hub
from keras_transfer.backbones import BACKBONES
from keras_transfer.config import RunConfig, load_config
from keras_transfer.distribute import MIXED_PRECISION, STRATEGIES
from keras_transfer.heads import HEADS
from keras_transfer.training import OPTIMIZERS

POLICY = re.compile(r"^(none|all|top:\d+|from:.+|stages:\d+)$")
FLAGS = {  # group -> RunConfig fields shown as flags, in order
    "Data": ("data", "data_dir", "image_size", "batch_size", "validation_split", "test_split", "classes",
             "labels_per_class", "augment", "seed"),
    "Model": ("backbone", "weights", "head", "dense_units", "dropout"),
    "Training": ("epochs", "fine_tune_epochs", "unfreeze", "learning_rate", "fine_tune_learning_rate", "optimizer",
                 "label_smoothing", "train_batchnorm", "head_init", "early_stopping", "cache_features", "compare_scratch"),
    "Distribution": ("strategy", "mixed_precision", "xla"),
    "Output": ("output", "export"),
}  # fmt: skip
HELP = {
    "data": "a folder of class subfolders, tfds:NAME, digits or fashion_mnist",
    "data_dir": "TFDS data directory",
    "image_size": "input side in pixels (default: the backbone's)",
    "batch_size": "images per batch per replica",
    "classes": "class subset, names or ids (e.g. 5 6 7 8 9)",
    "labels_per_class": "keep at most this many training images per class",
    "weights": "imagenet, none, or a .weights.h5 / .h5 / .keras file",
    "dense_units": "hidden layer sizes of the head (e.g. 1024)",
    "unfreeze": "stage-2 policy: none, all, top:N, from:NAME, stages:K",
    "head_init": "probe: stage 1 starts from a logistic regression on the cached features (LP-FT)",
    "train_batchnorm": "stage 2 also trains BatchNormalization (training from scratch); statistics recomputed",
    "early_stopping": "stop after this many epochs without val_loss improvement (0: off)",
    "cache_features": "auto, true or false: compute frozen-backbone features once for stage 1",
    "compare_scratch": "also train the same model from random weights on the same images (all layers, BatchNorm "
    "trained, as many epochs as both stages) and compare test accuracy; written to <output>/scratch/",
    "mixed_precision": "off, auto, mixed_float16 or mixed_bfloat16",
    "xla": "auto (on for GPUs), on or off",
    "output": "run folder: config.yaml, history.csv, logs, checkpoints, report.json, confusion.png",
    "export": "also export a SavedModel (TF Serving layout) into this folder",
}
CHOICES = {
    "head": list(HEADS),
    "optimizer": list(OPTIMIZERS),
    "strategy": list(STRATEGIES),
    "mixed_precision": list(MIXED_PRECISION),
    "xla": ["auto", "on", "off"],
    "cache_features": ["auto", "true", "false"],
    "head_init": ["none", "probe"],
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-transfer", description="Fine-tune a pretrained backbone into an evaluated, exported classifier."
    )
    parser.add_argument("--config", help="YAML file of settings (the flags' names with underscores)")
    parser.add_argument("--verbose", action="store_true",
                        help="Keras progress bars and warnings, TensorFlow's own log lines")  # fmt: skip
    fields = {field.name: field for field in dataclasses.fields(RunConfig)}
    defaults = RunConfig()
    for group, names in FLAGS.items():
        arguments = parser.add_argument_group(group)
        for name in names:
            default = getattr(defaults, name)
            flag = "--" + name.replace("_", "-")
            kwargs = {"default": argparse.SUPPRESS, "help": f"{HELP.get(name, '')} (default: {default})".strip()}
            if isinstance(default, bool):
                arguments.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
                continue
            if name in ("classes", "dense_units"):
                kwargs["nargs"] = "+"
                kwargs["type"] = int if name == "dense_units" else str
            elif name in CHOICES:
                kwargs["choices"] = CHOICES[name]
                kwargs["metavar"] = name.upper()
                kwargs["help"] = f"one of: {', '.join(CHOICES[name])} (default: {default})"
            elif name == "unfreeze":
                kwargs["type"] = _policy
            elif name == "backbone":
                kwargs["type"] = _backbone
                kwargs["metavar"] = "BACKBONE"
                kwargs["help"] = f"one of: {', '.join(BACKBONES)}, or hub:URL_OR_FOLDER (default: {default})"
            else:
                kwargs["type"] = _type_of(fields[name], default)
            arguments.add_argument(flag, **kwargs)
    return parser


def _type_of(field, default):
    if default is not None:
        return type(default)
    return int if "int" in str(field.type) else str


def _backbone(value):
    if value not in BACKBONES and not value.startswith("hub:"):
        raise argparse.ArgumentTypeError(f"invalid backbone {value!r}: expected one of {', '.join(sorted(BACKBONES))}, "
                                         "or hub:URL_OR_FOLDER")  # fmt: skip
    return value


def _policy(value):
    if not POLICY.match(value):
        raise argparse.ArgumentTypeError(f"invalid policy {value!r}: expected none, all, top:N, from:NAME or stages:K")
    return value


def parse_config(argv=None):
    """Merges RunConfig defaults < --config file < flags. Exits 2 on bad arguments, naming the flag and value."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    args.pop("verbose")
    values = {}
    if args.get("config"):
        try:
            values.update(load_config(args.pop("config")))
        except (OSError, ValueError) as e:
            parser.error(f"argument --config: {e}")
    args.pop("config", None)
    values.update(args)
    try:
        config = RunConfig(**values)
    except TypeError as e:
        parser.error(str(e))
    if config.classes is not None:
        config.classes = [int(c) if str(c).isdigit() else c for c in config.classes]
    for name in ("batch_size", "epochs", "fine_tune_epochs", "early_stopping"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
            parser.error(f"argument --{name.replace('_', '-')}: invalid value {value!r}")
    return parser, config


def main(argv=None) -> int:
    parser, config = parse_config(argv)
    verbose = parser.parse_args(argv).verbose  # parse_config keeps RunConfig's fields only
    quiet_frameworks(verbose)
    try:
        return _run(config, verbose)
    except ValueError as e:
        print(f"keras-transfer: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"keras-transfer: error: {e}", file=sys.stderr)
        return 1


def quiet_frameworks(verbose=False):
    """What a command shows: our INFO lines; without `verbose`, none of Keras's UserWarnings (about choices the
    library made for the user) nor TensorFlow's Python log lines."""
    import warnings

    import tensorflow as tf

    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    if not verbose:
        warnings.filterwarnings("ignore", category=UserWarning, module=r"keras(\.|$)")
        tf.get_logger().setLevel(logging.ERROR)
        tf.autograph.set_verbosity(0)


def _run(config, verbose=False):
    import keras

    from keras_transfer.data import load_dataset
    from keras_transfer.distribute import get_strategy, set_mixed_precision
    from keras_transfer.evaluation import evaluate
    from keras_transfer.export import export_saved_model
    from keras_transfer.models import build_model, pretrained_metadata

    os.makedirs(config.output, exist_ok=True)
    with open(os.path.join(config.output, "config.yaml"), "w") as f:
        f.write(config.to_yaml())
    keras.utils.set_random_seed(config.seed)
    policy = set_mixed_precision(config.mixed_precision)
    strategy = get_strategy(config.strategy)
    weights = None if config.weights.lower() == "none" else config.weights
    if config.compare_scratch and weights is None:
        raise ValueError("--compare-scratch compares pretrained weights with random ones; give --weights imagenet "
                         f"or a weights file. Received: weights={config.weights!r}")  # fmt: skip
    pretrained = pretrained_metadata(weights) or {}
    default_size = BACKBONES[config.backbone].default_size if config.backbone in BACKBONES else hub.DEFAULT_SIZE
    size = config.image_size or (pretrained.get("image_size") or [default_size])[0]
    train, val, test, info = load_dataset(
        config.data, image_size=size, batch_size=config.batch_size * strategy.num_replicas_in_sync,
        validation_split=config.validation_split, test_split=config.test_split, seed=config.seed,
        augment=config.augment, classes=config.classes, labels_per_class=config.labels_per_class,
        data_dir=config.data_dir,
    )  # fmt: skip
    print(info)
    if config.compare_scratch and test is None and val is None:
        raise ValueError("--compare-scratch needs images to compare on: give --test-split or --validation-split "
                         "above 0 (or a data folder with test/ or validation/).")  # fmt: skip
    with strategy.scope():
        model = build_model(config.backbone, info.num_classes, input_shape=size, weights=weights, head=config.head,
                            dense_units=tuple(config.dense_units), dropout=config.dropout)  # fmt: skip
    evaluated = test if test is not None else val
    split = "test" if test is not None else "validation"
    probe = None
    if config.compare_scratch:  # on the pretrained features, before fine-tuning changes them
        from keras_transfer.evaluation import linear_probe

        print(f"linear probe on the pretrained features (one pass over the training and {split} images): ",
              end="", flush=True)  # fmt: skip
        probe = linear_probe(model, train, evaluated)
        print(f"{split} accuracy {probe:.1%}")
    history = _train(config, model, train, val, strategy, config.output, verbose=verbose)
    model.save(os.path.join(config.output, "model.keras"))
    if evaluated is not None:
        print(f"Evaluating on the {sum(info.counts[split].values())} {split} images", flush=True)
    report = evaluate(model, evaluated, info.class_names, output_dir=config.output) if evaluated is not None else None
    exported = None
    if config.export:
        metrics = {"accuracy": report.accuracy, "split": split} if report else {}
        exported = export_saved_model(model, config.export, class_names=info.class_names,
                                      metadata={"backbone": config.backbone, "metrics": metrics})  # fmt: skip

    print(f"\nRun folder: {config.output}  (dtype policy {policy}, {strategy.num_replicas_in_sync} replica(s))")
    print_history(history, config.epochs)
    if report:
        print(f"\n{split}: {report}")
    if exported:
        print(f"\nSavedModel: {exported}")
    if config.compare_scratch and report:
        _compare_scratch(config, report, probe, size, train, val, evaluated, split, info, strategy, verbose)
    return 0


def _compare_scratch(config, transfer, probe, size, train, val, evaluated, split, info, strategy, verbose):
    """Trains the same architecture from random weights on the same batches; prints and saves the comparison with
    the fine-tuned model and the linear probe."""
    import json

    import keras

    from keras_transfer.evaluation import evaluate
    from keras_transfer.models import build_model

    run_dir = os.path.join(config.output, "scratch")
    epochs = config.epochs + config.fine_tune_epochs
    print(f"\n--compare-scratch: {config.backbone} from random weights, all layers, {epochs} epochs -> {run_dir}")
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(config.backbone, info.num_classes, input_shape=size, weights=None, head=config.head,
                            dense_units=tuple(config.dense_units), dropout=config.dropout)  # fmt: skip
    _train(config, model, train, val, strategy, run_dir, scratch=True, verbose=verbose)
    print(f"Evaluating on the {transfer.num_examples} {split} images", flush=True)
    scratch = evaluate(model, evaluated, info.class_names, output_dir=run_dir)
    rows = {f"{config.backbone} ({config.weights}), fine-tuned": transfer.accuracy,
            f"linear probe on the {config.weights} features": probe,
            f"{config.backbone} from scratch": scratch.accuracy}  # fmt: skip
    print(f"\n{split} accuracy on {transfer.num_examples} images:")
    for name, accuracy in rows.items():
        print(f"  {name:<60} {accuracy:6.1%}")
    gain = transfer.accuracy - scratch.accuracy
    print(f"  fine-tuned - scratch: {100 * gain:+.1f} points; fine-tuned - probe: {100 * (transfer.accuracy - probe):+.1f}")
    with open(os.path.join(config.output, "comparison.json"), "w") as f:
        json.dump({"split": split, "num_examples": transfer.num_examples, "transfer_accuracy": transfer.accuracy,
                   "scratch_accuracy": scratch.accuracy, "linear_probe_accuracy": probe, "gain": gain,
                   "weights": config.weights}, f, indent=2)  # fmt: skip


def print_history(history, stage1_epochs):
    """The last epoch of each stage, as a table: the per-epoch lines were printed while training."""
    keys = [k for k in history.history if k != "learning_rate"]
    print(f"{'stage':<6} {'epochs':>9} " + " ".join(f"{k:>12}" for k in keys))
    for stage, epochs in (("head", [e for e in history.epoch if e < stage1_epochs]),
                          ("tune", [e for e in history.epoch if e >= stage1_epochs])):  # fmt: skip
        if epochs:
            i = history.epoch.index(epochs[-1])
            span = f"{epochs[0] + 1}-{epochs[-1] + 1}"
            print(f"{stage:<6} {span:>9} " + " ".join(f"{history.history[k][i]:>12.4f}" for k in keys))


def _train(config, model, train, val, strategy, run_dir, scratch=False, verbose=False):
    """fine_tune with the run's settings; `scratch` trains every layer from the start for both stages' epochs."""
    import keras

    from keras_transfer.training import fine_tune

    callbacks = []
    if config.early_stopping:
        monitor = "val_loss" if val is not None else "loss"
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=config.early_stopping,
                                                       restore_best_weights=True))  # fmt: skip
    stages = dict(epochs=config.epochs, fine_tune_epochs=config.fine_tune_epochs, unfreeze=config.unfreeze,
                  learning_rate=config.learning_rate, fine_tune_learning_rate=config.fine_tune_learning_rate,
                  train_batchnorm=config.train_batchnorm, head_init=None if config.head_init == "none" else "probe")  # fmt: skip
    if scratch:
        stages = dict(epochs=0, fine_tune_epochs=config.epochs + config.fine_tune_epochs, unfreeze="all",
                      fine_tune_learning_rate=config.learning_rate, train_batchnorm=True)  # fmt: skip
    return fine_tune(
        model, train, val, optimizer=config.optimizer, label_smoothing=config.label_smoothing, callbacks=callbacks,
        run_dir=run_dir, strategy=strategy,
        cache_features={"auto": "auto", "true": True, "false": False}[config.cache_features],
        jit_compile={"auto": "auto", "on": True, "off": False}[config.xla], verbose="auto" if verbose else "lines",
        **stages,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
