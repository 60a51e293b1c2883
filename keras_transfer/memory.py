"""How much memory a training step takes, and whether this machine has it: checked before any work."""

from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.models import get_backbone, input_size

logger = logging.getLogger(__name__)


def training_memory(model, batch_size):
    """An estimate, in bytes, of the memory one training step of `model` takes: every layer's float32 output
    for `batch_size` images, kept for the backward pass and matched by its gradient, plus the weights with their
    gradients and two optimizer slots."""
    per_image = 0
    for layer in [*model.layers, *get_backbone(model).layers]:
        try:
            outputs = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):  # a layer used twice, or one that was never called symbolically
            continue
        per_image += sum(4 * int(np.prod([d or 1 for d in t.shape[1:]])) for t in outputs)
    return 2 * batch_size * per_image + 16 * int(model.count_params())


def check_memory(model, batch_size):
    """Refuses (ValueError) a model and batch whose `training_memory` estimate exceeds the memory available on a
    machine without accelerators, and warns above half of it, naming the input size and the estimate."""
    needed, available = training_memory(model, batch_size), _available_memory()
    size = "x".join(map(str, input_size(model) or ("any",)))
    what = f"training {model.name!r} at {size} pixels in batches of {batch_size} takes about {needed / 1e9:.1f} GB"
    if available is None or tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"):
        logger.debug("Memory estimate: %s", what)
        return needed
    if needed > available:
        raise ValueError(
            f"Too large for this machine: {what}, {available / 1e9:.1f} GB are available. Use a smaller image "
            f"size or batch size. Received: input_size={size}, batch_size={batch_size}"
        )
    if needed > available / 2:
        logger.warning("%s, of %.1f GB available.", what[0].upper() + what[1:], available / 1e9)
    return needed


def _available_memory():
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
