"""One predictor for every format (`.keras`, SavedModel, `.tflite`, `.onnx`): encoded images in, probabilities
out, through the one image decoder; and what an export says about itself."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import tensorflow as tf

from keras_transfer.export.layout import version_file
from keras_transfer.export.onnx import onnx_predictor
from keras_transfer.export.saved_model import model_thresholds
from keras_transfer.export.tflite import tflite_metadata, tflite_predictor
from keras_transfer.files import newest_version
from keras_transfer.images import image_array
from keras_transfer.models import input_size, load_model
from keras_transfer.runs import run_labels, run_model

logger = logging.getLogger(__name__)


def load_predictor(path, *, tta=None, safe_mode=True):
    """Loads a model file for prediction on encoded images, through the one image decoder whatever the format:
    check the file you are about to ship.

    Args:
        path: a `.keras` file (its run's class names where it lies in a run folder), a run folder (its
            `model.keras`), a SavedModel version folder (or a base folder of numbered versions: the newest), a
            `.tflite` file (run by LiteRT) or a `.onnx` file (run by ONNX Runtime).
        tta: None, or `"flip"`: average each image's probabilities with its left-right mirror's.
        safe_mode: False loads a `.keras` file's Lambda layers (Python code: for a file you trust).

    Returns:
        `(predict, class_names)`: `predict(list_of_encoded_images) -> probabilities` as a NumPy array
        `(n, num_classes)`; class names from the export's labels or metadata ("0", "1", ... where it has none).

    Raises:
        ValueError: when `path` is none of those.
    """
    path, run_dir = run_model(path)
    if path.endswith(".keras") and os.path.isfile(path):
        model = load_model(path, safe_mode=safe_mode)
        names = run_labels(run_dir)[0] if run_dir else None
        return keras_predictor(model, tta=tta), names or [str(i) for i in range(model.output_shape[-1])]
    if path.endswith((".tflite", ".onnx")) and os.path.isfile(path):
        facts = export_facts(path)
        arrays = tflite_predictor(path) if path.endswith(".tflite") else onnx_predictor(path)
        names = facts.get("class_names") or [str(i) for i in range(facts["num_classes"])]
        return _blob_predictor(arrays, tuple(facts["input_size"]), tta), names
    version = path if os.path.exists(version_file(path, "graph")) else newest_version(path)
    if not os.path.exists(version_file(version, "graph")):
        raise ValueError(
            f"{path!r} is not a .keras file, a SavedModel folder, a folder of numbered versions, a .tflite file "
            f"or a .onnx file. Received: model={path!r}"
        )
    loaded = tf.saved_model.load(version)
    with open(version_file(version, "labels")) as f:
        class_names = [line.rstrip("\n") for line in f]
    if tta == "flip":  # decoded here as serve_bytes decodes, then the pixels signature on each image and its mirror
        size = tuple(export_facts(version)["input_size"])
        return _blob_predictor(signature_predictor(loaded), size, tta), class_names

    def predict_saved_model(blobs):
        return loaded.signatures["serve_bytes"](image_bytes=tf.constant(list(blobs)))["probabilities"].numpy()

    return predict_saved_model, class_names


def _blob_predictor(arrays, size, tta):
    def predict(blobs):
        images = np.stack([image_array(b, size=size) for b in blobs]).astype(np.float32)
        return _mirror_average(arrays, images) if tta == "flip" else np.asarray(arrays(images))

    return predict


def signature_predictor(loaded):
    """`predict(images) -> probabilities` through a loaded SavedModel's `serving_default` (pixels) signature."""
    pixels = loaded.signatures["serving_default"]

    def predict(images, loaded=loaded):  # holds `loaded`: its signatures reference its variables weakly
        return pixels(images=tf.constant(images, tf.float32))["probabilities"].numpy()

    return predict


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
        version = path if os.path.exists(version_file(path, "graph")) else newest_version(path)
        with open(version_file(version, "metadata")) as f:
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
    """The per-label thresholds of a multi-label export (from its metadata; for a multi-label `.keras` file, its
    run's tuned thresholds, else 0.5 each), or None for a model with one label per image."""
    path, run_dir = run_model(path)
    if path.endswith(".keras") and os.path.isfile(path):
        tuned = run_labels(run_dir)[1] if run_dir else None
        return model_thresholds(load_model(path), tuned)
    return export_facts(path).get("thresholds")


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
