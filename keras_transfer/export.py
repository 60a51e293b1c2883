"""Export for serving: a SavedModel in TF Serving's layout, `<export_dir>/<version>/`, written atomically."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.compat import flatten_layers
from keras_transfer.files import atomic_path, new_version, versions, write_text
from keras_transfer.heads import check_thresholds
from keras_transfer.images import FORMATS, SIGNATURES, decode_image, image_array, within_pixel_limit
from keras_transfer.models import backbone_key, input_size, is_multi_label, load_model, model_spec
from keras_transfer.runs import run_file
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
    height, width = _input_size(model)
    calibration = _representative(model, representative_data) if quantize == "int8" else None
    described = f"images: {input_type} RGB 0-255"
    facts = _metadata(model, class_names, {"input": described, "quantize": quantize}, _thresholds(model, thresholds))
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
        why = f"{_culprits(model, found)}, which TFLite has no built-in kernel for"
    else:
        why = next((line.strip() for line in text.splitlines() if line.strip()), "the converter failed")
    integer_only = quantize == "int8" and not found  # e.g. an op without an int8 kernel
    instead = "with quantize='dynamic' or 'float16'" if integer_only else "a SavedModel or ONNX"
    return f"Cannot convert {model.name!r} to TFLite (quantize={quantize!r}): {why}. Export {instead} instead."


def _culprits(model, found):
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
    expected = (*_input_size(model), 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or not len(images):
        raise ValueError(
            f"representative_data must hold images of shape (height, width, 3) = {expected}, the model's input. "
            f"Received: images of shape {images.shape}"
        )
    return lambda: ([image[None]] for image in images)


def dataset_images(data, limit=None):
    """The images (float32, stacked) of a dataset of `(images, labels)` or images batches, or of an array; the
    first `limit` when given."""
    return _dataset_arrays(data, limit)[0]


def _dataset_arrays(data, limit=None):
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


EXPORT_FORMATS = {  # benchmark_exports' format -> (file or folder name in its output folder, export_tflite quantize)
    "keras": (None, None),
    "saved_model": ("saved_model", None),
    "tflite": ("model.tflite", None),
    "tflite_float16": ("model_float16.tflite", "float16"),
    "tflite_dynamic": ("model_dynamic.tflite", "dynamic"),
    "tflite_int8": ("model_int8.tflite", "int8"),
    "onnx": (None, None),
}


def benchmark_exports(
    model, dataset, *, formats=tuple(EXPORT_FORMATS), representative_data=None, output_dir=None, repeats=5
):
    """Writes `model` in each format and measures what each file does: its size, its accuracy on `dataset`, how
    far its probabilities are from Keras's, and its speed on this machine (the formats in turn, `repeats` rounds).

    Args:
        model: a model from `build_model` with a fixed input size.
        dataset: `(images, labels)` batches to score on, e.g. the test split from `load_dataset`.
        formats: keys of `EXPORT_FORMATS`.
        representative_data: calibration images for `"tflite_int8"` (see `export_tflite`); without them that row
            says so.
        output_dir: a folder to keep the files in, with the table as `exports.json`; None: a temporary one.
        repeats: timing rounds; the median is reported.

    Returns:
        One dict per format: `format`, `bytes`, `accuracy` (single label: top-1; several labels per image: mean
        average precision; `metric` says which), `agreement` (the fraction of images whose top class is Keras's),
        `max_difference` (the largest absolute probability difference from Keras), `latency_ms` (one image, median)
        and `images_per_second` (batches of 32, median); a format that could not be written or run holds `error`
        (why) instead.

    Raises:
        ValueError: for an unknown format, or an empty `dataset`.
    """
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"Unknown export formats {unknown}. Expected some of: {', '.join(EXPORT_FORMATS)}")
    images, labels = _dataset_arrays(dataset)
    if labels is None or not len(images):
        raise ValueError("benchmark_exports needs (images, labels) batches to score on, but the dataset is empty")
    reference = _batched(model.predict_on_batch, images)
    with tempfile.TemporaryDirectory(prefix="keras_transfer_exports_") as scratch:
        folder = os.fspath(output_dir or scratch)
        os.makedirs(folder, exist_ok=True)
        rows, predictors = [], {}
        for name in formats:
            try:
                size, predictors[name] = _write_format(model, name, folder, representative_data)
                predicted = reference if name == "keras" else _batched(predictors[name], images)
                rows.append({"format": name, "bytes": size, **_scores(predicted, labels, reference)})
            except Exception as e:  # a format this model cannot take: its row says why
                predictors.pop(name, None)
                rows.append({"format": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
        timings = _alternating_timings(predictors, images, repeats)
    for row in rows:
        row.update(timings.get(row["format"], {}))
    if output_dir is not None:
        write_text(run_file(folder, "exports_table"), json.dumps(rows, indent=1) + "\n")
    return rows


def format_exports(rows):
    """`benchmark_exports`' rows as a text table; sizes also as a factor of the float32 TFLite file's (or the
    first row's)."""
    measured = [r for r in rows if "bytes" in r]
    base = next((r for r in measured if r["format"] == "tflite"), measured[0] if measured else None)
    header = ("size", "smaller", "score", "agreement", "max |dp|", "latency", "images/s")
    widths = (10, 9, 17, 11, 10, 10, 10)
    lines = [f"  {'format':<16}" + "".join(f"{h:>{w}}" for h, w in zip(header, widths))]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['format']:<16}not measured: {r['error']}")
            continue
        cells = (
            f"{r['bytes'] / 1e6:.2f} MB",
            f"{base['bytes'] / r['bytes']:.2f}x",
            f"{r['metric']} {r['accuracy']:.2%}",
            f"{r['agreement']:.1%}",
            f"{r['max_difference']:.4f}",
            f"{r['latency_ms']:.2f} ms",
            f"{r['images_per_second']:.1f}",
        )
        lines.append(f"  {r['format']:<16}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    return "\n".join(lines)


def _batched(predict, images, batch=32):
    return np.concatenate([np.asarray(predict(images[i : i + batch])) for i in range(0, len(images), batch)])


def _write_format(model, name, folder, representative_data):
    """Writes one format into `folder`; returns its size in bytes and `predict(images) -> probabilities`."""
    file, quantize = EXPORT_FORMATS[name]
    if name == "keras":
        path = run_file(folder, "model")
        model.save(path)
        return os.path.getsize(path), model.predict_on_batch
    if name == "saved_model":
        version = export_saved_model(model, os.path.join(folder, file))  # the next version in a reused folder
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(version) for f in names)
        return size, _signature_predictor(tf.saved_model.load(version))
    if name == "onnx":
        path = export_onnx(model, run_file(folder, "onnx"))
        return os.path.getsize(path), onnx_predictor(path)
    path = os.path.join(folder, file)
    size = export_tflite(model, path, quantize=quantize, representative_data=representative_data)
    return size, tflite_predictor(path)


def _scores(probabilities, labels, reference):
    from keras_transfer.evaluation import mean_average_precision

    several = labels.ndim == 2 and labels.shape[1] > 1
    if several:
        score = mean_average_precision(probabilities, labels)
    else:
        score = float(np.mean(np.argmax(probabilities, -1) == labels.reshape(-1)))
    return {
        "metric": "mAP" if several else "accuracy",
        "accuracy": score,
        "agreement": float(np.mean(np.argmax(probabilities, -1) == np.argmax(reference, -1))),
        "max_difference": float(np.abs(probabilities - reference).max()),
    }


def _alternating_timings(predictors, images, repeats, calls=10):
    """{format: latency_ms, images_per_second}: per round, each format in turn times `calls` one-image calls and
    one batch of 32 (the images repeated to fill it), after one untimed call of each shape."""
    one, full = images[:1], np.resize(images, (32, *images.shape[1:]))
    for predict in predictors.values():
        predict(one), predict(full)
    seconds = {name: ([], []) for name in predictors}
    for _ in range(repeats):
        for name, predict in predictors.items():
            for _ in range(calls):
                start = time.perf_counter()
                predict(one)
                seconds[name][0].append(time.perf_counter() - start)
            start = time.perf_counter()
            predict(full)
            seconds[name][1].append(time.perf_counter() - start)
    return {
        name: {"latency_ms": 1000 * float(np.median(single)), "images_per_second": 32 / float(np.median(batch))}
        for name, (single, batch) in seconds.items()
    }


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
        raise ValueError(
            f"Cannot export {self.model.name!r} to ONNX: {_culprits(self.model, self.ops)}, which ONNX cannot express. "
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
    """Loads a model file for prediction on encoded images, through the one image decoder whatever the format:
    check the file you are about to ship.

    Args:
        path: a `.keras` file, a SavedModel version folder (or a base folder of numbered versions: the newest),
            a `.tflite` file (run by LiteRT) or a `.onnx` file (run by ONNX Runtime).
        tta: None, or `"flip"`: average each image's probabilities with its left-right mirror's.

    Returns:
        `(predict, class_names)`: `predict(list_of_encoded_images) -> probabilities` as a NumPy array
        `(n, num_classes)`; class names from the export's labels or metadata ("0", "1", ... where it has none).

    Raises:
        ValueError: when `path` is none of those.
    """
    path = os.fspath(path)
    if path.endswith(".keras") and os.path.isfile(path):
        model = load_model(path)
        return keras_predictor(model, tta=tta), [str(i) for i in range(model.output_shape[-1])]
    if path.endswith((".tflite", ".onnx")) and os.path.isfile(path):
        facts = export_facts(path)
        arrays = tflite_predictor(path) if path.endswith(".tflite") else onnx_predictor(path)
        names = facts.get("class_names") or [str(i) for i in range(facts["num_classes"])]
        return _blob_predictor(arrays, tuple(facts["input_size"]), tta), names
    version = _newest_version(path)
    if not os.path.exists(os.path.join(version, "saved_model.pb")):
        raise ValueError(
            f"{path!r} is not a .keras file, a SavedModel folder, a folder of numbered versions, a .tflite file "
            f"or a .onnx file. Received: model={path!r}"
        )
    loaded = tf.saved_model.load(version)
    with open(os.path.join(version, "labels.txt")) as f:
        class_names = [line.rstrip("\n") for line in f]
    if tta == "flip":  # decoded here as serve_bytes decodes, then the pixels signature on each image and its mirror
        size = tuple(export_facts(version)["input_size"])
        return _blob_predictor(_signature_predictor(loaded), size, tta), class_names

    def predict_saved_model(blobs):
        return loaded.signatures["serve_bytes"](image_bytes=tf.constant(list(blobs)))["probabilities"].numpy()

    return predict_saved_model, class_names


def _blob_predictor(arrays, size, tta):
    def predict(blobs):
        images = np.stack([image_array(b, size=size) for b in blobs]).astype(np.float32)
        return _mirror_average(arrays, images) if tta == "flip" else np.asarray(arrays(images))

    return predict


def _signature_predictor(loaded):
    """`predict(images) -> probabilities` through a loaded SavedModel's `serving_default` (pixels) signature."""
    pixels = loaded.signatures["serving_default"]

    def predict(images, loaded=loaded):  # holds `loaded`: its signatures reference its variables weakly
        return pixels(images=tf.constant(images, tf.float32))["probabilities"].numpy()

    return predict


def onnx_predictor(path):
    """`predict(images) -> probabilities` for a `.onnx` file from `export_onnx`, through ONNX Runtime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.asarray(images, np.float32)})[0]


def export_facts(path):
    """What an export says about itself (backbone, input size, class names, thresholds, ...): a SavedModel's
    `metadata.json`, a `.tflite` file's metadata, a `.onnx` file's metadata properties; {} where it has none."""
    path = os.fspath(path)
    if path.endswith(".tflite"):
        return tflite_metadata(path)
    if path.endswith(".onnx"):
        import onnx

        return {p.key: _json_or_text(p.value) for p in onnx.load(path, load_external_data=False).metadata_props}
    try:
        with open(os.path.join(_newest_version(path), "metadata.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _json_or_text(value):
    try:
        return json.loads(value)
    except ValueError:  # written as text: a string fact
        return value


def _mirror_average(predict, images):
    return (np.asarray(predict(images)) + np.asarray(predict(images[:, :, ::-1].copy()))) / 2


def export_thresholds(path):
    """The per-label thresholds of a multi-label export (from its metadata; 0.5 each for a multi-label `.keras`
    file), or None for a model with one label per image."""
    if os.fspath(path).endswith(".keras") and os.path.isfile(path):
        return _thresholds(load_model(path), None)
    return export_facts(path).get("thresholds")


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
