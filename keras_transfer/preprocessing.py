"""In-model preprocessing: resize plus the backbone's own input normalization, as one serializable layer.

Because this layer sits inside the model, a saved or exported model takes raw RGB pixels in 0-255 of any
size, and serving can never disagree with training about how pixels are scaled.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_transfer.backbones import PREPROCESSING_MODES

# ImageNet statistics used by keras.applications' "caffe" (BGR, 0-255) and "torch" (RGB, 0-1) modes.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="keras_transfer")
class BackbonePreprocessing(keras.layers.Layer):
    """Resizes RGB images in 0-255 and applies a backbone's input normalization.

    Args:
        mode: one of `"caffe"`, `"tf"`, `"torch"`, `"unit"`, `"lite"`, `"converter"`, `"none"` (see
            `BackboneSpec.preprocessing`).
        size: `(height, width)` the images are resized to (bilinear), or None to keep the input size.
        backbone: the backbone key the model was built for (`build_model` sets it, so the key travels with the
            model through renaming and saving; see `keras_transfer.models.backbone_key`).
        scale, offset: for `"converter"`: per-channel `x * scale + offset` (a keras-hub image converter's).
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`).

    Example:
    >>> import numpy as np
    >>> layer = BackbonePreprocessing("tf", size=(32, 32))
    >>> tuple(layer(np.zeros((1, 50, 40, 3))).shape)
    (1, 32, 32, 3)
    """

    def __init__(
        self,
        mode: str,
        size: tuple[int, int] | None = None,
        backbone: str | None = None,
        scale: tuple | None = None,
        offset: tuple | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"Unknown preprocessing mode {mode!r}. Expected one of: {', '.join(PREPROCESSING_MODES)}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.backbone = backbone
        if mode == "converter" and (scale is None or offset is None):
            raise ValueError(
                f"Preprocessing 'converter' needs scale and offset. Received: scale={scale}, offset={offset}"
            )
        self.scale = None if scale is None else [float(v) for v in scale]
        self.offset = None if offset is None else [float(v) for v in offset]

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.size is not None and tuple(x.shape[1:3]) != self.size:
            x = ops.image.resize(x, self.size, interpolation="bilinear")
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "unit":  # TF Hub's image convention: RGB in [0, 1]
            return x / 255.0
        if self.mode == "lite":  # EfficientNet-Lite's mean 127 and standard deviation 128
            return (x - 127.0) / 128.0
        if self.mode == "converter":  # a keras-hub preset's ImageConverter
            scale = ops.convert_to_tensor(self.scale, dtype=x.dtype)
            return x * scale + ops.convert_to_tensor(self.offset, dtype=x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        if self.size is None:
            return tuple(input_shape)
        return (input_shape[0], *self.size, input_shape[-1])

    def get_config(self):
        config = {**super().get_config(), "mode": self.mode, "size": self.size, "backbone": self.backbone}
        if self.mode == "converter":
            config.update(scale=self.scale, offset=self.offset)
        return config


def augmentation(seed=None):
    """The default training augmentation, as Keras preprocessing layers on batches of 0-255 images: random
    horizontal flip, rotation, zoom and translation (10%, reflected borders) and contrast (kept in 0-255).
    Inside a model they act only in training (`fit`); `predict`, `evaluate` and exports pass images through."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.1, fill_mode="reflect", seed=seed),
            keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed),
            keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed),
        ],
        name="augmentation",
    )
