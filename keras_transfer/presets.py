"""keras-hub presets as backbones: `build_model("keras_hub:<preset>", ...)`.

`<preset>` is a keras-hub preset name (`"dinov2_small"`, `"vit_base_patch16_224_imagenet"`, ...; keras-hub
downloads and caches it) or a local preset folder: what `Backbone.save_to_preset(dir)` and
`ImageConverter.save_to_preset(dir)` write (`config.json`, `model.weights.h5`, `image_converter.json`), the offline
path. The preset's image converter (its size, scale and offset) becomes the model's preprocessing layer, so a saved
or exported model takes 0-255 RGB images like every other backbone.

What the head sees: a CNN family's feature map as it is (the head pools it); a transformer's token sequence pooled
to one vector by `TokenPooling`: the class token where the family has one (ViT with `use_class_token`, DINOv2,
DeiT), the mean of the tokens where it has none. Policies see the backbone's natural units: a transformer's encoder
is listed as its blocks (so `top:N` and `stages:K` count blocks; the patch embedding is the first stage), a CNN's
stages are its `stack<i>_` / `stage<i>_` / `block<i>` layer-name groups. keras-hub is imported only for these
backbones (`pip install "keras_transfer[keras-hub]"`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import keras

from keras_transfer.backbones import BackboneSpec
from keras_transfer.compat import child_layers

PREFIX = "keras_hub:"
INSTALL = 'pip install "keras_transfer[keras-hub]" (or pip install keras-hub)'
PRESETS_PAGE = "https://keras.io/keras_hub/presets/"
_CNN_STAGE = re.compile(r"^(stack|stage|block)_?(\d+)")


def is_preset(backbone):
    return isinstance(backbone, str) and backbone.startswith(PREFIX)


def import_keras_hub():
    """`import keras_hub`, or an ImportError naming what to install."""
    try:
        import keras_hub
    except ImportError as e:
        raise ImportError(f"keras-hub presets as backbones need keras-hub: {INSTALL}.") from e
    return keras_hub


def load_backbone(handle, *, weights=True, image_shape=None):
    """The keras-hub `Backbone` of a preset name or folder, with its weights (`weights=True`) or random ones.

    Raises:
        OSError: when the preset cannot be downloaded; the message says how to use a local preset folder.
        ValueError: for an unknown preset name, or an image shape its weights do not fit.
    """
    keras_hub = import_keras_hub()
    if handle.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(handle)):
        raise ValueError(f"No keras-hub preset folder at {handle!r}. Received: backbone={PREFIX + handle!r}")
    kwargs = {} if image_shape is None else {"image_shape": tuple(image_shape)}
    try:
        return keras_hub.models.Backbone.from_preset(handle, load_weights=weights, **kwargs)
    except OSError as e:  # requests' ConnectionError and HTTP errors are OSErrors
        raise OSError(_download_failed(handle, e)) from e
    except ValueError as e:
        if "Unknown preset identifier" in str(e) or (not os.path.exists(handle) and "/" in handle):
            raise ValueError(
                f"Unknown keras-hub preset {handle!r}: neither a preset name keras-hub knows nor a local preset "
                f"folder. Names: keras_hub.models.Backbone.presets or {PRESETS_PAGE}; a folder is what "
                f"save_to_preset writes. Received: backbone={PREFIX + handle!r}"
            ) from e
        size = f" at {image_shape[0]}x{image_shape[1]} pixels" if image_shape else ""
        raise ValueError(
            f"keras-hub preset {handle!r} cannot be built{size}: {str(e).splitlines()[0]} Build it at its own size "
            f"(input_shape=None). Received: backbone={PREFIX + handle!r}"
        ) from e


def _download_failed(handle, error):
    return (
        f"Could not download the keras-hub preset {handle!r}: {str(error).splitlines()[0][:300]}. Without "
        "internet, save it elsewhere (keras_hub.models.Backbone.from_preset(name).save_to_preset(DIR) and "
        "keras_hub.layers.ImageConverter.from_preset(name).save_to_preset(DIR)), copy DIR here and pass "
        "keras_hub:DIR; or set KAGGLEHUB_CACHE to a cache that already holds it."
    )


@dataclasses.dataclass(frozen=True)
class Converter:
    """What a preset's `ImageConverter` does to 0-255 RGB images: resize to `size`, then `x * scale + offset`."""

    size: tuple | None
    scale: tuple
    offset: tuple


def load_converter(handle):
    """The preset's image converter as a `Converter`; a preset without one gets [0, 1] scaling at its backbone's
    size (keras-hub's default)."""
    keras_hub = import_keras_hub()
    try:
        config = keras_hub.layers.ImageConverter.from_preset(handle).get_config()
    except OSError as e:
        raise OSError(_download_failed(handle, e)) from e
    except ValueError:  # a preset without image_converter.json
        config = {"image_size": None, "scale": 1 / 255.0, "offset": 0.0}
    size = config.get("image_size")
    scale, offset = config.get("scale"), config.get("offset")
    return Converter(
        tuple(size) if size else None, _per_channel(1.0 if scale is None else scale), _per_channel(offset or 0.0)
    )


def _per_channel(value):
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return tuple(values * 3) if len(values) == 1 else tuple(values)


@functools.lru_cache(maxsize=16)
def preset_spec(handle):
    """The backbone row of a preset, read from its config without its weights: preprocessing `"converter"` (the
    preset's own), default size the converter's (else the backbone's), the minimum size (the patch size of a
    transformer, 32 for a CNN) and its stages (see the module's docstring)."""
    backbone = load_backbone(handle, weights=False)
    size = load_converter(handle).size or tuple(getattr(backbone, "image_shape", None) or ())[:2]
    return network_spec(backbone, (size or (None,))[0] or 224)


def network_spec(network, size):
    """The backbone row of a keras-hub backbone (`preset_spec`), or of a model's `backbone` layer that holds one
    (a built or reloaded model, whose preset folder may be gone)."""
    hub = next((x for x in [network, *network.layers] if _is_keras_hub(x)), network)
    patch = getattr(hub, "patch_size", None)
    return BackboneSpec(
        type(hub).__name__,
        None,
        "converter",
        int(size),
        int(patch[0] if isinstance(patch, (list, tuple)) else patch or 32),
        stages([layer.name for layer in unit_layers(network)], transformer=is_transformer(hub)),
    )


def _is_keras_hub(layer):
    return type(layer).__module__.startswith("keras_hub.")


def is_transformer(backbone):
    """Whether a keras-hub backbone's output is a token sequence (batch, tokens, features)."""
    return len(backbone.output.shape) == 3


def unit_layers(layer):
    """The layers of a model policies count, in graph order (input layers left out): a nested keras-hub backbone's
    layers in its place, and a keras-hub transformer encoder's blocks in place of the encoder. Other models' layers
    are listed as they are (keras.applications' ConvNeXt keeps its nested stem)."""
    units = []
    for child in layer.layers:
        if isinstance(child, keras.layers.InputLayer):
            continue
        if isinstance(child, keras.Model) and _is_keras_hub(child):
            units.extend(unit_layers(child))
        elif _is_keras_hub(child) and type(child).__name__.endswith("Encoder"):
            units.extend(child_layers(child))
        else:
            units.append(child)
    return units


def stages(names, *, transformer):
    """Stage marks over unit layer names: a transformer's first unit (its embedding) and each block; a CNN's
    first layer (its stem) and the first layer of each `stack<i>` / `stage<i>` / `block<i>` group; one stage
    when a CNN's names show no groups."""
    if transformer:
        blocks = [n for n in names if re.search(r"(block|layer)s?_?\d+$", n)]
        return (names[0], *blocks) if blocks else (names[0],)
    marks, seen = [names[0]], set()
    for name in names:
        match = _CNN_STAGE.match(name)
        if match and match.group(0) not in seen:
            seen.add(match.group(0))
            marks.append(match.group(0))
    return tuple(marks)


@keras.saving.register_keras_serializable(package="keras_transfer")
class TokenPooling(keras.layers.Layer):
    """A transformer's tokens `(batch, tokens, features)` as one vector per image, shaped `(batch, 1, 1,
    features)` so every head applies: `"class"` takes the first token (the class token), `"mean"` averages them."""

    def __init__(self, mode="class", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("class", "mean"):
            raise ValueError(f"TokenPooling mode must be 'class' or 'mean'. Received: mode={mode!r}")
        self.mode = mode

    def call(self, tokens):
        pooled = tokens[:, 0] if self.mode == "class" else keras.ops.mean(tokens, axis=1)
        return keras.ops.expand_dims(keras.ops.expand_dims(pooled, 1), 1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def token_pooling_mode(backbone):
    """`"class"` where the family has a class token (ViT with `use_class_token`, DINOv2, DeiT), else `"mean"`."""
    config = backbone.get_config()
    if config.get("use_class_token") is False:
        return "mean"
    has_class_token = "use_class_token" in config or re.search(r"DINO|DeiT|ViT", type(backbone).__name__)
    return "class" if has_class_token else "mean"


def preset_backbone(handle, shape, *, weights, name="backbone"):
    """A `keras.Model` named `name` from images of `shape` (already preprocessed) to the preset backbone's
    feature map, or its pooled tokens as a `(1, 1, features)` map."""
    spec = preset_spec(handle)
    size = tuple(shape[:2])
    own = (spec.default_size, spec.default_size)
    network = load_backbone(handle, weights=weights, image_shape=None if size == own else (*size, 3))
    inputs = keras.Input(shape=shape)
    x = network({"images": inputs} if isinstance(network.input, dict) else inputs)  # DINOv2 takes a dict
    if is_transformer(network):
        x = TokenPooling(token_pooling_mode(network), name="token_pooling")(x)
    return keras.Model(inputs, x, name=name)


def preset_model_name(handle):
    """A Keras-safe model name for a preset backbone."""
    base = os.path.basename(handle.rstrip("/")) or "preset"
    return "keras_hub_" + "".join(c if c.isalnum() or c in "_-." else "_" for c in base)
