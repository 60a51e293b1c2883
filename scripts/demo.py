"""Offline transfer-learning demo on scikit-learn's digits (no downloads).

Seed 001's flow with the core library: train VGG16 from scratch on digits 0-4 and save it; build a model for
digits 5-9 on that saved backbone (`build_model(weights="....keras")`); train the head on a frozen backbone,
then unfreeze `block5` (seed 002) at a lower learning rate; compare with the same model trained from scratch on
the same few labels; save, reload in safe mode and predict. Prints a short table.

Usage: python scripts/demo.py [--labels-per-class 5] [--output saved_models/demo]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402

IMAGE_SIZE = 32


def digits_rgb(seed):
    """scikit-learn's 1,797 8x8 digits as RGB 0-255 images (the model resizes them), shuffled."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.repeat((digits.images * (255.0 / 16.0)).astype("float32")[..., None], 3, axis=-1)
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], digits.target[order]


def few_shot_split(x, y, classes, labels_per_class):
    """The first `labels_per_class` images of each class for training, the rest for testing; labels 0..k-1."""
    train, test = [], []
    for new, c in enumerate(classes):
        idx = np.flatnonzero(y == c)
        train += [(i, new) for i in idx[:labels_per_class]]
        test += [(i, new) for i in idx[labels_per_class:]]
    pick = lambda pairs: (x[[i for i, _ in pairs]], np.array([label for _, label in pairs]))  # noqa: E731
    return pick(train), pick(test)


def compile_(model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])


def accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(axis=1) == y))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels-per-class", type=int, default=5)
    parser.add_argument("--output", default="saved_models/demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.labels_per_class < 1:
        parser.error(f"--labels-per-class must be >= 1, got {args.labels_per_class}")
    os.makedirs(args.output, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    x, y = digits_rgb(args.seed)
    start = time.time()

    pretrained_path = os.path.join(args.output, "pretrained_digits_0-4.keras")
    if os.path.exists(pretrained_path):
        print(f"[1/4] reusing {pretrained_path}")
    else:
        print("[1/4] pretraining vgg16 from scratch on digits 0-4 (all their images)")
        source = np.isin(y, range(5))
        model = kt.build_model("vgg16", 5, input_shape=IMAGE_SIZE, weights=None, dense_units=(128,), dropout=0.2)
        kt.set_trainable(model, "all")
        compile_(model, 1e-4)
        model.fit(x[source], y[source], epochs=3, batch_size=32, validation_split=0.2, verbose=2)
        model.save(pretrained_path)

    (x_train, y_train), (x_test, y_test) = few_shot_split(x, y, range(5, 10), args.labels_per_class)
    print(f"[2/4] transfer to digits 5-9: {len(x_train)} labelled images, {len(x_test)} held-out test images")
    transfer = kt.build_model("vgg16", 5, input_shape=IMAGE_SIZE, weights=pretrained_path, dense_units=(128,),
                              dropout=0.2)
    print(kt.set_trainable(transfer, "none"))
    compile_(transfer, 1e-3)
    transfer.fit(x_train, y_train, epochs=30, batch_size=32, verbose=0)
    head_only = accuracy(transfer, x_test, y_test)
    print(kt.set_trainable(transfer, "from:block5"))
    compile_(transfer, 1e-4)
    transfer.fit(x_train, y_train, epochs=20, batch_size=32, verbose=0)
    fine_tuned = accuracy(transfer, x_test, y_test)

    print("[3/4] the same model from scratch on the same images and steps")
    scratch = kt.build_model("vgg16", 5, input_shape=IMAGE_SIZE, weights=None, dense_units=(128,), dropout=0.2)
    kt.set_trainable(scratch, "all")
    compile_(scratch, 1e-4)
    scratch.fit(x_train, y_train, epochs=50, batch_size=32, verbose=0)
    from_scratch = accuracy(scratch, x_test, y_test)

    print("[4/4] save, reload in safe mode, predict")
    final_path = os.path.join(args.output, "digits_5-9.keras")
    transfer.save(final_path)
    reloaded = keras.saving.load_model(final_path, safe_mode=True)
    sample = x_test[:8]
    same = np.allclose(reloaded.predict(sample, verbose=0), transfer.predict(sample, verbose=0), atol=1e-6)
    print(f"  reloaded {final_path}: predictions identical={same}; "
          f"predicted {[int(c) + 5 for c in reloaded.predict(sample, verbose=0).argmax(1)]}, "
          f"true {[int(c) + 5 for c in y_test[:8]]}")

    print(f"\nDigits 5-9, {args.labels_per_class} labels per class, accuracy on {len(x_test)} held-out images:")
    print(f"  {'vgg16 pretrained on 0-4, head only':<40} {head_only:6.1%}")
    print(f"  {'  + fine-tune block5':<40} {fine_tuned:6.1%}")
    print(f"  {'vgg16 from scratch':<40} {from_scratch:6.1%}")
    print(f"({time.time() - start:.0f} s)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
