"""Classification heads put on top of a backbone's feature map."""

from __future__ import annotations

import keras

# Layer names of the head (models.py re-exports them; other modules read a model through models.py).
HEAD_POOL, PREDICTIONS = "head_pool", "predictions"
# pooling name -> pooling layer; "flatten" keeps spatial positions and so needs a fixed input size.
POOLINGS = {
    "avg": keras.layers.GlobalAveragePooling2D,
    "max": keras.layers.GlobalMaxPooling2D,
    "flatten": keras.layers.Flatten,
}
ACTIVATIONS = ("softmax", "sigmoid")


def add_head(features, num_classes, *, pooling="avg", dense_units=(), dropout=0.0, activation="softmax"):
    """Adds pooling, optional dense layers and the output layer to a feature map.

    Layer names are fixed: `head_pool`, `head_dense_0`, `head_dense_1`, ..., `head_dropout_<i>` (before the
    i-th dense layer, the output layer counting last) and `predictions`. The output layer computes in float32
    even under a mixed-precision policy, so losses and probabilities keep full precision.

    Args:
        features: the backbone's output tensor, `(batch, height, width, channels)`.
        num_classes: number of output units; 1 means binary classification with a sigmoid.
        pooling: `"avg"`, `"max"` or `"flatten"`.
        dense_units: sizes of hidden ReLU layers between pooling and the output.
        dropout: dropout rate in [0, 1) applied before every dense layer; 0 adds no dropout layer.
        activation: `"softmax"` (one label per image) or `"sigmoid"` (binary or multi-label).

    Returns:
        The output tensor, `(batch, num_classes)` probabilities.

    Raises:
        ValueError: for an unknown pooling or activation, a bad rate, unit count or class count, or
            `"flatten"` over a feature map of unknown size.
    """
    if pooling not in POOLINGS:
        raise ValueError(
            f"Unknown pooling {pooling!r}. Expected one of: {', '.join(POOLINGS)}. Received: pooling={pooling!r}"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {activation!r}. Expected one of: {', '.join(ACTIVATIONS)}. "
            f"Received: activation={activation!r}"
        )
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1. Received: num_classes={num_classes!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    units = tuple(dense_units)
    if any(not isinstance(u, int) or u < 1 for u in units):
        raise ValueError(f"dense_units must be positive integers. Received: dense_units={dense_units!r}")
    if pooling == "flatten" and None in tuple(features.shape[1:]):
        raise ValueError(
            "pooling='flatten' needs a fixed input size, but the backbone's feature map has shape "
            f"{tuple(features.shape)}. Pass input_shape=(height, width) or use pooling='avg' or 'max'. "
            f"Received: pooling={pooling!r}"
        )

    x = POOLINGS[pooling](name=HEAD_POOL)(features)
    for i, n in enumerate(units):
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(x)
        x = keras.layers.Dense(n, activation="relu", name=f"head_dense_{i}")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"head_dropout_{len(units)}")(x)
    if num_classes == 1:
        activation = "sigmoid"  # a softmax over one unit is constantly 1
    return keras.layers.Dense(num_classes, activation=activation, dtype="float32", name=PREDICTIONS)(x)
