"""Long-tailed training classes: unweighted vs `class_weight="balanced"`, EfficientNet-Lite0 (ImageNet) LP-FT.

Fashion-MNIST classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) with a long-tailed training set: --counts
images per class (default 200 / 60 / 20 / 8 / 4), the classes given those counts in an order drawn by the seed (so
the rarest class changes from seed to seed), the images drawn by the seed too. Both rows train on the same draw
with the demo's recipe (`head_init="probe"`, one epoch of stage 1 at 1e-3, then every layer 29 epochs at 1e-4,
BatchNorm frozen, batch 32); one row unweighted, one with `class_weight="balanced"`. Scored on a balanced test set
(--test-per-class of Fashion-MNIST's official test images per class, the same for every row): balanced accuracy,
macro-F1 and the recall of the rarest training class. Prints a markdown table (mean +- sd, and each seed), whether
balanced weights raised rarest-class recall and balanced accuracy on every seed, and writes it (and the raw numbers
as JSON) to --output.

Usage: python bench/imbalance.py [--seeds 3] [--image-size 112] [--counts 200 60 20 8 4] [--test-per-class 400]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import keras
import numpy as np

import keras_transfer as kt
from keras_transfer.data import FASHION_MNIST_CLASSES, fashion_mnist_arrays

CLASSES = (5, 6, 7, 8, 9)
ROWS = ("unweighted", "balanced")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--counts", nargs=5, type=int, default=[200, 60, 20, 8, 4], help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=30, help="epochs in all (1 of them in stage 1)")
    parser.add_argument("--output", default="bench/results/imbalance.md")
    return parser.parse_args(argv)


def draw(arrays, counts, seed, test_per_class):
    """The seed's long-tailed training arrays (labels 0-4 for classes 5-9), the test arrays, and class -> count."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(CLASSES))  # which class gets which count
    (x, y), (tx, ty) = arrays["train"], arrays["test"]
    train, test, sizes = [], [], {}
    for position, k in enumerate(order):
        n = counts[position]
        train.append(rng.choice(np.flatnonzero(y == CLASSES[k]), n, replace=False))
        test.append(np.flatnonzero(ty == CLASSES[k])[:test_per_class])
        sizes[int(k)] = n
    train, test = np.concatenate(train), np.concatenate(test)
    relabel = {c: i for i, c in enumerate(CLASSES)}
    as_ids = lambda labels: np.array([relabel[int(c)] for c in labels])
    return (x[train], as_ids(y[train])), (tx[test], as_ids(ty[test])), sizes


def run(args, data, test, sizes, row, seed):
    keras.utils.set_random_seed(seed)
    options = dict(image_size=args.image_size, batch_size=32, validation_split=0.0, seed=seed)
    train, _, _, _ = kt.load_dataset(data, **options)
    test, _, _, _ = kt.load_dataset(test, deterministic=True, **options)
    model = kt.build_model("efficientnet_lite0", len(CLASSES), input_shape=args.image_size, weights="imagenet")
    start = time.time()
    kt.fine_tune(
        model,
        train,
        head_epochs=1,
        fine_tune_epochs=args.epochs - 1,
        unfreeze="all",
        head_init="probe",
        learning_rate=1e-3,
        fine_tune_learning_rate=1e-4,
        class_weight="balanced" if row == "balanced" else None,
        verbose=0,
    )
    names = [FASHION_MNIST_CLASSES[c] for c in CLASSES]
    report = kt.evaluate(model, test, names)
    rarest = names[min(sizes, key=sizes.get)]
    return {
        "seed": seed,
        "balanced_accuracy": report.balanced_accuracy,
        "macro_f1": report.macro["f1"],
        "rarest_recall": report.per_class[rarest]["recall"],
        "rarest": rarest,
        "seconds": time.time() - start,
    }


def main(argv=None):
    args = parse_args(argv)
    arrays = fashion_mnist_arrays()
    results = {row: [] for row in ROWS}
    for seed in range(args.seeds):
        data, test, sizes = draw(arrays, args.counts, seed, args.test_per_class)
        for row in ROWS:
            result = run(args, data, test, sizes, row, seed)
            results[row].append(result)
            print(
                f"seed {seed}  {row:<10}  balanced accuracy {result['balanced_accuracy']:.4f}  macro-F1 "
                f"{result['macro_f1']:.4f}  recall of {result['rarest']} ({min(sizes.values())} images) "
                f"{result['rarest_recall']:.4f}  ({result['seconds']:.0f} s)",
                flush=True,
            )
    text = summary(args, results)
    print("\n" + text)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text + "\n")
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)


def summary(args, results):
    keys = ("balanced_accuracy", "macro_f1", "rarest_recall")
    lines = [
        f"EfficientNet-Lite0 at {args.image_size} px, Fashion-MNIST 5-9 with {'/'.join(map(str, args.counts))} "
        f"training images per class, {args.test_per_class} test images per class, {args.seeds} paired seeds; "
        "mean +- sd (each seed)",
        "",
        "| row | balanced accuracy | macro-F1 | rarest-class recall |",
        "|---|---|---|---|",
    ]
    for row, runs in results.items():
        cells = []
        for key in keys:
            values = np.array([r[key] for r in runs])
            cells.append(f"{values.mean():.3f} +- {values.std():.3f} ({' '.join(f'{v:.3f}' for v in values)})")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    for key in ("rarest_recall", "balanced_accuracy"):
        better = sum(b[key] > u[key] for b, u in zip(results["balanced"], results["unweighted"]))
        lines.append(f"balanced weights raised {key.replace('_', ' ')} on {better}/{len(results['balanced'])} seeds")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
