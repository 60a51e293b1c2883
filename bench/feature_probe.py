"""A one-minute check of pretrained features: logistic regression on frozen features, by labels per class.

For each weights file: embed Fashion-MNIST classes 5-9 (or --data/--classes) with the backbone's pooled features,
fit the package's own linear probe (`heads.fit_probe`: scikit-learn's logistic regression, C=10, the probe LP-FT
starts from) on the L2-normalised features of n labelled images per class for 3 seeds, and score the official
test images. Much faster than bench/transfer_gain.py, for comparing pretraining settings.

Usage: python bench/feature_probe.py WEIGHTS [WEIGHTS ...] [--backbone small_cnn] [--labels 1 5 20]
"""

from __future__ import annotations

import argparse
import os

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import numpy as np

import keras_transfer as kt
from keras_transfer.heads import fit_probe
from keras_transfer.retrieval import FeatureIndex


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="backbone weights files, or none")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--classes", nargs="+", type=int, default=[5, 6, 7, 8, 9])
    parser.add_argument("--labels", nargs="+", type=int, default=[1, 5, 20])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)

    def load(**kwargs):
        return kt.load_dataset(
            args.data, image_size=args.image_size, batch_size=256, validation_split=0.0, classes=args.classes, **kwargs
        )

    _, _, test, _ = load(seed=0)
    print(f"{'weights':<60} " + " ".join(f"{n:>3} labels" for n in args.labels))
    for weights in args.weights:
        index = FeatureIndex(args.backbone, weights=None if weights == "none" else weights, image_size=args.image_size)
        index.add(test)
        test_x, test_y = index.embeddings, index.labels
        cells = []
        for n in args.labels:
            scores = []
            for seed in range(args.seeds):
                train, _, _, _ = load(seed=seed, labels_per_class=n)
                batches = list(train)  # one pass: the training set reshuffles on every iteration
                x = np.concatenate([index.embed(images.numpy()) for images, _ in batches])
                y = np.concatenate([labels.numpy() for _, labels in batches])
                kernel, bias = fit_probe(x, y, len(args.classes))
                scores.append(float(np.mean((test_x @ kernel + bias).argmax(axis=1) == test_y)))
            cells.append(f"{100 * np.mean(scores):9.1f}%")
        name = "none (random init)" if weights == "none" else os.path.relpath(weights)
        print(f"{name:<60} " + " ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
