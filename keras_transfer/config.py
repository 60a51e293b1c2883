"""The settings of one fine-tuning run, written once: the CLI's defaults and `--config` files come from here."""

from __future__ import annotations

import dataclasses
import math
import typing

import yaml

# The names each choice accepts, for the library and the CLI alike (the CLI lists them without loading TensorFlow).
POOLINGS = ("avg", "max", "flatten")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION = ("off", "auto", "mixed_float16", "mixed_bfloat16")
POLICIES = ("frozen", "all", "top:N", "from:NAME", "stages:K")
SEMI_SUPERVISED = ("pseudo-label", "fixmatch")

# The range of each numeric setting (None, where a setting allows it, is unset): checked before anything is written.
POSITIVE = (
    "batch_size",
    "learning_rate",
    "fine_tune_learning_rate",
    "image_size",
    "labels_per_class",
    "test_per_class",
    "validation_per_class",
    "peer_timeout",
    "pseudo_labels_per_class",
)
NON_NEGATIVE = ("head_epochs", "fine_tune_epochs", "early_stopping")
FRACTIONS = ("validation_split", "test_split", "dropout", "label_smoothing")


# The words a command line or a YAML file uses for a value that is not a string in the library: setting -> {word:
# value}. `from_words` translates them at those edges; a RunConfig holds the library's values.
WORDS = {
    "weights": {"none": None},
    "head_init": {"none": None},
    "class_weight": {"none": None},
    "tta": {"none": None},
    "cache_features": {"true": True, "false": False},
    "xla": {"on": True, "off": False},
    "augment": {"true": True, "false": False},
}


def from_words(values):
    """`values` (setting -> value) with the words of `WORDS` (any case) turned into library values."""
    word = lambda v: v.lower() if isinstance(v, str) else v
    return {k: WORDS[k].get(word(v), v) if k in WORDS else v for k, v in values.items()}


@dataclasses.dataclass
class RunConfig:
    """Every setting of `keras-transfer run`, in library values (the command line and a YAML file given with
    `--config` use the same keys; `from_words` translates their words)."""

    # Data
    data: str = "digits"
    validation: str | None = None  # a source of its own for the validation split
    test: str | None = None  # and for the test split
    exclude_issues: str | None = None  # a label_issues.csv: its training images left out
    relabel_issues: str | None = None  # or given their suggested class
    unlabelled: str | None = None  # "rest" (with labels_per_class) or a folder: images without labels, used too
    data_dir: str | None = None
    data_service: str | None = None
    # A table (CSV) of image paths and labels: its columns, and the folder its relative paths start from
    root: str | None = None
    path_column: str | None = None
    label_column: str = "label"
    label_columns: list | None = None
    label_delimiter: str | None = None
    split_column: str | None = None
    image_size: int | None = None  # None: the backbone's default size
    batch_size: int = 32  # per replica
    validation_split: float = 0.2
    test_split: float = 0.1
    classes: list | None = None
    labels_per_class: int | None = None
    test_per_class: int | None = None
    validation_per_class: int | None = None  # at most this many validation images per class (validated each epoch)
    augment: bool | str = "auto"  # "auto": on for image files (folders, tables), off for arrays and TFDS
    seed: int = 0
    # Model
    backbone: str = "efficientnet_lite0"  # its ImageNet weights install with the package: works offline
    weights: str | None = "imagenet"  # "imagenet", None (random) or a file path
    pooling: str = "avg"
    dense_units: list = dataclasses.field(default_factory=list)
    dropout: float = 0.2
    # Training
    head_epochs: int = 1  # stage 1 (it starts at the linear probe: see head_init)
    fine_tune_epochs: int = 10
    unfreeze: str = "all"
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    optimizer: str = "adam"
    label_smoothing: float = 0.0
    train_batchnorm: bool = False  # stage 2 trains BatchNormalization too (from scratch), statistics recomputed
    head_init: str | None = "auto"  # "probe": stage 1 starts from a logistic regression on the features (LP-FT);
    # "auto": where the head allows it (no hidden dense layers); None: a random head
    class_weight: str | None = None  # "balanced": classes weighted by n / (n_classes * n_class), in both stages
    layer_decay: float = 1.0  # stage 2: each backbone stage below the head at this factor of the rate above it
    early_stopping: int = 3  # patience in epochs on the validation loss, best weights kept; 0 turns it off
    cache_features: bool | str = "auto"  # True, False or "auto"
    tta: str | None = None  # "flip": evaluate on each image and its mirror, probabilities averaged
    compare_scratch: bool = False  # also train the same model from random weights on the same data, compare
    semi_supervised: str = "pseudo-label"  # how `unlabelled` images are used (SEMI_SUPERVISED)
    pseudo_labels_per_class: int = 100  # at most this many pseudo-labelled images per class
    # Distribution
    strategy: str = "auto"
    mixed_precision: str = "off"
    xla: bool | str = "auto"  # True, False or "auto": on for GPUs, off on CPU, where it measured slower
    peer_timeout: int = 300  # seconds a tf.data service or another worker may not answer before the run fails
    # Output
    output: str = "saved_models/run"
    overwrite: bool = False  # empty the run folder first when it holds another run
    export: str | None = None
    export_onnx: bool = False  # also <output>/model.onnx (+ model.labels.txt) for ONNX Runtime
    export_bench: bool = False  # also every export format's size, accuracy and speed (<output>/exports/)
    label_issues: bool = True  # look for suspected label errors among the training images (label_issues.csv)

    def to_yaml(self):
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def load_config(path):
    """Reads a YAML file of `RunConfig` keys into a dict, checking every key and the type of every value.

    Raises:
        ValueError: for a file that cannot be read or parsed (one line, naming the file and line), that is not a
            mapping, or that has unknown keys or values of the wrong type.
    """
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise ValueError(f"Cannot read config file {path!r}: {e.strerror or e}.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(
            f"Config file {path!r} is not valid YAML ({where.strip() or 'unknown position'}): "
            f"{getattr(e, 'problem', None) or e}."
        ) from None
    if not isinstance(values, dict):
        raise ValueError(f"Config file {path!r} must hold a mapping of settings. Received: {type(values).__name__}")
    types = typing.get_type_hints(RunConfig)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(
            f"Unknown keys in config file {path!r}: {', '.join(unknown)}. Expected keys: {', '.join(sorted(types))}."
        )
    values = from_words(values)
    for key, value in values.items():
        if not _fits(value, types[key]):
            raise ValueError(f"Config file {path!r}: {key} must be {_describe(types[key])}. Received: {key}: {value!r}")
    return values


def _fits(value, annotation):
    options = (
        typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, _UnionType) else (annotation,)
    )
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option in (str, bool, list) and type(value) is option:
            return True
    return False


def _describe(annotation):
    names = {
        type(None): "null",
        float: "a number",
        int: "an integer",
        str: "a string",
        bool: "true or false",
        list: "a list",
    }
    options = typing.get_args(annotation) or (annotation,)
    return " or ".join(names.get(option, str(option)) for option in options)


_UnionType = type(int | None)


def check_ranges(config):
    """Raises a ValueError naming the first numeric setting of `config` out of its range (`range_problem`)."""
    problem = range_problem(config)
    if problem:
        name, value, allowed = problem
        raise ValueError(f"{name} must be a finite number {allowed}. Received: {name}={value!r}")


def range_problem(config):
    """`(setting, value, what is allowed)` for the first numeric setting of `config` not finite or out of its range
    (`POSITIVE`, `NON_NEGATIVE`, `FRACTIONS`, and `layer_decay` in (0, 1]); None when all fit."""
    ranges = [(name, "> 0", lambda v: v > 0) for name in POSITIVE]
    ranges += [(name, ">= 0", lambda v: v >= 0) for name in NON_NEGATIVE]
    ranges += [(name, "in [0, 1)", lambda v: 0 <= v < 1) for name in FRACTIONS]
    ranges += [("layer_decay", "in (0, 1]", lambda v: 0 < v <= 1)]
    for name, allowed, fits in ranges:
        value = getattr(config, name)
        if value is not None and not isinstance(value, (tuple, list)) and not (math.isfinite(value) and fits(value)):
            return name, value, allowed
    return None
