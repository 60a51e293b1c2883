"""Several labels per image, from a CSV, on real images: ImageNet EfficientNet-Lite0 probe vs LP-FT vs scratch.

The images are 2x2 mosaics of Fashion-MNIST items (each 28 px tile one of the 10 classes, or empty with
probability --empty); an image's labels are the classes present. They are written as PNG files with a
`labels.csv` (columns `filename`, `labels` space-separated, `split`), so the whole table path runs:
`load_dataset(Table(csv, label_column="labels", label_delimiter=" ", split_column="split"), labels_per_class=N)`.
Training mosaics come from Fashion-MNIST's training images, the 2,000 test mosaics from its test images, the
validation mosaics (for the thresholds only: training runs without validation, as the demo's) from training images
not in the training pool.

For each number of labelled images per label and each seed (the seed draws the training images; the same draw
for every row: paired), these rows, all EfficientNet-Lite0 at --image-size:

- probe:   ImageNet weights frozen, one-vs-rest logistic regressions on the pooled features (`heads.fit_probe`,
           what `linear_probe` and LP-FT use), set as the sigmoid head;
- LP-FT:   the demo's recipe, `fine_tune(head_init="probe")`: one epoch of stage 1 from the probe at 1e-3, then
           every layer 29 epochs at 1e-4 (warmup and cosine decay), BatchNorm frozen, batch 32;
- scratch: random weights, every layer and BatchNorm trained 30 epochs at 1e-3, statistics recomputed.

Each row reports mAP (threshold-free) and macro-F1 at per-label thresholds tuned on the validation mosaics
(`evaluation.tune_thresholds`), on the 2,000 test mosaics. Prints a markdown table of mean +- sd and every seed,
checks the goals (fine-tuned mAP >= the probe's on every seed, and >= scratch + 0.20), and writes the table and
the raw numbers (JSON) to --output.

Usage: python bench/multilabel.py [--labels 5 20] [--seeds 3] [--image-size 112] [--test 2000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import keras
import numpy as np

import keras_transfer as kt
from keras_transfer.data import FASHION_MNIST_CLASSES, fashion_mnist_arrays
from keras_transfer.evaluation import tune_thresholds
from keras_transfer.files import replace
from keras_transfer.heads import fit_probe
from keras_transfer.models import extract_features, output_layer

ROWS = ("probe", "LP-FT", "scratch")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", nargs="+", type=int, default=[5, 20], help="training images per label")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--pool", type=int, default=1000, help="training mosaics the labelled ones are drawn from")
    parser.add_argument("--validation", type=int, default=300)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--empty", type=float, default=0.5, help="probability that a tile is empty")
    parser.add_argument("--epochs", type=int, default=30, help="epochs in all (LP-FT: 1 of them in stage 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", default="saved_models/bench_multilabel", help="where the mosaics are written")
    parser.add_argument("--output", default="bench/results/multilabel.md")
    return parser.parse_args(argv)


def write_mosaics(folder, pool, validation, test, empty):
    """The mosaics as PNG files and `labels.csv`; reused when the CSV is there. Returns the CSV's path."""
    from PIL import Image

    table = os.path.join(folder, "labels.csv")
    if os.path.exists(table):
        return table
    arrays = fashion_mnist_arrays()
    rng = np.random.default_rng(1234)
    train_x, train_y = arrays["train"]
    order = rng.permutation(len(train_x))
    sources = {  # split -> (images, labels, mosaics); training and validation tiles from disjoint images
        "train": (train_x[order[: len(order) // 2]], train_y[order[: len(order) // 2]], pool),
        "validation": (train_x[order[len(order) // 2 :]], train_y[order[len(order) // 2 :]], validation),
        "test": (*arrays["test"], test),
    }
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows = []
    for split, (x, y, n) in sources.items():
        for i in range(n):
            tiles, labels = [], set()
            for _ in range(4):
                if rng.random() < empty:
                    tiles.append(np.zeros((28, 28), np.uint8))
                else:
                    k = rng.integers(len(x))
                    tiles.append(x[k])
                    labels.add(FASHION_MNIST_CLASSES[y[k]].replace(" ", "_").replace("/", "_"))
            mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
            name = f"images/{split}-{i:05d}.png"
            Image.fromarray(mosaic).save(os.path.join(folder, name))
            rows.append((name, " ".join(sorted(labels)), split))
    with open(table + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "labels", "split"])
        writer.writerows(rows)
    replace(table + ".tmp", table)
    return table


def run(args, table, row, labels, seed):
    """One row on one draw: `(mAP, macro F1, seconds)` on the test mosaics."""
    keras.utils.set_random_seed(seed)
    train, val, test, info = kt.load_dataset(
        kt.data.Table(table, label_column="labels", label_delimiter=" ", split_column="split"),
        image_size=args.image_size,
        batch_size=args.batch_size,
        labels_per_class=labels,
        seed=seed,
    )
    weights = None if row == "scratch" else "imagenet"
    model = kt.build_model(
        "efficientnet_lite0", info.num_classes, input_shape=args.image_size, weights=weights, activation="sigmoid"
    )
    start = time.time()
    settings = {"verbose": 0}
    if row == "probe":
        features, y = extract_features(model, train)
        output_layer(model).set_weights(list(fit_probe(features, y, info.num_classes, multi_label=True)))
    elif row == "LP-FT":
        stages = dict(head_epochs=1, fine_tune_epochs=args.epochs - 1, learning_rate=1e-3, fine_tune_learning_rate=1e-4)
        kt.fine_tune(model, train, None, unfreeze="all", head_init="probe", **stages, **settings)
    else:
        stages = dict(head_epochs=0, fine_tune_epochs=args.epochs, fine_tune_learning_rate=1e-3)
        kt.fine_tune(model, train, None, unfreeze="all", train_batchnorm=True, **stages, **settings)
    report = kt.evaluate(model, test, info.class_names, thresholds=tune_thresholds(model, val))
    return report.mean_average_precision, report.macro["f1"], time.time() - start, info


def main(argv=None):
    args = parse_args(argv)
    table = write_mosaics(args.data, args.pool, args.validation, args.test, args.empty)
    results = {}
    for labels in args.labels:
        for seed in range(args.seeds):
            for row in ROWS:
                mean_ap, f1, seconds, info = run(args, table, row, labels, seed)
                results.setdefault(f"{labels}", {}).setdefault(row, []).append(
                    {"seed": seed, "map": mean_ap, "macro_f1": f1, "seconds": seconds}
                )
                print(
                    f"{labels:>3} per label  seed {seed}  {row:<8} mAP {mean_ap:.4f}  macro-F1 {f1:.4f}  "
                    f"({seconds:.0f} s; {info.sizes['train']} training images)",
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
    lines = [
        f"EfficientNet-Lite0 at {args.image_size} px on 2x2 Fashion-MNIST mosaics ({args.test} test mosaics, "
        f"{args.seeds} paired seeds); mean +- sd, then each seed",
        "",
        "| images per label | row | mAP | macro-F1 | mAP per seed |",
        "|---:|---|---|---|---|",
    ]
    for labels, rows in results.items():
        for row, runs in rows.items():
            maps, f1s = np.array([r["map"] for r in runs]), np.array([r["macro_f1"] for r in runs])
            seeds = " ".join(f"{m:.3f}" for m in maps)
            lines.append(
                f"| {labels} | {row} | {maps.mean():.3f} +- {maps.std():.3f} | {f1s.mean():.3f} +- {f1s.std():.3f} "
                f"| {seeds} |"
            )
    lines.append("")
    for labels, rows in results.items():
        tuned, probe, scratch = (np.array([r["map"] for r in rows[name]]) for name in ("LP-FT", "probe", "scratch"))
        lines.append(
            f"{labels} per label: LP-FT >= probe on {int(np.sum(tuned >= probe))}/{len(tuned)} seeds "
            f"(goal: all); LP-FT - scratch {np.mean(tuned - scratch):+.3f} mAP (goal: >= +0.20, min "
            f"{np.min(tuned - scratch):+.3f})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
