"""Input pipeline throughput on photo-sized JPEGs: Keras's image_dataset_from_directory vs keras_transfer's
pipeline with and without size-aware decoding, and what training consumes.

Writes (or reuses) a folder of photo-like JPEGs at --size (scikit-learn's two sample photos resized, with noise so
that no two files are equal), then lists the folder and reads one epoch with each loader resizing to 224
(the listing counts: ours reads every file's header there), alternating, --repeats times,
and prints the median images/s and the ratios, and the median CPU time per image (all threads of the process):
on a shared machine the wall-clock rate moves with what else runs there (measured here: the same loader at
770 or 1,150 images/s from one epoch to the next), the CPU time per image hardly does. Then times
`tf.io.decode_jpeg` alone at each DCT scale (the floor under any pipeline), and the images/s
an EfficientNet-Lite0 and a ResNet50 training step (all layers) consume at 224 on this machine (synthetic
tensors), so you see which is the bottleneck.

Usage: python bench/data_pipeline.py [--size 2400x1600] [--images 300] [--repeats 5] [--train-steps 3]
"""

from __future__ import annotations

import argparse
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
from keras_transfer.data import pipeline

SIZE = (224, 224)
CLASSES = 10


def make_folder(root, n, size):
    """n photo-like JPEGs of `size` (width, height) in CLASSES folders: the sample photos resized, plus noise."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p).resize(size, Image.BICUBIC) for p in load_sample_images().images]
    rng = np.random.default_rng(0)
    for i in range(n):
        path = os.path.join(root, f"class_{i % CLASSES}", f"{i:05d}.jpg")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        noisy = np.asarray(photos[i % 2], np.float32) + rng.normal(0, 6, (size[1], size[0], 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return n


def images_per_second(make):
    """Images/s of one epoch and CPU milliseconds per image, counting the loader's listing of the folder too
    (ours reads every header there)."""
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    for batch, _ in make():
        n += int(batch.shape[0])
    return n / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / n


def train_step_rate(backbone, batch_size, steps):
    model = kt.build_model(backbone, CLASSES, input_shape=SIZE, weights=None)
    kt.set_trainable(model, "all")
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, *SIZE, 3)).astype("float32")
    y = np.arange(batch_size) % CLASSES
    model.train_on_batch(x, y)  # trace and warm up
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch_size / (time.perf_counter() - start)


def decode_ms(folder, files=40):
    """Milliseconds per JPEG of `tf.io.decode_jpeg` alone at each DCT ratio, one image at a time (best of 3): what
    no pipeline goes below, since libjpeg still reads every coefficient (Huffman decoding) at a reduced scale."""
    import tensorflow as tf

    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".jpg"))[:files]
    blobs = [tf.constant(tf.io.read_file(p)) for p in paths]
    result = {}
    for ratio in (1, 2, 4, 8):
        decode = tf.function(
            lambda b, r=ratio: tf.io.decode_jpeg(b, channels=3, ratio=r), input_signature=[tf.TensorSpec([], tf.string)]
        )
        decode(blobs[0])
        best = []
        for _ in range(3):
            start = time.perf_counter()
            for blob in blobs:
                decode(blob)
            best.append((time.perf_counter() - start) * 1000 / len(blobs))
        result[ratio] = min(best)
    return result


def loaders(folder, batch_size):
    """name -> a function giving one fresh epoch's dataset."""

    def ours(dct_scaling):
        # load_dataset's uncached training split (the folder listed, decode_files to float32 on shuffled file
        # names, batched), with or without the reduced JPEG decode.
        def make():
            classes = sorted(os.listdir(folder))
            files = [
                (os.path.join(folder, c, f), i)
                for i, c in enumerate(classes)
                for f in sorted(os.listdir(os.path.join(folder, c)))
            ]
            paths, labels = [p for p, _ in files], [label for _, label in files]
            ds = pipeline.decode_files(paths, labels, SIZE, shuffle_seed=0, dtype=tf.float32, dct_scaling=dct_scaling)
            return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

        return make

    return {
        "keras image_dataset_from_directory": lambda: keras.utils.image_dataset_from_directory(
            folder, image_size=SIZE, batch_size=batch_size, verbose=False
        ),
        "keras_transfer, full decode + resize": ours(False),
        "keras_transfer, size-aware decode": ours(True),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2400x1600", help="WIDTHxHEIGHT of the generated photos")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--folder", default=None, help="default: a folder per size in the temp folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="epochs per loader, alternating; the median is kept")
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    folder = args.folder or os.path.join(tempfile.gettempdir(), f"keras_transfer_bench_photos_{args.size}")

    start = time.perf_counter()
    n = make_folder(folder, args.images, size)
    print(
        f"{n} JPEGs of {size[0]}x{size[1]} in {folder} ({time.perf_counter() - start:.0f} s), cores: {os.cpu_count()}"
    )
    runs = {name: [] for name in loaders(folder, args.batch_size)}
    for _ in range(args.repeats):  # alternate so that every loader sees the same page cache and machine load
        for name, make in loaders(folder, args.batch_size).items():
            runs[name].append(images_per_second(make))
    median = {name: float(np.median([rate for rate, _ in r])) for name, r in runs.items()}
    cpu = {name: float(np.median([ms for _, ms in r])) for name, r in runs.items()}
    decode = decode_ms(folder)
    consume = {b: train_step_rate(b, args.batch_size, args.train_steps) for b in ("efficientnet_lite0", "resnet50")}

    keras_name = "keras image_dataset_from_directory"
    fast = median["keras_transfer, size-aware decode"]
    print(f"\n{size[0]}x{size[1]} JPEGs -> 224x224, batch {args.batch_size}, median of {args.repeats} epochs:")
    print(f"  {'':<40} {'images/s':>8}   {'vs Keras':>8}   {'CPU ms/image':>12}   {'vs Keras':>8}")
    for name, rate in median.items():
        print(
            f"  {name:<40} {rate:8.1f}   {rate / median[keras_name]:7.2f}x   {cpu[name]:12.2f}   "
            f"{cpu[keras_name] / cpu[name]:7.2f}x"
        )
    print(
        "decode_jpeg alone, one image at a time, ms/image: "
        + ", ".join(f"1/{r} {ms:.1f}" for r, ms in decode.items())
        + f" (the most a reduced scale can save: {decode[1] / min(decode.values()):.2f}x)"
    )
    print(f"training step, all layers, synthetic input ({args.train_steps} steps):")
    for backbone, rate in consume.items():
        print(f"  {backbone:<40} {rate:8.1f}   size-aware pipeline / step {fast / rate:5.2f}x")


if __name__ == "__main__":
    main()
