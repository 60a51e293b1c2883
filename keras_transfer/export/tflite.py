"""TFLite files (float32, float16, dynamic range, int8 calibrated) through LiteRT, with their metadata inside."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.compat import flatten_layers
from keras_transfer.export.saved_model import export_metadata, fixed_input_size, model_thresholds
from keras_transfer.files import atomic_path
from keras_transfer.models import inference_model
from keras_transfer.terminal import native_logs_hidden

logger = logging.getLogger(__name__)


TFLITE_METADATA = "keras_transfer"  # the name of the metadata entry export_tflite writes


TFLITE_QUANTIZE = {  # export_tflite's quantize -> what it does
    None: "float32",
    "dynamic": "dynamic range: int8 weights, float activations",
    "float16": "float16 weights, float32 computation",
    "int8": "full integer: int8 weights and activations, calibrated on representative_data",
}


REPRESENTATIVE_IMAGES = 200  # at most this many images of representative_data calibrate an int8 conversion


def export_tflite(
    model,
    path,
    *,
    quantize=None,
    representative_data=None,
    input_type="float32",
    class_names=None,
    thresholds=None,
):
    """Converts `model` to a TensorFlow Lite flatbuffer taking images at the model's input size.

    The backbone, input size, preprocessing, quantization, class names and (multi-label) thresholds are in the
    file's metadata, under the name `keras_transfer` (`tflite_metadata(path)` reads them). Run it with LiteRT
    (`tflite_interpreter`), or check it against Keras with `benchmark_exports`.

    Args:
        model: a model from `build_model` with a fixed input size.
        path: the `.tflite` file to write (written to a temporary file and renamed).
        quantize: one of `TFLITE_QUANTIZE`: None (float32), `"dynamic"` (about 4x smaller), `"float16"` (about 2x
            smaller) or `"int8"` (full-integer post-training quantization, about 4x smaller).
        representative_data: for `"int8"`: training images to calibrate on, a dataset of `(images, labels)` (or
            images) batches or an array `(n, height, width, 3)` at the model's input size; the first
            `REPRESENTATIVE_IMAGES` are used.
        input_type: `"float32"`: float32 RGB 0-255 in, float32 probabilities out (an int8 model quantizes and
            dequantizes inside); `"uint8"` with `"int8"`: uint8 images in and uint8 probabilities out, for
            integer-only runtimes (microcontrollers, Edge TPU).
        class_names: optional class names, in label order, for the metadata.
        thresholds: a multi-label model's per-label thresholds, for the metadata (as `export_saved_model`).

    Returns:
        The size of the written file in bytes.

    Raises:
        ValueError: for an unknown `quantize` or `input_type`, `"int8"` without representative data (or with
            images of another size), a model that cannot be quantized to integers (nothing is written), or a model
            without a fixed input size.
    """
    _check_tflite_options(quantize, input_type)
    model = inference_model(model)  # without its augmentation layer
    height, width = fixed_input_size(model)
    calibration = _representative(model, representative_data) if quantize == "int8" else None
    described = f"images: {input_type} RGB 0-255"
    facts = export_metadata(
        model, class_names, {"input": described, "quantize": quantize}, model_thresholds(model, thresholds)
    )
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
        _set_quantization(converter, quantize, calibration, input_type)
        try:
            with native_logs_hidden():
                flatbuffer = _with_tflite_metadata(converter.convert(), facts)
        except Exception as e:  # the converter's ConverterError, with MLIR locations naming the ops and layers
            raise ValueError(_tflite_refusal(model, quantize, str(e))) from e
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(flatbuffer)
    logger.info("Wrote %s (%d bytes)", path, len(flatbuffer))
    return len(flatbuffer)


def _tflite_refusal(model, quantize, text):
    """The converter's error in one sentence: the layers and the TensorFlow ops TFLite has no kernel for."""
    ops = re.search(r"TF Select ops: ([^\n]+)", text)
    found = [(scope, op) for op, scope in re.findall(r'fused\["(\w+):", "([^"@]+)@', text)]
    found = [(scope, op) for scope, op in found if ops and op in ops.group(1).replace(" ", "").split(",")]
    if found:
        why = f"{culprits(model, found)}, which TFLite has no built-in kernel for"
    else:
        why = next((line.strip() for line in text.splitlines() if line.strip()), "the converter failed")
    integer_only = quantize == "int8" and not found  # e.g. an op without an int8 kernel
    instead = "with quantize='dynamic' or 'float16'" if integer_only else "a SavedModel or ONNX"
    return f"Cannot convert {model.name!r} to TFLite (quantize={quantize!r}): {why}. Export {instead} instead."


def culprits(model, found):
    """'layer 'x' (Lambda) uses Erf; ...' for `(op scope, op)` pairs of a converted graph."""
    names = {layer.name: layer for layer in flatten_layers(model)}
    culprits = {}
    for scope, op in found:
        parts = [re.sub(r"_\d+$", "", part) for part in scope.split("/")[:-1]]
        layer = next((names[p] for p in reversed(parts) if p in names and p != model.name), None)
        where = f"layer {layer.name!r} ({type(layer).__name__})" if layer else f"op {scope!r}"
        culprits.setdefault(where, set()).add(op)
    return "; ".join(f"{where} uses {', '.join(sorted(ops))}" for where, ops in culprits.items())


def _check_tflite_options(quantize, input_type):
    if quantize not in TFLITE_QUANTIZE:
        expected = ", ".join(repr(q) for q in TFLITE_QUANTIZE)
        raise ValueError(f"quantize must be one of {expected}. Received: quantize={quantize!r}")
    if input_type not in ("float32", "uint8") or (input_type == "uint8" and quantize != "int8"):
        raise ValueError(
            "input_type must be 'float32', or 'uint8' with quantize='int8' (integer-only runtimes). "
            f"Received: input_type={input_type!r}, quantize={quantize!r}"
        )


def _set_quantization(converter, quantize, calibration, input_type):
    if quantize is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if input_type == "uint8":
            converter.inference_input_type = converter.inference_output_type = tf.uint8


def _representative(model, data):
    """The converter's calibration: a function yielding up to `REPRESENTATIVE_IMAGES` images, one at a time."""
    if data is None:
        raise ValueError(
            "quantize='int8' calibrates the integer ranges on representative_data, but none was given: pass a few "
            "hundred training images (the training dataset, or an array (n, height, width, 3)). "
            "Received: representative_data=None"
        )
    images = dataset_images(data, REPRESENTATIVE_IMAGES)
    expected = (*fixed_input_size(model), 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or not len(images):
        raise ValueError(
            f"representative_data must hold images of shape (height, width, 3) = {expected}, the model's input. "
            f"Received: images of shape {images.shape}"
        )
    return lambda: ([image[None]] for image in images)


def dataset_images(data, limit=None):
    """The images (float32, stacked) of a dataset of `(images, labels)` or images batches, or of an array; the
    first `limit` when given."""
    return dataset_arrays(data, limit)[0]


def dataset_arrays(data, limit=None):
    """(images, labels) stacked from a dataset or list of `(images, labels)` batches, or (images, None) from an
    array or a dataset of images alone."""
    batches = isinstance(data, tf.data.Dataset) or (
        isinstance(data, list) and all(isinstance(b, tuple) and len(b) == 2 for b in data)
    )
    if not batches:
        return np.asarray(data, np.float32)[:limit], None
    images, labels, count = [], [], 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        images.append(np.asarray(x, np.float32))
        if isinstance(batch, (tuple, list)):
            labels.append(np.asarray(batch[1]))
        count += len(images[-1])
        if limit is not None and count >= limit:
            break
    if not images:
        return np.zeros((0,), np.float32), None
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit] if labels else None


def tflite_interpreter(path, num_threads=None):
    """A LiteRT interpreter (`ai_edge_litert.interpreter.Interpreter`, TensorFlow Lite's successor) for `path`.

    Raises:
        ImportError: without LiteRT, saying how to install it.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ImportError(
            f"Running a .tflite file needs LiteRT ({e}): pip install 'keras_transfer[tflite]' (ai-edge-litert)"
        ) from e
    with native_logs_hidden():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
        return Interpreter(model_path=os.fspath(path), num_threads=num_threads)


def tflite_predictor(path, num_threads=None):
    """`predict(images) -> probabilities` for a `.tflite` file through LiteRT (on every core unless `num_threads`
    says otherwise): float32 RGB 0-255 images `(n, height, width, 3)` in, float32 out, whatever the file's input
    and output types (quantized as its details say)."""
    interpreter = tflite_interpreter(path, num_threads or os.cpu_count())
    first, last = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    batch = [None]

    def predict(images):
        images = np.asarray(images, np.float32)
        if batch[0] != len(images):
            interpreter.resize_tensor_input(first["index"], images.shape)
            with native_logs_hidden():
                interpreter.allocate_tensors()
            batch[0] = len(images)
        interpreter.set_tensor(first["index"], _quantized(images, first))
        interpreter.invoke()
        return _dequantized(interpreter.get_tensor(last["index"]), last)

    return predict


def _quantized(x, details):
    if details["dtype"] == np.float32:
        return x
    scale, zero = details["quantization"]
    info = np.iinfo(details["dtype"])
    q = np.round(x / scale + zero) if scale else np.round(x)
    return np.clip(q, info.min, info.max).astype(details["dtype"])


def _dequantized(y, details):
    if details["dtype"] == np.float32:
        return y
    scale, zero = details["quantization"]
    return ((y.astype(np.float32) - zero) * scale) if scale else y.astype(np.float32)


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
