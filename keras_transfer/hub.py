"""TF Hub modules (TF2 SavedModels) as backbones on Keras 3, where `hub.KerasLayer` fails (tensorflow/hub#903).

`build_model("hub:<handle>", ...)` wraps the module in `HubLayer`: a Keras 3 layer around `tf.saved_model.load`
whose variables are the module's own (fine-tuning trains them in place). The handle is a local SavedModel folder
or a hub URL (https://tfhub.dev/..., https://www.kaggle.com/models/...), which `tensorflow_hub.resolve` downloads
and caches; tensorflow_hub is imported only for URLs (`import_tensorflow_hub`: also without `pkg_resources`).

Modules must follow the reusable-SavedModel convention of image feature-vector modules: called as
`module(images, training=...)` on float RGB images in [0, 1], returning `(batch, features)` or a feature map.
"""

from __future__ import annotations

import os
import sys
import types

import keras
import tensorflow as tf

from keras_transfer.backbones import BackboneSpec
from keras_transfer.compat import in_safe_mode, mark_built, track_variable, trackable_children

PREFIX = "hub:"
# What every hub module shares, as a backbone row: images in [0, 1] ("unit"), 224 px by default (the size of most
# hub image modules; pass input_shape for others), and one stage, the module (so "stages:1" trains all of it).
SPEC = BackboneSpec("HubLayer", None, "unit", 224, 32, ("hub_module",))


def is_hub(backbone):
    return isinstance(backbone, str) and backbone.startswith(PREFIX)


def resolve(handle):
    """The local folder of a hub handle: a SavedModel folder as is; a URL downloaded (and cached) by tensorflow_hub.

    Raises:
        ValueError: for a local path that is not a SavedModel folder.
        OSError: when a URL cannot be downloaded; the message says what to do offline.
        ImportError: without tensorflow_hub, naming what to install.
    """
    if "://" not in handle:
        if not os.path.isfile(os.path.join(handle, "saved_model.pb")):
            raise ValueError(
                f"Hub handle {handle!r} is neither a URL nor a SavedModel folder (no saved_model.pb "
                f"there). Received: backbone={PREFIX + handle!r}"
            )
        return handle
    try:
        tensorflow_hub = import_tensorflow_hub()
    except ImportError as e:
        raise ImportError(
            f"Loading {handle!r} needs tensorflow_hub: pip install tensorflow-hub, or download the "
            "module and pass its folder as hub:/path/to/folder."
        ) from e
    try:
        return tensorflow_hub.resolve(handle)
    except Exception as e:  # urllib, HTTP and tarfile errors alike
        raise OSError(
            f"Could not download the hub module {handle!r}: {e}. Without internet, download it elsewhere "
            "(append ?tf-hub-format=compressed to a tfhub.dev URL), unpack it, and pass the folder as "
            "hub:/path/to/folder; or set TFHUB_CACHE_DIR to a cache that already holds it."
        ) from e


def import_tensorflow_hub():
    """`import tensorflow_hub`, also where setuptools no longer ships `pkg_resources` (setuptools >= 81, what a new
    environment gets): tensorflow_hub 0.16.1, its newest release, imports it for one version check
    (`parse_version`, tensorflow/hub#934). Then that import is given `packaging`'s `Version` (a dependency of
    TensorFlow) for the check, and only while tensorflow_hub imports; nothing else is changed. Chosen over pinning
    `setuptools<81`, which would downgrade a build tool in every user's environment."""
    try:
        import tensorflow_hub
    except ModuleNotFoundError as e:
        if e.name != "pkg_resources":
            raise
    else:
        return tensorflow_hub
    from packaging.version import Version

    for name in [m for m in sys.modules if m == "tensorflow_hub" or m.startswith("tensorflow_hub.")]:
        del sys.modules[name]  # what the failed import left half-made
    sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=Version)
    try:
        import tensorflow_hub
    finally:
        del sys.modules["pkg_resources"]
    return tensorflow_hub


@keras.saving.register_keras_serializable(package="keras_transfer")
class HubLayer(keras.layers.Layer):
    """A TF Hub module (TF2 SavedModel) as a trainable Keras 3 layer.

    Args:
        handle: a hub URL or a local SavedModel folder.
        trainable: whether fine-tuning may update the module's trainable variables.
        **kwargs: passed to `keras.layers.Layer`.

    A model holding this layer saves to `.keras` with the handle only; loading it runs the module's graph,
    so `keras.saving.load_model` refuses unless called with `safe_mode=False`.
    """

    def __init__(self, handle, trainable=True, **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        self.handle = os.fspath(handle)
        self._module = tf.saved_model.load(resolve(self.handle))
        if not callable(self._module):
            raise ValueError(
                f"Hub module {self.handle!r} is not callable; expected a TF2 image module called as "
                f"module(images, training=...). Received: {type(self._module).__name__}"
            )
        module_variables = list(getattr(self._module, "variables", None) or _find_variables(self._module))
        listed = getattr(self._module, "trainable_variables", None)
        trainable_ids = {id(v) for v in (module_variables if listed is None else listed) if v.trainable}
        for variable in module_variables:
            # A Keras variable around the module's own tf.Variable (no copy): training updates the module.
            wrapped = keras.Variable(
                variable,
                trainable=id(variable) in trainable_ids,
                dtype=variable.dtype,
                shape=variable.shape,
                name=variable.name.split(":")[0].replace("/", "_"),
            )
            track_variable(self, wrapped)
        mark_built(self)

    def call(self, inputs, training=False):
        return self._module(inputs, training=bool(training) and self.trainable)

    def compute_output_shape(self, input_shape):
        out = self._module(tf.zeros([1, *[d or SPEC.min_size for d in input_shape[1:]]]), training=False)
        return (input_shape[0], *out.shape[1:])

    def get_config(self):
        return {**super().get_config(), "handle": self.handle}

    @classmethod
    def from_config(cls, config, custom_objects=None, safe_mode=None):
        effective = safe_mode if safe_mode is not None else in_safe_mode()
        if effective is not False:
            raise ValueError(
                f"This model holds the TF Hub module {config.get('handle')!r}; loading it runs that module's graph "
                "code. If you trust it, load with keras.saving.load_model(path, safe_mode=False)."
            )
        return cls(**config)


def _find_variables(root):
    """Every tf.Variable reachable from a loaded SavedModel object, for modules that do not list them."""
    found, seen, queue = [], set(), [root]
    while queue:
        node = queue.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, tf.Variable):
            found.append(node)
            continue
        queue.extend(trackable_children(node).values())
    return found


def hub_backbone(handle, shape, name="backbone"):
    """A `keras.Model` named `name` around the hub module, from images of `shape` to its features."""
    inputs = keras.Input(shape=shape)
    x = HubLayer(handle, name="hub_module")(inputs)
    if len(x.shape) == 2:  # a feature vector: give the head a 1x1 map so every head type applies
        x = keras.layers.Reshape((1, 1, x.shape[-1]), name="hub_features")(x)
    return keras.Model(inputs, x, name=name)


def hub_model_name(handle):
    """A Keras-safe model name for a hub backbone (names cannot hold '/')."""
    base = os.path.basename(handle.rstrip("/")) or "module"
    return "hub_" + "".join(c if c.isalnum() or c in "_-." else "_" for c in base)
