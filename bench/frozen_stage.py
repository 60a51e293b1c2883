"""Stage 1 (head on a frozen backbone): fine_tune's cached features vs the Keras guide's plain fit.

Same data, same model, same initial weights, same 10 epochs. The Keras guide freezes the base and calls `fit`,
which runs the frozen backbone over every image in every epoch; `fine_tune` runs it once and trains the head on
cached features. Prints both wall times, their ratio, and both validation accuracies.

Usage: python bench/frozen_stage.py [--backbone efficientnet_lite0] [--image-size 224] [--weights imagenet]
                                   [--per-class 200] [--epochs 10] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import keras
import numpy as np

import keras_transfer as kt


def build(args, num_classes, seed):
    keras.utils.set_random_seed(seed)
    return kt.build_model(args.backbone, num_classes, input_shape=args.image_size, weights=args.weights, dropout=0.2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", help="imagenet, none or a backbone weights file")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=200, help="training images per class")
    parser.add_argument("--validation-split", type=float, default=0.02)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1, help="repeat both with this many initial heads")
    args = parser.parse_args(argv)
    args.weights = None if args.weights == "none" else args.weights

    train, val, _, info = kt.load_dataset(
        args.data,
        image_size=args.image_size,
        batch_size=32,
        labels_per_class=args.per_class,
        validation_split=args.validation_split,
    )
    print(info)
    for _ in train:  # fill the image cache first, so neither side pays for decoding
        pass
    for _ in val:
        pass

    times, accuracies = {"ours": [], "plain": []}, {"ours": [], "plain": []}
    for seed in range(args.seeds):
        model = build(args, info.num_classes, seed)
        start = time.perf_counter()
        kt.fine_tune(model, train, val, head_epochs=args.epochs, fine_tune_epochs=0, learning_rate=1e-3, verbose=0)
        times["ours"].append(time.perf_counter() - start)
        accuracies["ours"].append(kt.evaluate(model, val).accuracy)

        model = build(args, info.num_classes, seed)  # the Keras guide: freeze the base, compile, fit
        kt.set_trainable(model, "frozen")
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        start = time.perf_counter()
        model.fit(train, validation_data=val, epochs=args.epochs, verbose=0)
        times["plain"].append(time.perf_counter() - start)
        accuracies["plain"].append(kt.evaluate(model, val).accuracy)
    ours, plain = np.mean(times["ours"]), np.mean(times["plain"])
    ours_acc, plain_acc = np.mean(accuracies["ours"]), np.mean(accuracies["plain"])

    print(
        f"\n{args.backbone} at {args.image_size} px, {args.epochs} epochs, {sum(info.counts['train'].values())} "
        f"training and {sum(info.counts['validation'].values())} validation images, {os.cpu_count()} cores:"
    )
    print(f"  {'mean of ' + str(args.seeds) + ' initial heads':34} {'seconds':>8} {'val accuracy':>13} {'sd':>6}")
    print(f"  {'fine_tune, cached features':34} {ours:8.1f} {ours_acc:13.2%} {np.std(accuracies['ours']):6.2%}")
    print(f"  {'plain fit, frozen base (Keras)':34} {plain:8.1f} {plain_acc:13.2%} {np.std(accuracies['plain']):6.2%}")
    print(f"  speed-up {plain / ours:.1f}x, accuracy difference {100 * (ours_acc - plain_acc):+.1f} points")


if __name__ == "__main__":
    main()
