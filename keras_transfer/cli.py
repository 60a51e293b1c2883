"""The one front door: `keras-transfer COMMAND`, every command from one table (`COMMANDS`; `run`, the default,
loads, builds, fine-tunes, evaluates and exports), and what every command shares: `run_command` (one exit-code
rule), `add_verbose`, and argument types. `scripts/*.py` are shims over `main`.

Every flag's default comes from `RunConfig`; `--config file.yaml` sets the same keys, and flags override it.
Exit codes, for every command: 0 done, 2 a usage error (a bad flag or value; `ValueError`), 1 a failure while
running (a file that cannot be read, a download that fails), 130 stopped by Ctrl-C or SIGTERM (committed work kept;
the line says how to resume). Errors print one line; `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import importlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings

from keras_transfer.backbones import BACKBONES
from keras_transfer.config import (
    MIXED_PRECISION,
    OPTIMIZERS,
    POLICIES,
    POOLINGS,
    SEMI_SUPERVISED,
    STRATEGIES,
    RunConfig,
    from_words,
    load_config,
    range_problem,
)
from keras_transfer.files import process_alive
from keras_transfer.terminal import error_line, quiet_tensorflow

POLICY = re.compile(r"^(frozen|all|top:\d+|from:.+|stages:\d+)$")
FLAGS = {  # group -> RunConfig fields shown as flags, in order
    "Data": (
        "data",
        "validation",
        "test",
        "data_dir",
        "data_service",
        "root",
        "path_column",
        "label_column",
        "label_columns",
        "label_delimiter",
        "split_column",
        "image_size",
        "batch_size",
        "validation_split",
        "test_split",
        "classes",
        "labels_per_class",
        "test_per_class",
        "validation_per_class",
        "exclude_issues",
        "relabel_issues",
        "unlabelled",
        "augment",
        "seed",
    ),
    "Model": ("backbone", "weights", "pooling", "dense_units", "dropout"),
    "Training": (
        "head_epochs",
        "fine_tune_epochs",
        "unfreeze",
        "learning_rate",
        "fine_tune_learning_rate",
        "optimizer",
        "label_smoothing",
        "train_batchnorm",
        "head_init",
        "class_weight",
        "layer_decay",
        "early_stopping",
        "cache_features",
        "tta",
        "compare_scratch",
        "semi_supervised",
        "pseudo_labels_per_class",
    ),
    "Distribution": ("strategy", "mixed_precision", "xla", "peer_timeout"),
    "Output": ("output", "overwrite", "export", "export_onnx", "export_bench", "label_issues"),
}
HELP = {
    "data": "a folder of class subfolders (or with train/, val(idation)/, test/ inside), a CSV file of image paths "
    "and labels, tfds:NAME, digits or fashion_mnist",
    "validation": "a folder or CSV file of its own as the validation split, used as it is (instead of "
    "--validation-split)",
    "test": "a folder or CSV file of its own as the test split, used as it is (instead of --test-split)",
    "root": "folder the CSV's relative image paths start from",
    "path_column": "the CSV's column of image paths",
    "label_column": "the CSV's column of labels (class names or integer ids)",
    "label_columns": "instead, the CSV's 0/1 columns, one per label (several labels per image)",
    "label_delimiter": "split each label cell into several labels at this text (e.g. ' ' or '|')",
    "split_column": "the CSV's column of splits: train, validation (val, valid) or test",
    "data_dir": "TFDS data directory",
    "data_service": "a tf.data service dispatcher (grpc://host:port, from `keras-transfer data-service`) whose workers "
    "read and decode the training split (--data must be a folder of shards: `keras-transfer write-shards`)",
    "image_size": "input side in pixels",
    "batch_size": "images per batch per replica",
    "validation_split": "fraction of the images held out for validation, per class",
    "test_split": "fraction of the images held out for the test, per class",
    "seed": "seed of the splits, the shuffling and the initial weights",
    "dropout": "dropout rate before each dense layer of the head",
    "learning_rate": "stage-1 learning rate",
    "fine_tune_learning_rate": "stage-2 peak learning rate (linear warmup, then cosine decay)",
    "label_smoothing": "label smoothing of the cross-entropy loss",
    "classes": "class subset, names or ids (e.g. 5 6 7 8 9)",
    "labels_per_class": "keep at most this many training images per class",
    "test_per_class": "evaluate on at most this many test images per class (a stratified sample)",
    "validation_per_class": "validate on at most this many validation images per class, each epoch",
    "exclude_issues": "a label_issues.csv (keras-transfer label-issues): train without its images",
    "relabel_issues": "a label_issues.csv: train with its images given their suggested class",
    "unlabelled": "images without labels to learn from too: rest (the training images --labels-per-class leaves "
    "out, their labels unused), a folder of images, or a CSV file of image paths (its rows without a label)",
    "semi_supervised": "how --unlabelled images are used: pseudo-label (a linear probe on the backbone's features "
    "labels the most confident of each class, 3 self-training rounds; then LP-FT on both) or fixmatch (stage 2 also "
    "trains on 2 unlabelled images per labelled one: the model's confident class of each, >= 0.95, taught on a "
    "strongly augmented copy; a fine-tune epoch is one pass over the unlabelled images: measured 7x a supervised "
    "run's CPU time on 60 labelled and 515 unlabelled photos)",
    "pseudo_labels_per_class": "at most this many pseudo-labelled images per class",
    "augment": "random flip, rotation, zoom, translation and contrast, inside the model, in training only (auto: "
    "on for image files, folders and CSV tables; off for arrays and TFDS)",
    "weights": "imagenet, none, or a .weights.h5 / .h5 / .keras file",
    "pooling": "how the head pools the feature map",
    "dense_units": "hidden layer sizes of the head (e.g. 1024)",
    "head_epochs": "stage-1 epochs: the head on a frozen backbone",
    "fine_tune_epochs": "stage-2 epochs: the unfrozen part of the backbone too",
    "unfreeze": f"stage-2 policy: one of {', '.join(POLICIES)}",
    "head_init": "probe: stage 1 starts from a logistic regression on the backbone's features (LP-FT); auto: probe "
    "where the head allows it (no --dense-units); none: a random head",
    "class_weight": "balanced: weigh each class by n_images / (n_classes x its images), in both stages (several "
    "labels per image: each label's positives by its negatives / positives)",
    "tta": "test-time augmentation of the evaluation: flip averages each image with its mirror",
    "layer_decay": "stage-2 layer-wise rates: the top backbone stage at this factor of the head's rate, each stage "
    "below at this factor of the one above (1: off)",
    "train_batchnorm": "stage 2 also trains BatchNormalization (training from scratch); statistics recomputed",
    "early_stopping": "stop after this many epochs without val_loss improvement, keeping the best weights (0: off; "
    "needs a validation split)",
    "cache_features": "compute the frozen backbone's features once for stage 1",
    "compare_scratch": "also train the same model from random weights on the same images (all layers, BatchNorm "
    "trained, as many epochs as both stages) and compare test accuracy; written to <output>/scratch/",
    "mixed_precision": "float16 or bfloat16 compute (auto: bfloat16 on CPU and TPU, float16 on GPU)",
    "xla": "XLA compilation (auto: on for GPUs)",
    "optimizer": "the optimizer of both stages (sgd: momentum 0.9)",
    "strategy": "tf.distribute strategy (auto: TPU, multi-worker from TF_CONFIG, several GPUs, else default)",
    "peer_timeout": "seconds a --data-service dispatcher or another worker may stop answering before the run ends "
    "with an error naming it (what was committed is kept)",
    "output": "run folder (one run per folder: the same command resumes it, other settings are refused)",
    "overwrite": "empty the --output run folder first, when it holds another run",
    "export": "also export a SavedModel (TF Serving layout) into this folder",
    "export_onnx": "also write <output>/model.onnx for ONNX Runtime (needs the onnx extra)",
    "export_bench": "also write every export format (SavedModel, TFLite float32/float16/dynamic/int8, ONNX) into "
    "<output>/exports/ and measure each one's size, accuracy, agreement with Keras and speed",
    "label_issues": "look for suspected label errors among the training images (a 5-fold probe on the pretrained "
    "features, confident learning) before training: <output>/label_issues.csv and a section of report.html (folders "
    "and CSV tables with at least 5 training images in two classes)",
}
CHOICES = {
    "pooling": list(POOLINGS),
    "optimizer": list(OPTIMIZERS),
    "strategy": list(STRATEGIES),
    "mixed_precision": list(MIXED_PRECISION),
    "xla": ["auto", "on", "off"],
    "cache_features": ["auto", "true", "false"],
    "head_init": ["auto", "probe", "none"],
    "augment": ["auto", "true", "false"],
    "class_weight": ["none", "balanced"],
    "tta": ["none", "flip"],
    "semi_supervised": list(SEMI_SUPERVISED),
}
DEFAULT_TEXT = {
    "image_size": "the backbone's",
    "export": "none",
    "data_dir": "TFDS's",
    "validation": "--data's validation/ folder, else drawn from --data",
    "test": "--data's test/ folder, else drawn from --data",
    "data_service": "none: decoded here",
    "root": "the CSV's folder",
    "path_column": "the first of path, filename, file, image",
    "label_columns": "none",
    "label_delimiter": "none: one label per image",
    "split_column": "none: drawn per class",
    "classes": "all",
    "labels_per_class": "all",
    "test_per_class": "all",
    "validation_per_class": "all",
    "exclude_issues": "none",
    "relabel_issues": "none",
    "unlabelled": "none",
    "dense_units": "none",
    "weights": "imagenet",
    "class_weight": "none",
    "tta": "none",
}


# --- what every script shares ---------------------------------------------------------------------------------


def run_command(prog, parser, argv, work):
    """Parses `argv`, quiets the frameworks and returns `work(args)`'s exit code under one rule: a bad flag or a
    `ValueError` is a usage error (2), any other exception a runtime failure (1); either prints one line
    `prog: error: ...`, and the traceback too with `--verbose`."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage and the problem
        return int(e.code or 0)
    verbose = getattr(args, "verbose", False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level  # the command's way of showing log lines lasts while it runs
    quiet_frameworks(verbose, data_out=getattr(args, "json", False))
    try:
        with terminated_as_interrupt(), own_temporary_folder():
            return int(work(args) or 0)
    except SystemExit as e:  # parser.error() inside work
        return int(e.code or 0)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: one line saying where things stand
        if verbose:
            traceback.print_exc()
        print(f"{prog}: {str(e) or 'interrupted.'}", file=sys.stderr)
        return 130
    except Exception as e:
        if verbose:
            traceback.print_exc()
        message = as_flags(error_line(e))
        hint = "" if verbose or isinstance(e, ValueError) else "  (--verbose shows the traceback)"
        print(f"{prog}: error: {message}{hint}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@contextlib.contextmanager
def terminated_as_interrupt():
    """SIGTERM (a scheduler's or `kill`'s stop) raises KeyboardInterrupt while the block runs, as Ctrl-C does, so
    that both end a command the same way: committed work kept, one line saying so."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


TEMPORARY_PREFIX = "keras-transfer-"


@contextlib.contextmanager
def own_temporary_folder():
    """While the block runs, Python's temporary files (TensorFlow's AutoGraph writes a module per traced function
    there and removes them only at a clean exit) go to a folder of this process, `keras-transfer-<pid>-*`; on
    entry, those of processes that no longer run (killed) are removed."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        match = re.match(rf"{TEMPORARY_PREFIX}(\d+)-", name)
        if match and not process_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-")
    previous, tempfile.tempdir = tempfile.tempdir, folder
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        atexit.register(shutil.rmtree, folder, ignore_errors=True)  # AutoGraph's own removal runs at exit too


_SETTING = re.compile(
    r"\b(" + "|".join(f.name for f in dataclasses.fields(RunConfig)) + r")=('[^']*'|\"[^\"]*\"|[^\s,;)]+)"
)


def as_flags(message):
    """A library message in the command's words: a run setting's `name=value` (Python's spelling) as
    `--name value`."""

    def flag(match):
        value = match.group(2).strip("'\"").rstrip(".")
        value = {"None": "none", "True": "true", "False": "false"}.get(value, value)
        return f"--{match.group(1).replace('_', '-')} {value}"

    return _SETTING.sub(flag, message)


def add_verbose(parser):
    parser.add_argument(
        "--verbose", action="store_true", help="Keras progress bars and warnings, TensorFlow's log lines, tracebacks"
    )
    return parser


def add_model_loading(parser):
    """The flags of a command that loads a `.keras` file a user made: `--unsafe` and `--import MODULE`."""
    parser.add_argument(
        "--unsafe",
        action="store_true",
        help="load Lambda layers (Python code) of a .keras file: Keras's safe_mode=False, for a file you trust",
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this Python module first (one that defines and registers the model's own layers); repeatable",
    )
    return parser


def model_loading(args):
    """Imports the modules `--import` names (the current folder first on the path); returns `load_model`'s
    keyword arguments for `--unsafe`."""
    sys.path.insert(0, os.getcwd())
    try:
        for name in args.imports:
            try:
                importlib.import_module(name)
            except ImportError as e:
                raise ValueError(f"argument --import: cannot import {name!r}: {e}") from e
    finally:
        sys.path.remove(os.getcwd())
    return {"safe_mode": not args.unsafe}


class _Terminal(logging.StreamHandler):
    """The command's side of "the library logs, the command prints": INFO lines (the run's story) to standard
    output, warnings and errors to standard error; everything to standard error when standard output carries
    data (`--json`); the streams looked up at each line (tests swap them)."""

    def __init__(self, data_out=False):
        super().__init__()
        self.data_out = data_out

    def emit(self, record):
        self.stream = sys.stdout if record.levelno < logging.WARNING and not self.data_out else sys.stderr
        super().emit(record)


def quiet_frameworks(verbose=False, data_out=False):
    """What a command shows: the library's INFO lines on standard output (standard error with `data_out`: when
    standard output is the command's JSON), its warnings on standard error; without `verbose`, none of TensorFlow's
    start-up and log lines (`quiet_tensorflow`) nor Keras's UserWarnings (about choices the library made for the
    user)."""
    handler = _Terminal(data_out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    if not verbose:
        quiet_tensorflow()
        warnings.filterwarnings("ignore", category=UserWarning, module=r"keras(\.|$)")


def positive_int(value):
    """argparse type: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"invalid value {number}: must be >= 1")
    return number


def port_arg(value):
    """argparse type: a TCP port, 1 to 65535."""
    port = positive_int(value)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: a port is 1 to 65535")
    return port


def backbone_arg(value):
    """argparse type: a backbone key, hub:URL_OR_FOLDER or keras_hub:PRESET_OR_FOLDER."""
    if value not in BACKBONES and not value.startswith(("hub:", "keras_hub:")):
        raise argparse.ArgumentTypeError(
            f"invalid backbone {value!r}: expected one of {', '.join(sorted(BACKBONES))}, hub:URL_OR_FOLDER or "
            "keras_hub:PRESET_OR_FOLDER"
        )
    return value


def class_list(values):
    """Class names or ids from the command line or a config file: digit strings become ids."""
    return None if values is None else [int(c) if str(c).isdigit() else c for c in values]


def weights_arg(value):
    """`"none"` (any case) as None; any other weights value as given."""
    return None if value is None or str(value).lower() == "none" else value


# --- keras-transfer -------------------------------------------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-transfer",
        description="Fine-tune a pretrained backbone into an evaluated, exported classifier (these flags). Other "
        "commands, each with its own --help: "
        + "; ".join(f"keras-transfer {name}: {what}" for name, (what, _) in COMMANDS.items() if name != "run")
        + ".",
        allow_abbrev=False,  # an abbreviation that works today breaks when a flag is added
    )
    parser.add_argument("--config", help="YAML file of settings (the flags' names with underscores)")
    add_verbose(parser)
    fields = {field.name: field for field in dataclasses.fields(RunConfig)}
    defaults = RunConfig()
    for group, names in FLAGS.items():
        arguments = parser.add_argument_group(group)
        for name in names:
            flag = "--" + name.replace("_", "-")
            arguments.add_argument(flag, **_flag_options(name, fields[name], getattr(defaults, name)))
    return parser


def _flag_options(name, field, default):
    shown = DEFAULT_TEXT.get(name, default)
    options = {"default": argparse.SUPPRESS, "help": f"{HELP.get(name, '')} (default: {shown})".strip()}
    if isinstance(default, bool):
        return {**options, "action": argparse.BooleanOptionalAction}
    if name in ("classes", "dense_units", "label_columns"):
        return {**options, "nargs": "+", "type": int if name == "dense_units" else str}
    if name == "augment":  # a bare --augment is --augment true
        options = {**options, "nargs": "?", "const": "true"}
    if name in CHOICES:
        return {
            **options,
            "choices": CHOICES[name],
            "metavar": name.upper(),
            "help": f"{HELP.get(name, '')}; one of: {', '.join(CHOICES[name])} (default: {shown})".lstrip("; "),
        }
    if name == "unfreeze":
        return {**options, "type": _policy}
    if name == "backbone":
        return {
            **options,
            "type": backbone_arg,
            "metavar": "BACKBONE",
            "help": f"one of: {', '.join(BACKBONES)}; hub:URL_OR_FOLDER (a TF Hub module); or "
            f"keras_hub:PRESET_OR_FOLDER (a keras-hub preset) (default: {default})",
        }
    if default is not None:
        return {**options, "type": type(default)}
    return {**options, "type": int if "int" in str(field.type) else str}


def _policy(value):
    if not POLICY.match(value):
        raise argparse.ArgumentTypeError(f"invalid policy {value!r}: expected one of {', '.join(POLICIES)}")
    return value


def parse_config(argv=None):
    """Merges RunConfig defaults < --config file < flags. Exits 2 on bad arguments, naming the flag and value."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return parser, config_from_args(parser, args)


def config_from_args(parser, args):
    """The RunConfig of parsed arguments; every value checked before anything runs (parser.error: exit 2)."""
    values = {}
    if getattr(args, "config", None):
        try:
            values.update(load_config(args.config))
        except ValueError as e:
            parser.error(f"argument --config: {e}")
    values.update({k: v for k, v in vars(args).items() if k not in ("config", "verbose")})
    config = RunConfig(**from_words(values))
    config.classes = class_list(config.classes)
    problem = range_problem(config)
    if problem:
        name, value, allowed = problem
        parser.error(f"argument --{name.replace('_', '-')}: invalid value {value!r}: must be {allowed}")
    return config


def main(argv=None) -> int:
    """`keras-transfer [run] [flags]` or `keras-transfer COMMAND ...` (the table `COMMANDS`); returns the exit code
    (see the module docstring). TensorFlow loads after the flags are parsed (with a command's own module, quieted
    first unless `--verbose`), so `--help` and flag errors answer at once."""
    argv = sys.argv[1:] if argv is None else list(argv)
    name = argv[0] if argv and argv[0] in COMMANDS else "run"
    argv = argv[1:] if argv[:1] == [name] else argv
    return COMMANDS[name][1](argv)


def _run_command(argv):
    parser = build_parser()
    return run_command("keras-transfer", parser, argv, lambda args: _run(config_from_args(parser, args), args.verbose))


def _module_command(name):
    """The handler of a command whose parser and work live in `keras_transfer.commands.<name>`."""

    def handle(argv):
        if "--verbose" not in argv:
            quiet_tensorflow()  # before the module loads TensorFlow
        module = importlib.import_module(f"keras_transfer.commands.{name}")
        parser = module.build_parser()
        parser.prog = f"keras-transfer {name}"
        return run_command(parser.prog, parser, argv, module.run)

    return handle


def _run(config, verbose):
    from keras_transfer.recipe import run

    return run(config, verbose)


def _lr_find_command(argv):
    """`keras-transfer lr-find [the run's flags] [--plot PATH]`: the learning-rate range test for both stages."""
    parser = build_parser()
    parser.prog = "keras-transfer lr-find"
    parser.description = "Suggest both stages' learning rates with a range test (nothing is trained for keeps)."
    parser.add_argument("--plot", default="lr_find.png", help="where to save the plot (default: lr_find.png)")
    parser.add_argument("--steps", type=positive_int, default=100, help="steps of each range test (default: 100)")

    def work(args):
        from keras_transfer.recipe import find_rates

        plot, steps = args.plot, args.steps
        del args.plot, args.steps
        return find_rates(config_from_args(parser, args), plot, steps)

    return run_command("keras-transfer lr-find", parser, argv, work)


def _report_command(argv):
    parser = add_verbose(
        argparse.ArgumentParser(
            prog="keras-transfer report", description="(Re)build report.html from a run folder's files."
        )
    )
    parser.add_argument("run_dir", help="a run folder (config.yaml, history.csv, report.json, ...)")
    return run_command("keras-transfer report", parser, argv, _write_report)


def _export_bench_command(argv):
    parser = add_verbose(
        argparse.ArgumentParser(
            prog="keras-transfer export-bench",
            description="Write a finished run's model in every export format and measure each file's size, accuracy "
            "on the run's evaluation images, agreement with Keras and speed on this machine (<run>/exports/).",
        )
    )
    parser.add_argument("run_dir", help="a finished run folder (config.yaml and model.keras)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timing rounds, formats alternating")

    def work(args):
        from keras_transfer.recipe import export_bench

        return export_bench(args.run_dir, args.repeats)

    return run_command("keras-transfer export-bench", parser, argv, work)


def _write_shards_command(argv):
    parser = add_verbose(
        argparse.ArgumentParser(
            prog="keras-transfer write-shards",
            description="Write a source (a folder, a CSV file, tfds:NAME, digits, fashion_mnist) as TFRecord shards "
            "and a manifest.json, which --data then reads (each of several workers its own shards).",
        )
    )
    parser.add_argument("source", help="what --data takes")
    parser.add_argument("output_dir", help="an empty folder (or a gs://... path)")
    parser.add_argument("--num-shards", type=positive_int, default=None, help="per split (default: ~150 MB each)")
    parser.add_argument("--image-size", type=positive_int, default=None, help="re-encode the images at this side")

    def work(args):
        from keras_transfer.data import write_shards

        manifest = write_shards(args.source, args.output_dir, num_shards=args.num_shards, image_size=args.image_size)
        for split, shards in manifest["shards"].items():
            size = sum(s["bytes"] for s in shards) / 1e6
            print(f"{split}: {sum(s['records'] for s in shards)} images in {len(shards)} shards, {size:.1f} MB")
        print(f"manifest: {args.output_dir}/manifest.json ({len(manifest['skipped'])} files skipped)")

    return run_command("keras-transfer write-shards", parser, argv, work)


def _data_service_command(argv):
    parser = add_verbose(
        argparse.ArgumentParser(
            prog="keras-transfer data-service",
            description="Run a tf.data service here (a dispatcher and its workers) until interrupted; runs given "
            "--data-service grpc://HOST:PORT have their training images decoded by it.",
        )
    )
    parser.add_argument("--port", type=port_arg, default=5050, help="the dispatcher's port (1-65535)")
    parser.add_argument("--workers", type=positive_int, default=1, help="worker servers in this process")

    def work(args):
        from keras_transfer.data import start_data_service

        service = start_data_service(args.port, args.workers)
        print(
            f"tf.data service at {service['address']} with {args.workers} workers; pass --data-service "
            f"{service['address']} (Ctrl-C stops it)",
            flush=True,
        )
        try:  # waits in Python, not in dispatcher.join(), so that Ctrl-C and SIGTERM reach it
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0

    return run_command("keras-transfer data-service", parser, argv, work)


def _write_report(args):
    from keras_transfer.report import write_html

    print(f"Report: {write_html(args.run_dir)}")


COMMANDS = {  # keras-transfer COMMAND -> (what it does, handler(argv) -> exit code); `run` is the default
    "run": ("fine-tune, evaluate and export (the default: keras-transfer [run] --data ...)", _run_command),
    "predict": ("predict image files with a .keras, SavedModel, .tflite or .onnx model", _module_command("predict")),
    "export": ("export a .keras model as a SavedModel, TFLite and/or ONNX", _module_command("export")),
    "pretrain": ("pretrain a backbone from scratch (supervised or SimCLR)", _module_command("pretrain")),
    "retrieve": ("index a folder of images and find the most similar ones", _module_command("retrieve")),
    "label-issues": (
        "find suspected label errors (out-of-sample, confident learning)",
        _module_command("label_issues"),
    ),
    "rank": ("rank candidate backbones on your images (LogME, NLEEP, H-score, probe)", _module_command("rank")),
    "report": ("rebuild a run's report.html", _report_command),
    "lr-find": ("suggest both stages' learning rates (the run's flags)", _lr_find_command),
    "export-bench": ("each export format's size, accuracy and speed for a run", _export_bench_command),
    "write-shards": ("write a source as TFRecord shards", _write_shards_command),
    "data-service": ("run a tf.data service for --data-service", _data_service_command),
}


if __name__ == "__main__":
    sys.exit(main())
