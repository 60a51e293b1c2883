"""Export for serving: a SavedModel in TF Serving's layout, `<export_dir>/<version>/`, written atomically."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.compat import flatten_layers
from keras_transfer.files import atomic_path, new_version, versions, write_text
from keras_transfer.heads import check_thresholds
from keras_transfer.images import FORMATS, SIGNATURES, decode_image, image_array, within_pixel_limit
from keras_transfer.models import backbone_key, input_size, is_multi_label, load_model, model_spec
from keras_transfer.terminal import native_logs_hidden

logger = logging.getLogger(__name__)

TFLITE_METADATA = "keras_transfer"  # the name of the metadata entry export_tflite writes


def export_saved_model(model, export_dir, *, version=None, class_names=None, metadata=None, thresholds=None):
    """Writes `model` as a SavedModel version that TF Serving can load.

    Signatures: `serving_default` takes float32 `images` `[batch, height, width, 3]` in 0-255 of any size (the
    model resizes and preprocesses them inside); `serve_bytes` takes `image_bytes` `[batch]`, encoded JPEG, PNG,
    GIF, BMP or WebP. Both return `probabilities` and `class_ids`; for a multi-label model (one sigmoid per
    label) `probabilities` and `predicted` (int32 0/1 per label, at `thresholds`). `labels.txt` and
    `metadata.json` (with `multi_label` and the `thresholds`) are written
    beside the graph. The version number is reserved atomically (processes exporting into one folder at once
    get different versions), the version is written to a temporary folder and renamed at the end, so it appears
    whole or not at all, and existing versions are never touched.

    Args:
        model: a model from `build_model` (or any Keras model taking RGB images).
        export_dir: the model's base folder (TF Serving's `--model_base_path`).
        version: a positive integer; None takes the next one after the versions present.
        class_names: names of the classes, written to `labels.txt`.
        metadata: extra JSON-serializable facts for `metadata.json` (e.g. training metrics).
        thresholds: a multi-label model's per-label thresholds (one number, or one per label; default 0.5), e.g.
            from `evaluation.tune_thresholds`.

    Returns:
        The path of the written version folder.

    Raises:
        ValueError: for a version that exists or is not a positive integer, class names that do not match
            the model's outputs, or thresholds for a model with one label per image.
        OSError: when `export_dir` cannot be written.
    """
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise ValueError(f"version must be a positive integer. Received: version={version!r}")
    num_classes = model.output_shape[-1]
    if class_names is not None and len(class_names) != max(num_classes, 2 if num_classes == 1 else num_classes):
        raise ValueError(
            f"class_names has {len(class_names)} names but the model predicts {num_classes} classes. "
            f"Received: class_names={list(class_names)!r}"
        )
    thresholds = _thresholds(model, thresholds)
    try:
        with new_version(export_dir, version) as (number, tmp):
            _write_saved_model(model, tmp, thresholds)
            with open(os.path.join(tmp, "labels.txt"), "w") as f:
                f.writelines(f"{name}\n" for name in (class_names or [str(i) for i in range(num_classes)]))
            with open(os.path.join(tmp, "metadata.json"), "w") as f:
                json.dump(_metadata(model, class_names, metadata, thresholds), f, indent=2)
    except FileExistsError:
        raise ValueError(
            f"Version {version} already exists in {os.fspath(export_dir)!r}; existing versions: "
            f"{versions(export_dir)}. Received: version={version!r}"
        ) from None
    except OSError as e:
        raise OSError(
            f"Cannot write an export into {os.fspath(export_dir)!r}: {e.strerror or e}. Choose a writable folder."
        ) from e
    final = os.path.join(export_dir, str(number))
    logger.info("Exported %s", final)
    return final


def _thresholds(model, thresholds):
    """A multi-label model's thresholds as a list (0.5 each by default); None for one label per image."""
    if not is_multi_label(model):
        if thresholds is not None:
            raise ValueError(
                "thresholds apply to a multi-label model (one sigmoid per label); this one predicts one label per "
                f"image. Received: thresholds={thresholds!r}"
            )
        return None
    return [float(v) for v in check_thresholds(thresholds, model.output_shape[-1])]


def _write_saved_model(model, path, thresholds=None):
    size = _input_size(model)
    archive = keras.export.ExportArchive()
    archive.track(model)

    def predict(images):
        probabilities = model(images, training=False)
        if thresholds is not None:  # several labels per image: each label at its own threshold
            predicted = tf.cast(probabilities >= tf.constant(thresholds, probabilities.dtype), tf.int32)
            return {"probabilities": probabilities, "predicted": predicted}
        if probabilities.shape[-1] == 1:
            class_ids = tf.cast(probabilities[:, 0] > 0.5, tf.int64)
        else:
            class_ids = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "class_ids": class_ids}

    def decode(image_bytes):
        known = tf.reduce_any([tf.strings.substr(image_bytes, 0, len(m)) == m for m in SIGNATURES])
        check = tf.debugging.Assert(known, [f"serve_bytes: an input is not a {FORMATS} image"])
        with tf.control_dependencies([check]):  # refused before any decoder sees it
            image_bytes = tf.identity(image_bytes)
        # Decoded as a training folder is (decode_image at the model's size), so that serving sees what training saw.
        return tf.cast(decode_image(within_pixel_limit(image_bytes), size), tf.float32)

    def predict_bytes(image_bytes):
        return predict(tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([*size, 3], tf.float32)))

    archive.add_endpoint(
        "serving_default", predict, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")]
    )
    archive.add_endpoint(
        "serve_bytes", predict_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.write_out(path, verbose=False)


def _input_size(model):
    """The (height, width) the model resizes to; the bytes signature and TFLite need it to batch images."""
    size = input_size(model)
    if size is None:
        raise ValueError(
            f"Model {model.name!r} takes images of any size, so encoded images cannot be batched for 'serve_bytes'; "
            "build it with a fixed input_shape to export it."
        )
    return size


def export_tflite(model, path, *, quantize=None, class_names=None, thresholds=None):
    """Converts `model` to a TensorFlow Lite flatbuffer taking float32 images at the model's input size.

    The backbone, input size, preprocessing, class names and (multi-label) thresholds are in the file's metadata,
    under the name `keras_transfer` (`tflite_metadata(path)` reads them).

    Args:
        model: a model from `build_model` with a fixed input size.
        path: the `.tflite` file to write (written to a temporary file and renamed).
        quantize: None for float32 weights, or `"dynamic"` for dynamic-range quantization (int8 weights, float
            activations: about 4x smaller).
        class_names: optional class names, in label order, for the metadata.
        thresholds: a multi-label model's per-label thresholds, for the metadata (as `export_saved_model`).

    Returns:
        The size of the written file in bytes.

    Raises:
        ValueError: for an unknown `quantize` or a model without a fixed input size.
    """
    if quantize not in (None, "dynamic"):
        raise ValueError(f"quantize must be None or 'dynamic'. Received: quantize={quantize!r}")
    height, width = _input_size(model)
    facts = _metadata(model, class_names, {"input": "images: float32 RGB 0-255"}, _thresholds(model, thresholds))
    # Through a SavedModel: converting a concrete function of a Keras 3 model directly gave NaN outputs (TF 2.21).
    with tempfile.TemporaryDirectory(prefix="keras_transfer_tflite_") as saved:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serving_default",
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")],
        )
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serving_default"])
        if quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = _with_tflite_metadata(converter.convert(), facts)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(flatbuffer)
    logger.info("Wrote %s (%d bytes)", path, len(flatbuffer))
    return len(flatbuffer)


def _with_tflite_metadata(flatbuffer, facts):
    """The flatbuffer with `facts` as JSON in a metadata entry named `TFLITE_METADATA`."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    tflite = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(facts).encode(), np.uint8)
    tflite.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA, len(tflite.buffers) - 1
    tflite.metadata = [*(tflite.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tflite))


def tflite_metadata(path):
    """The facts `export_tflite` wrote into a `.tflite` file (class names, thresholds, ...), or {} if none."""
    from tensorflow.lite.tools import flatbuffer_utils

    tflite = flatbuffer_utils.read_model(os.fspath(path))
    for entry in tflite.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == TFLITE_METADATA:
            return json.loads(bytes(tflite.buffers[entry.buffer].data))
    return {}


def export_onnx(model, path, *, class_names=None, thresholds=None):
    """Converts `model` to ONNX (Keras's `model.export(format="onnx")`, which uses tf2onnx) for ONNX Runtime.

    Input `images`: float32 RGB 0-255, `(batch, height, width, 3)` at the model's input size; the backbone's
    preprocessing is inside. Output: the model's probabilities. The class names, backbone and input size are in the
    file's metadata (`onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`), and the class
    names also in `<name>.labels.txt` beside it.

    Args:
        model: a model from `build_model` with a fixed input size.
        path: the `.onnx` file to write (written to a temporary file and renamed).
        class_names: optional class names, in label order.
        thresholds: a multi-label model's per-label thresholds, for the metadata (as `export_saved_model`).

    Returns:
        The path written.

    Raises:
        ValueError: for a model without a fixed input size, or a layer whose TensorFlow ops ONNX cannot express
            (named, with the ops); nothing is written then.
        ImportError: without the `onnx` extra (`pip install keras_transfer[onnx]`).
    """
    height, width = _input_size(model)
    thresholds = _thresholds(model, thresholds)
    _onnx_modules()
    model(np.zeros((1, height, width, 3), np.float32))  # Keras exports only a model that was called
    path = os.fspath(path)
    with atomic_path(path) as tmp, _Unconvertible(model) as unconvertible:
        with native_logs_hidden(), warnings.catch_warnings():  # grappler's session lines; Keras's NumPy patch
            warnings.filterwarnings("ignore", module=r"keras\.src\.export\.tf2onnx_lib")
            model.export(
                tmp,
                format="onnx",
                verbose=False,
                input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")],
            )
        unconvertible.check()
        _add_onnx_metadata(
            tmp,
            _metadata(model, class_names, {"input": "images: float32 RGB 0-255, preprocessing inside"}, thresholds),
        )
    if class_names is not None:
        write_text(os.path.splitext(path)[0] + ".labels.txt", "\n".join(class_names) + "\n")
    logger.info("Wrote %s (%d bytes)", path, os.path.getsize(path))
    return path


def _onnx_modules():
    try:
        with warnings.catch_warnings():  # tf2onnx's import warns about NumPy aliases it no longer uses
            warnings.simplefilter("ignore")
            import onnx  # noqa: F401
            import tf2onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs the onnx and tf2onnx packages ({e}): pip install 'keras_transfer[onnx]'"
        ) from e


class _Unconvertible(logging.Handler):
    """Collects the TensorFlow ops tf2onnx reports as unsupported (it logs them and writes an unusable file
    rather than raising), and names the layers they belong to."""

    PATTERN = re.compile(r"Tensorflow op \[([^:\]]+): (\w+)\] is not supported")

    def __init__(self, model):
        super().__init__(logging.ERROR)
        self.model, self.ops = model, []

    def __enter__(self):
        logging.getLogger("tf2onnx").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("tf2onnx").removeHandler(self)

    def emit(self, record):
        found = self.PATTERN.search(record.getMessage())
        if found:
            self.ops.append(found.groups())

    def check(self):
        if not self.ops:
            return
        names = {layer.name: layer for layer in flatten_layers(self.model)}
        culprits = {}
        for scope, op in self.ops:
            parts = [re.sub(r"_\d+$", "", part) for part in scope.split("/")[:-1]]
            layer = next((names[p] for p in reversed(parts) if p in names and p != self.model.name), None)
            where = f"layer {layer.name!r} ({type(layer).__name__})" if layer else f"op {scope!r}"
            culprits.setdefault(where, set()).add(op)
        described = "; ".join(f"{where} uses {', '.join(sorted(ops))}" for where, ops in culprits.items())
        raise ValueError(
            f"Cannot export {self.model.name!r} to ONNX: {described}, which ONNX cannot express. "
            "Export a SavedModel or TFLite instead, or replace that layer."
        )


def _add_onnx_metadata(path, facts):
    import onnx

    proto = onnx.load(path)
    for key, value in facts.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, path)


def _metadata(model, class_names, extra, thresholds=None):
    facts = {"backbone": backbone_key(model) or model.name, "num_classes": int(model.output_shape[-1])}
    facts["multi_label"] = thresholds is not None
    if thresholds is not None:
        facts["thresholds"] = list(thresholds)
    size = input_size(model)
    facts["input_size"] = list(size) if size else None
    spec = model_spec(model)
    if spec is not None:
        facts["preprocessing"] = spec.preprocessing
    facts["class_names"] = list(class_names) if class_names is not None else None
    facts.update(extra or {})
    return facts


def load_predictor(path, *, tta=None):
    """Loads an export or a `.keras` model for prediction on encoded images.

    Args:
        path: a SavedModel version folder, a base folder of numbered versions (the newest is used), or a
            `.keras` file.
        tta: None, or `"flip"`: average each image's probabilities with its left-right mirror's (the images are
            decoded here, by the one decoder, at the model's input size).

    Returns:
        `(predict, class_names)`: `predict(list_of_encoded_images) -> probabilities` as a NumPy array
        `(n, num_classes)`; class names from `labels.txt` (or "0", "1", ... for a `.keras` file).

    Raises:
        ValueError: when `path` is none of those.
    """
    if path.endswith(".keras") and os.path.isfile(path):
        model = load_model(path)
        return keras_predictor(model, tta=tta), [str(i) for i in range(model.output_shape[-1])]
    version = _newest_version(path)
    if not os.path.exists(os.path.join(version, "saved_model.pb")):
        raise ValueError(
            f"{path!r} is not a SavedModel folder, a folder of numbered versions, or a .keras file. "
            f"Received: model={path!r}"
        )
    signatures = tf.saved_model.load(version).signatures
    labels_file = os.path.join(version, "labels.txt")
    with open(labels_file) as f:
        class_names = [line.rstrip("\n") for line in f]

    def predict_saved_model(blobs):
        return signatures["serve_bytes"](image_bytes=tf.constant(list(blobs)))["probabilities"].numpy()

    if tta == "flip":  # decoded here as serve_bytes decodes, then the pixels signature on each image and its mirror
        with open(os.path.join(version, "metadata.json")) as f:
            size = tuple(json.load(f)["input_size"])

        def predict_saved_model(blobs):
            images = np.stack([image_array(b, size=size) for b in blobs]).astype(np.float32)
            pixels = signatures["serving_default"]
            return _mirror_average(lambda x: pixels(images=tf.constant(x))["probabilities"].numpy(), images)

    return predict_saved_model, class_names


def _mirror_average(predict, images):
    return (np.asarray(predict(images)) + np.asarray(predict(images[:, :, ::-1].copy()))) / 2


def export_thresholds(path):
    """The per-label thresholds of a multi-label export (from its `metadata.json`; 0.5 each for a multi-label
    `.keras` file), or None for a model with one label per image."""
    if os.fspath(path).endswith(".keras") and os.path.isfile(path):
        return _thresholds(load_model(path), None)
    version = _newest_version(path)
    try:
        with open(os.path.join(version, "metadata.json")) as f:
            return json.load(f).get("thresholds")
    except (OSError, ValueError):
        return None


def _newest_version(path):
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "saved_model.pb")):
        numbered = sorted(int(n) for n in os.listdir(path) if n.isdigit())
        if numbered:
            return os.path.join(path, str(numbered[-1]))
    return path


def keras_predictor(model, tta=None):
    """`predict(list_of_encoded_images) -> probabilities` for a Keras model taking RGB 0-255 images of any size;
    `tta="flip"` averages each image's probabilities with its mirror's."""
    size = input_size(model)  # decoded as a training folder is; a model of any size takes the full image
    call = lambda x: model(x, training=False)

    def predict(blobs):
        # One image at a time: the images may differ in size when the model takes any size.
        images = [image_array(b, size=size)[None].astype(np.float32) for b in blobs]
        return np.concatenate([_mirror_average(call, x) if tta == "flip" else np.asarray(call(x)) for x in images])

    return predict
