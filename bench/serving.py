"""Serving cost: the exported SavedModel, TFLite and ONNX files vs Keras `predict`, measured side by side in one run.

Builds a model (random weights: speed does not depend on them), exports it, then measures batch-32 images/s and
batch-1 latency (p50 / p99) for `model.predict`, the SavedModel's `serving_default` (float images) and its
`serve_bytes` (JPEG bytes, decoded inside), the TFLite interpreter (float32, default threads) and ONNX Runtime
(CPU provider; skipped without the onnx extra).

Usage: python bench/serving.py [--backbone mobilenet_v2] [--image-size 224] [--batches 10] [--calls 50]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

import keras_transfer as kt
from keras_transfer.export import export_onnx, export_tflite, tflite_predictor


def timed(fn, repeats):
    fn()  # warm up (tracing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=10, help="batch-32 calls per measurement")
    parser.add_argument("--calls", type=int, default=50, help="batch-1 calls per latency measurement")
    args = parser.parse_args(argv)

    size = args.image_size
    model = kt.build_model(args.backbone, 10, input_shape=size, weights=None)
    export = kt.export_saved_model(model, tempfile.mkdtemp(prefix="keras_transfer_serving_"))
    loaded = tf.saved_model.load(export)
    floats, encoded = loaded.signatures["serving_default"], loaded.signatures["serve_bytes"]

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (32, size, size, 3)).astype("float32")
    jpegs = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image.astype(np.uint8)).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    batch, batch_bytes = tf.constant(images), tf.constant(jpegs)
    one, one_bytes = tf.constant(images[:1]), tf.constant(jpegs[:1])

    rows = {
        **_file_rows(model, size, images),
        **{
            "Keras model.predict": (
                lambda: model.predict(images, batch_size=32, verbose=0),
                lambda: model.predict(images[:1], verbose=0),
            ),
            "Keras model(x) (no predict loop)": (
                lambda: model(batch, training=False),
                lambda: model(one, training=False),
            ),
            "SavedModel serving_default": (lambda: floats(images=batch), lambda: floats(images=one)),
            "SavedModel serve_bytes (JPEG)": (
                lambda: encoded(image_bytes=batch_bytes),
                lambda: encoded(image_bytes=one_bytes),
            ),
        },
    }
    print(f"{args.backbone} at {size} px, {os.cpu_count()} CPU cores, export {export}")
    print(f"{'':36} {'batch-32 img/s':>15} {'batch-1 p50 ms':>15} {'p99 ms':>8}")
    results = {}
    for name, (batched, single) in rows.items():
        rate = 32 * args.batches / timed(batched, args.batches).sum()
        latency = timed(single, args.calls) * 1000
        results[name] = rate
        print(f"{name:36} {rate:15.1f} {np.percentile(latency, 50):15.1f} {np.percentile(latency, 99):8.1f}")
    ratio = results["SavedModel serve_bytes (JPEG)"] / results["SavedModel serving_default"]
    print(f"bytes endpoint throughput / float endpoint: {ratio:.2f}x (JPEG decode + resize inside the graph)")
    served = results["SavedModel serving_default"] / results["Keras model.predict"]
    print(f"SavedModel serving_default / Keras predict: {served:.2f}x")
    for name in ("TFLite interpreter", "ONNX Runtime"):
        if name in results:
            print(f"{name} / SavedModel serving_default: {results[name] / results['SavedModel serving_default']:.2f}x")


def _file_rows(model, size, images):
    """TFLite and ONNX Runtime rows: (batch-32 call, batch-1 call)."""
    folder = tempfile.mkdtemp(prefix="keras_transfer_serving_files_")
    export_tflite(model, os.path.join(folder, "model.tflite"))

    def tflite(batch):  # through LiteRT (ai-edge-litert), as the package runs TFLite
        predict = tflite_predictor(os.path.join(folder, "model.tflite"))
        return lambda: predict(batch)

    rows = {"TFLite interpreter": (tflite(images), tflite(images[:1]))}
    try:
        import onnxruntime
    except ImportError:
        print("ONNX Runtime: not installed (pip install 'keras_transfer[onnx]'), row skipped")
        return rows
    session = onnxruntime.InferenceSession(export_onnx(model, os.path.join(folder, "model.onnx")))
    rows["ONNX Runtime"] = (
        lambda: session.run(None, {"images": images}),
        lambda: session.run(None, {"images": images[:1]}),
    )
    return rows


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
