"""Input pipeline throughput: keras_transfer.load_dataset vs keras.utils.image_dataset_from_directory.

Generates a folder of JPEGs of varied sizes (300-500 px), reads it with both loaders resizing to 224 in the same
run, and prints images/s and their ratio. Then measures the images/s a ResNet50 training step consumes at 224 on
this machine (synthetic tensors, no input pipeline), so you can see whether input is the bottleneck.

Usage: python bench/data_pipeline.py [--images 2000] [--folder DIR] [--repeats 2] [--train-steps 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import keras_transfer as kt  # noqa: E402

SIZE = (224, 224)
CLASSES = 10


def make_folder(root, n, seed=0):
    """n photo-like JPEGs (smooth gradients plus noise, so they compress like photos) in CLASSES folders."""
    rng = np.random.default_rng(seed)
    made = 0
    for i in range(n):
        path = os.path.join(root, f"class_{i % CLASSES}", f"{i:05d}.jpg")
        if os.path.exists(path):
            made += 1
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        h, w = rng.integers(300, 501, 2)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * rng.uniform(0.2, 1)) % 256, (yy * rng.uniform(0.2, 1)) % 256,
                         ((xx + yy) * rng.uniform(0.1, 0.5)) % 256], axis=-1)  # fmt: skip
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(path, "JPEG", quality=90)
        made += 1
    return made


def images_per_second(dataset):
    start, n = time.perf_counter(), 0
    for images, _ in dataset:
        n += int(images.shape[0])
    return n / (time.perf_counter() - start), n


def train_step_rate(batch_size, steps, policy):
    model = kt.build_model("resnet50", CLASSES, input_shape=SIZE, weights=None)
    kt.set_trainable(model, policy)
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, *SIZE, 3)).astype("float32")
    y = np.arange(batch_size) % CLASSES
    model.train_on_batch(x, y)  # trace and warm up
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "keras_transfer_bench_jpegs"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="epochs per loader, alternating; best is kept")
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    n = make_folder(args.folder, args.images)
    print(f"{n} JPEGs (300-500 px) in {args.folder} ({time.perf_counter() - start:.0f} s to generate), cores: {os.cpu_count()}")

    ours_rates, keras_rates = [], []
    for _ in range(args.repeats):  # alternate so both see the same page cache and machine load
        ours, _, _, _ = kt.load_dataset(args.folder, image_size=SIZE, batch_size=args.batch_size,
                                        validation_split=0.0, cache=False)
        ours_rates.append(images_per_second(ours)[0])
        theirs = keras.utils.image_dataset_from_directory(args.folder, image_size=SIZE, batch_size=args.batch_size,
                                                          verbose=False)
        keras_rates.append(images_per_second(theirs)[0])
    ours_best, keras_best = max(ours_rates), max(keras_rates)
    cached, _, _, _ = kt.load_dataset(args.folder, image_size=SIZE, batch_size=args.batch_size, validation_split=0.0)
    images_per_second(cached)  # first epoch fills the cache
    cached_rate = images_per_second(cached)[0]

    frozen = train_step_rate(args.batch_size, args.train_steps, "frozen")
    full = train_step_rate(args.batch_size, args.train_steps, "all")

    print(f"\nimages/s at 224x224, batch {args.batch_size}, one epoch over {n} JPEGs (best of {args.repeats}):")
    print(f"  keras_transfer.load_dataset (decode + resize)   {ours_best:8.1f}")
    print(f"  keras image_dataset_from_directory              {keras_best:8.1f}")
    print(f"  ratio ours / keras                              {ours_best / keras_best:8.2f}x")
    print(f"  keras_transfer.load_dataset, cached epoch        {cached_rate:8.1f}")
    print(f"ResNet50 training step consumes (synthetic input, {args.train_steps} steps):")
    print(f"  frozen backbone (head only)                     {frozen:8.1f}")
    print(f"  all layers trainable                            {full:8.1f}")
    print(f"  pipeline / frozen-backbone step                 {ours_best / frozen:8.2f}x")


if __name__ == "__main__":
    main()
