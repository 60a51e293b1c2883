"""ONNX files through tf2onnx, checked for ops it could not convert, with their metadata inside."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings

import numpy as np
import tensorflow as tf

from keras_transfer.export.layout import beside
from keras_transfer.export.saved_model import export_metadata, fixed_input_size, model_thresholds
from keras_transfer.export.tflite import culprits
from keras_transfer.files import atomic_path, write_text
from keras_transfer.models import inference_model
from keras_transfer.terminal import native_logs_hidden

logger = logging.getLogger(__name__)


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
    model = inference_model(model)  # without its augmentation layer
    height, width = fixed_input_size(model)
    thresholds = model_thresholds(model, thresholds)
    _onnx_modules()
    model(np.zeros((1, height, width, 3), np.float32))  # Keras exports only a model that was called
    path = os.fspath(path)
    with atomic_path(path) as tmp, _Unconvertible(model) as unconvertible:
        with native_logs_hidden(), warnings.catch_warnings(), _quiet_tf2onnx():  # grappler's lines, Keras's patch
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
            export_metadata(
                model, class_names, {"input": "images: float32 RGB 0-255, preprocessing inside"}, thresholds
            ),
        )
    if class_names is not None:
        write_text(beside(path, "labels"), "\n".join(class_names) + "\n")
    logger.info("Wrote %s (%d bytes)", path, os.path.getsize(path))
    return path


@contextlib.contextmanager
def _quiet_tf2onnx():
    """tf2onnx's INFO lines ("Using opset", "Optimizing ONNX model", ...) hidden while it converts."""
    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        tf2onnx_logger.setLevel(level)


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
            f"Cannot export {self.model.name!r} to ONNX: {culprits(self.model, self.ops)}, which ONNX cannot express. "
            "Export a SavedModel or TFLite instead, or replace that layer."
        )


def _add_onnx_metadata(path, facts):
    import onnx

    proto = onnx.load(path)
    for key, value in facts.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, path)


def onnx_predictor(path):
    """`predict(images) -> probabilities` for a `.onnx` file from `export_onnx`, through ONNX Runtime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.asarray(images, np.float32)})[0]
