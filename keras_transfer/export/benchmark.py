"""Each export format measured side by side: size, accuracy, distance from Keras's probabilities, speed."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from keras_transfer.export.onnx import export_onnx, onnx_predictor
from keras_transfer.export.predictors import signature_predictor
from keras_transfer.export.saved_model import export_saved_model
from keras_transfer.export.tflite import dataset_arrays, export_tflite, tflite_predictor
from keras_transfer.files import write_text
from keras_transfer.runs import run_file

logger = logging.getLogger(__name__)


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
    images, labels = dataset_arrays(dataset)
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
        return size, signature_predictor(tf.saved_model.load(version))
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
