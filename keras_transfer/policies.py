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
from keras_transfer.models import ModelView, backbone_spec, is_hub, model_view

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
    summary = apply_placement(model, place_policy(model_view(model), policy), train_batchnorm=train_batchnorm)
    if getattr(model, "compiled", False):  # fine_tune compiles each stage itself: the hint is for direct callers
        logger.info("Trainable layers changed: call model.compile() again before training.")
    return summary


@dataclasses.dataclass(frozen=True)
class Placement:
    """A policy placed over a model's backbone layers (`place_policy`): what `apply_placement` sets."""

    policy: str
    start: int  # the first trainable layer's index in `view.layers`; len(view.layers) when none trains
    view: ModelView


def apply_placement(model, placement, *, train_batchnorm=False):
    """Sets the trainable flags a `Placement` says (see `set_trainable`); returns a `TrainableSummary`."""
    backbone, layers, start = placement.view.backbone, placement.view.layers, placement.start
    backbone.trainable = start < len(layers)
    for i, layer in enumerate(layers):
        layer.trainable = i >= start
    frozen_batchnorm = 0
    for layer in placement.view.batchnorm:
        if not (train_batchnorm and layer.trainable):
            layer.trainable = False
            frozen_batchnorm += 1
    for layer in model.layers:
        if layer is not backbone:
            layer.trainable = True
    with_weights = [layer for layer in layers if layer.weights]
    summary = TrainableSummary(
        policy=placement.policy,
        first_trainable=layers[start].name if start < len(layers) else None,
        trainable_layers=sum(1 for layer in with_weights if layer.trainable),
        frozen_layers=sum(1 for layer in with_weights if not layer.trainable),
        trainable_params=_count(model.trainable_weights),
        frozen_params=_count(model.non_trainable_weights),
        frozen_batchnorm=frozen_batchnorm,
    )
    logger.debug("%s", summary)
    return summary


def layer_decay_scales(view, decay):
    """`{variable path: decay ** depth}` for the trainable weights of the backbone's stages (the table row's):
    the top stage at depth 1, each stage below one deeper (layers below the first stage belong to it); the head
    is not listed (1: the full rate). timm's layer decay, fastai's discriminative rates. `view`: the model's
    `models.model_view`.

    Raises:
        ValueError: for a model whose backbone has no table row (no stages to decay over).
    """
    spec, key = view.spec, view.key
    if spec is None or is_hub(key or ""):
        raise ValueError(
            f"layer_decay needs the backbone's stages (its table row), but model {view.model_name!r} has none; "
            "pass layer_decay=1.0."
        )
    layers = view.layers
    names = [layer.name for layer in layers]
    starts = [_stage_start(names, k, f"stages:{k}", spec, key, view.model_name) for k in range(1, len(spec.stages) + 1)]
    scales = {}
    for i, layer in enumerate(layers):
        depth = next(k for k, start in enumerate(starts, 1) if i >= start)
        scales.update({w.path: float(decay) ** depth for w in layer.trainable_weights})
    return scales


def _count(weights):
    return int(sum(keras.ops.size(w) for w in weights))


def check_policy(policy, backbone=None):
    """Checks `policy` before a model is built, without building anything: its form and, for `stages:K` and a
    backbone key, K against the backbone's table row. A `from:NAME` is placed over the built model's layer
    names (`place_policy`).

    Raises:
        ValueError: as `set_trainable` would for its form and stages.
    """
    spec = backbone_spec(backbone) if backbone is not None else None
    if str(policy).startswith("stages:") and spec is None:
        return  # a model not from the table: `place_policy` says so with the model's name
    _first_trainable(None, policy, spec, backbone, backbone)


def place_policy(view, policy):
    """`policy` placed over a model's backbone layers (`view`: its `models.model_view`): a `Placement` holding
    the index of the first trainable layer (in graph order, input layers left out). Pure: nothing is built or
    changed.

    Raises:
        ValueError: for an unknown or malformed policy, a NAME no layer starts with, or K out of range.
    """
    names = [layer.name for layer in view.layers]
    return Placement(policy, _first_trainable(names, policy, view.spec, view.key, view.model_name), view)


def _first_trainable(names, policy, spec, key, model_name):
    """Index of the first trainable backbone layer under `policy` (len(names) when none); `names` None checks the
    policy without placing it."""
    kind, _, arg = str(policy).partition(":")
    count = len(names) if names is not None else 0
    if policy == "frozen":
        return count
    if policy == "all":
        return 0
    if kind == "top" and arg.isdigit():
        return max(count - int(arg), 0)
    if kind == "from" and arg:
        if names is None:
            return 0
        for i, name in enumerate(names):
            if name.startswith(arg):
                return i
        hint = f" Stage prefixes of {key!r}: {', '.join(spec.stages)}." if spec else ""
        some = ", ".join([*names[:3], "...", *names[len(names) // 2 : len(names) // 2 + 2], "...", *names[-2:]])
        raise ValueError(
            f"No backbone layer name starts with {arg!r}.{hint} Its {len(names)} layers include: {some}. "
            f"Received: policy={policy!r}"
        )
    if kind == "stages" and arg.isdigit():
        return _stage_start(names, int(arg), policy, spec, key, model_name)
    raise ValueError(f"Unknown policy {policy!r}. Expected one of: {', '.join(POLICIES)}. Received: policy={policy!r}")


def _stage_start(names, k, policy, spec, key, model_name):
    if spec is None:
        raise ValueError(
            f"Policy 'stages:K' needs to know the model's backbone, but model {model_name!r} was not made by "
            f"build_model; policies that apply: 'frozen', 'all', 'top:N', 'from:NAME'. Received: policy={policy!r}"
        )
    n = len(spec.stages)
    if not 1 <= k <= n:
        raise ValueError(
            f"Backbone {key!r} has {n} stage{'s' if n != 1 else ''} ({', '.join(spec.stages)}); K must be in "
            f"1..{n}. Received: policy={policy!r}"
        )
    if k == n or names is None:
        return 0
    if spec.stage_marks == "end":
        return names.index(spec.stages[-k - 1]) + 1
    return next(i for i, name in enumerate(names) if name.startswith(spec.stages[-k]))
