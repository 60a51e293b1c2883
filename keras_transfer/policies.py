"""Trainable policies: which backbone layers a fine-tuning stage updates.

BatchNormalization layers stay frozen (and so in inference mode) unless asked otherwise. With Keras 3 the
backbone's `training=False` call alone does not hold them: `fit()` still updates moving statistics of
trainable BatchNormalization layers, while `trainable=False` does. Recompile after every change.
"""

from __future__ import annotations

import dataclasses
import logging

import keras

from keras_transfer.config import POLICIES
from keras_transfer.models import backbone_key, batchnorm_layers, get_backbone, model_spec

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainableSummary:
    """What `set_trainable` changed; prints as a short report."""

    policy: str
    first_trainable: str | None
    trainable_layers: int
    frozen_layers: int
    trainable_params: int
    frozen_params: int
    frozen_batchnorm: int

    def __str__(self):
        start = f" from {self.first_trainable!r}" if self.first_trainable else ""
        total = self.trainable_layers + self.frozen_layers
        return (
            f"policy {self.policy!r}: {self.trainable_layers} of {total} backbone layers with weights "
            f"trainable{start}\n"
            f"  parameters: {self.trainable_params:,} trainable, {self.frozen_params:,} frozen\n"
            f"  batch normalization layers kept in inference mode: {self.frozen_batchnorm}"
        )


def set_trainable(model, policy="frozen", *, train_batchnorm=False):
    """Sets which backbone layers train; head layers always train.

    Policies, over the backbone's layers in graph order:
    - `"frozen"`: freeze the whole backbone (train the head only).
    - `"all"`: train every backbone layer.
    - `"top:N"`: train the last N backbone layers.
    - `"from:NAME"`: train the first layer whose name starts with NAME and every layer after it
      (`"from:block5"` on vgg16).
    - `"stages:K"`: train the last K stages listed in the backbone's table row (a hub module is one stage).
      The backbone key is read from the model, so renamed and reloaded models work.

    Args:
        model: a model from `build_model`.
        policy: one of the policies above.
        train_batchnorm: also train BatchNormalization layers inside the trainable part. By default they stay
            frozen, so their moving statistics and scale/offset keep their pretrained values.

    Returns:
        A `TrainableSummary`.

    Raises:
        ValueError: for an unknown or malformed policy, a NAME no layer starts with, or K out of range.

    Example:
    >>> from keras_transfer import build_model
    >>> model = build_model("vgg16", 2, input_shape=(32, 32), weights=None)
    >>> print(set_trainable(model, "from:block5").trainable_layers)
    3
    """
    backbone = get_backbone(model)
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    start = _first_trainable(model, layers, policy)

    backbone.trainable = start < len(layers)
    for i, layer in enumerate(layers):
        layer.trainable = i >= start
    frozen_batchnorm = 0
    for layer in batchnorm_layers(backbone):
        if not (train_batchnorm and layer.trainable):
            layer.trainable = False
            frozen_batchnorm += 1
    for layer in model.layers:
        if layer is not backbone:
            layer.trainable = True
    if getattr(model, "compiled", False):
        logger.info("Trainable layers changed: call model.compile() again before training.")

    with_weights = [layer for layer in layers if layer.weights]
    summary = TrainableSummary(
        policy=policy,
        first_trainable=layers[start].name if start < len(layers) else None,
        trainable_layers=sum(1 for layer in with_weights if layer.trainable),
        frozen_layers=sum(1 for layer in with_weights if not layer.trainable),
        trainable_params=_count(model.trainable_weights),
        frozen_params=_count(model.non_trainable_weights),
        frozen_batchnorm=frozen_batchnorm,
    )
    logger.debug("%s", summary)
    return summary


def _count(weights):
    return int(sum(keras.ops.size(w) for w in weights))


def _first_trainable(model, layers, policy):
    """Index of the first trainable backbone layer under `policy` (len(layers) when none)."""
    kind, _, arg = str(policy).partition(":")
    if policy == "frozen":
        return len(layers)
    if policy == "all":
        return 0
    if kind == "top" and arg.isdigit():
        return max(len(layers) - int(arg), 0)
    if kind == "from" and arg:
        for i, layer in enumerate(layers):
            if layer.name.startswith(arg):
                return i
        spec = model_spec(model)
        hint = f" Stage prefixes of {backbone_key(model)!r}: {', '.join(spec.stages)}." if spec else ""
        raise ValueError(f"No backbone layer name starts with {arg!r}.{hint} Received: policy={policy!r}")
    if kind == "stages" and arg.isdigit():
        return _stage_start(model, layers, int(arg), policy)
    raise ValueError(f"Unknown policy {policy!r}. Expected one of: {', '.join(POLICIES)}. Received: policy={policy!r}")


def _stage_start(model, layers, k, policy):
    spec, key = model_spec(model), backbone_key(model)
    if spec is None:
        raise ValueError(
            f"Policy 'stages:K' needs to know the model's backbone, but model {model.name!r} was not made by "
            f"build_model; policies that apply: 'frozen', 'all', 'top:N', 'from:NAME'. Received: policy={policy!r}"
        )
    n = len(spec.stages)
    if not 1 <= k <= n:
        raise ValueError(f"Backbone {key!r} has {n} stages; K must be in 1..{n}. Received: policy={policy!r}")
    if k == n:
        return 0
    names = [layer.name for layer in layers]
    if spec.stage_marks == "end":
        return names.index(spec.stages[-k - 1]) + 1
    return next(i for i, name in enumerate(names) if name.startswith(spec.stages[-k]))
