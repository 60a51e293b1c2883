"""The settings of one fine-tuning run, written once: the CLI's defaults and `--config` files come from here."""

from __future__ import annotations

import dataclasses

import yaml


@dataclasses.dataclass
class RunConfig:
    """Every setting of `scripts/finetune.py`; a YAML file given with `--config` uses the same keys."""

    # Data
    data: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None  # None: the backbone's default size
    batch_size: int = 32  # per replica
    validation_split: float = 0.2
    test_split: float = 0.1
    classes: list | None = None
    labels_per_class: int | None = None
    augment: bool = False
    seed: int = 0
    # Model
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"  # "imagenet", "none" or a file path
    head: str = "avg"
    dense_units: list = dataclasses.field(default_factory=list)
    dropout: float = 0.2
    # Training
    epochs: int = 5
    fine_tune_epochs: int = 5
    unfreeze: str = "stages:1"
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-5
    optimizer: str = "adam"
    label_smoothing: float = 0.0
    train_batchnorm: bool = False  # stage 2 trains BatchNormalization too (from scratch), statistics recomputed
    head_init: str = "none"  # "probe": stage 1 starts from a logistic regression on the cached features (LP-FT)
    early_stopping: int = 0  # patience in epochs; 0 turns it off
    cache_features: str = "auto"
    compare_scratch: bool = False  # also train the same model from random weights on the same data, compare
    # Distribution
    strategy: str = "auto"
    mixed_precision: str = "off"
    xla: str = "auto"  # "auto": on for GPUs, off on CPU, where it measured slower
    # Output
    output: str = "saved_models/run"
    export: str | None = None

    def to_yaml(self):
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def load_config(path):
    """Reads a YAML file of `RunConfig` keys into a dict, rejecting unknown keys.

    Raises:
        ValueError: for a file that is not a mapping or has keys `RunConfig` does not know.
    """
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"Config file {path!r} must hold a mapping of settings. Received: {type(values).__name__}")
    known = {field.name for field in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown keys in config file {path!r}: {', '.join(unknown)}. Expected keys: {', '.join(sorted(known))}.")
    return values
