"""`pretrain`: make a pretrained backbone yourself, supervised or self-supervised (SimCLR), offline.

The result is a backbone weights file plus a metadata JSON beside it that `build_model(..., weights=path)` reads
and checks. BatchNormalization statistics are recomputed over the training images at the end: after a short run
from scratch the moving averages still sit near their initial values and inference-mode accuracy reads as chance.
"""

from __future__ import annotations

import json
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.backbones import get_spec
from keras_transfer.callbacks import EpochLines
from keras_transfer.data import load_dataset, with_known_size
from keras_transfer.images import image_size as image_size_rule
from keras_transfer.models import build_model, default_input_size, feature_model, get_backbone
from keras_transfer.policies import set_trainable
from keras_transfer.training import recompute_batchnorm

logger = logging.getLogger(__name__)

METHODS = ("supervised", "simclr")


def pretrain(
    backbone,
    data,
    *,
    method="supervised",
    image_size=None,
    epochs=2,
    batch_size=64,
    learning_rate=1e-3,
    classes=None,
    output_dir="saved_models/pretrained",
    seed=0,
):
    """Trains `backbone` from scratch on `data` and saves its weights for `build_model(weights=path)`.

    Args:
        backbone: a key of `BACKBONES`.
        data: any source `load_dataset` accepts (`"fashion_mnist"`, `"digits"`, a folder, `"tfds:NAME"`, arrays).
        method: `"supervised"` (backbone + a temporary classification head) or `"simclr"` (two augmented views
            per image, a projection head and the NT-Xent loss; labels are never read).
        image_size: `(height, width)` or an int; None uses the backbone's default size.
        epochs: training epochs.
        batch_size: images per batch (SimCLR contrasts each image with the 2 x batch_size - 2 others).
        learning_rate: Adam learning rate.
        classes: the classes of `data` to pretrain on, e.g. `range(5)`.
        output_dir: folder for `<backbone>_<method>.weights.h5` and `<backbone>_<method>.json`.
        seed: fixes data order, initialization and augmentation.

    Returns:
        The path of the weights file.

    Raises:
        ValueError: for an unknown backbone or method, or bad data arguments.
    """
    get_spec(backbone)  # an unknown key (or a hub module, which brings its own weights) fails here
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1. Received: epochs={epochs!r}")
    if not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool) or not learning_rate > 0:
        raise ValueError(f"learning_rate must be a number > 0. Received: learning_rate={learning_rate!r}")
    if method not in METHODS:
        raise ValueError(
            f"Unknown method {method!r}. Expected one of: {', '.join(METHODS)}. Received: method={method!r}"
        )
    size = image_size_rule(image_size) if image_size else default_input_size(backbone)
    keras.utils.set_random_seed(seed)
    train, val, _, info = load_dataset(
        data,
        image_size=size,
        batch_size=batch_size,
        classes=classes,
        seed=seed,
        validation_split=0.1 if method == "supervised" else 0.0,
        test_split=0.0,  # pretraining is scored by what it transfers, not on a test split of its own
        deterministic=True,
    )
    model = build_model(backbone, info.num_classes, input_shape=size, weights=None)
    set_trainable(model, "all", train_batchnorm=True)
    if method == "supervised":
        metrics = _supervised(model, train, val, epochs, learning_rate)
    else:
        metrics = _simclr(model, train.map(lambda images, labels: images), epochs, learning_rate, seed)
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.join(output_dir, f"{backbone}_{method}")
    get_backbone(model).save_weights(stem + ".weights.h5")
    metadata = {
        "backbone": backbone,
        "image_size": list(size),
        "method": method,
        "data": info.source,
        "classes": info.class_names,
        "epochs": epochs,
        "metrics": metrics,
    }
    with open(stem + ".json", "w") as f:
        json.dump(metadata, f, indent=2)
    logger.info("Pretrained %s (%s) on %s: %s -> %s.weights.h5", backbone, method, info.source, metrics, stem)
    return stem + ".weights.h5"


def _supervised(model, train, val, epochs, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    # A known size and no shuffle argument: Keras warns about neither (the pipeline shuffles already).
    history = model.fit(
        with_known_size(train),
        validation_data=with_known_size(val),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[EpochLines("pretrain")],
    )
    recompute_batchnorm(model, train)
    loss, accuracy = model.evaluate(val, verbose=0)
    return {"train_loss": float(history.history["loss"][-1]), "val_loss": float(loss), "val_accuracy": float(accuracy)}


def nt_xent(z1, z2, temperature=0.5):
    """SimCLR's normalized-temperature cross-entropy: each view must pick its partner among all 2N - 1 others."""
    z = tf.math.l2_normalize(tf.concat([z1, z2], axis=0), axis=1)
    n = tf.shape(z1)[0]
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    logits -= tf.eye(2 * n) * 1e9  # a view is not its own partner
    partners = tf.concat([tf.range(n, 2 * n), tf.range(0, n)], axis=0)
    return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(partners, logits, from_logits=True))


def simclr_augmentation(seed=None):
    """SimCLR's views: stronger than the training augmentation, above all random crops (zooming in to 50-100% of
    each side) and contrast / brightness changes; with weak views the contrastive task is too easy to teach much."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomZoom((-0.5, 0.0), fill_mode="reflect", seed=seed),
            keras.layers.RandomTranslation(0.15, 0.15, fill_mode="reflect", seed=seed),
            keras.layers.RandomContrast(0.5, seed=seed),
            keras.layers.RandomBrightness(0.3, value_range=(0, 255), seed=seed),
        ],
        name="simclr_augmentation",
    )


def _simclr(model, images, epochs, learning_rate, seed):
    encoder = feature_model(model, name="encoder")
    projection = keras.Sequential(
        [keras.layers.Dense(128, activation="relu"), keras.layers.Dense(64)], name="projection"
    )
    augment = simclr_augmentation(seed)
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step(x):
        x1, x2 = augment(x, training=True), augment(x, training=True)
        with tf.GradientTape() as tape:
            loss = nt_xent(projection(encoder(x1, training=True)), projection(encoder(x2, training=True)))
        variables = encoder.trainable_variables + projection.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    losses = []
    for epoch in range(epochs):
        epoch_losses = [float(step(x)) for x in images]
        losses.append(float(np.mean(epoch_losses)))
        logger.info("SimCLR epoch %d/%d: loss %.4f", epoch + 1, epochs, losses[-1])
    recompute_batchnorm(encoder, images)
    return {"train_loss": losses[-1], "loss_per_epoch": losses}
