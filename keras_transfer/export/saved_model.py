"""A SavedModel in TF Serving's layout, `<export_dir>/<version>/`, written atomically, with its labels and
metadata."""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from keras_transfer.export.layout import version_file
from keras_transfer.files import new_version, versions
from keras_transfer.heads import check_thresholds
from keras_transfer.images import FORMATS, SIGNATURES, decode_image, within_pixel_limit
from keras_transfer.models import backbone_key, inference_model, input_size, is_multi_label, model_spec

logger = logging.getLogger(__name__)


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
    model = inference_model(model)  # without its augmentation layer
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise ValueError(f"version must be a positive integer. Received: version={version!r}")
    num_classes = model.output_shape[-1]
    if class_names is not None and len(class_names) != max(num_classes, 2 if num_classes == 1 else num_classes):
        raise ValueError(
            f"class_names has {len(class_names)} names but the model predicts {num_classes} classes. "
            f"Received: class_names={list(class_names)!r}"
        )
    thresholds = model_thresholds(model, thresholds)
    try:
        with new_version(export_dir, version) as (number, tmp):
            _write_saved_model(model, tmp, thresholds)
            with open(version_file(tmp, "labels"), "w") as f:
                f.writelines(f"{name}\n" for name in (class_names or [str(i) for i in range(num_classes)]))
            with open(version_file(tmp, "metadata"), "w") as f:
                json.dump(export_metadata(model, class_names, metadata, thresholds), f, indent=2)
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


def model_thresholds(model, thresholds):
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
    size = fixed_input_size(model)
    archive = keras.export.ExportArchive()
    archive.track(model)

    units = model.output_shape[-1]

    def predict(images):
        # an empty batch answers with empty outputs (some layers cannot broadcast over a batch of none)
        probabilities = tf.cond(
            tf.shape(images)[0] > 0,
            lambda: tf.cast(model(images, training=False), tf.float32),
            lambda: tf.zeros([0, units], tf.float32),
        )
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


def fixed_input_size(model):
    """The (height, width) the model resizes to; the bytes signature and TFLite need it to batch images."""
    size = input_size(model)
    if size is None:
        raise ValueError(
            f"Model {model.name!r} takes images of any size, so encoded images cannot be batched for 'serve_bytes'; "
            "build it with a fixed input_shape to export it."
        )
    return size


def export_metadata(model, class_names, extra, thresholds=None):
    facts = {"backbone": backbone_key(model), "num_classes": int(model.output_shape[-1])}
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
