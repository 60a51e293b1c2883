"""Does the validation check keep the pseudo-labels that help and refuse those that hurt? On cached features.

For a photo folder with its own `test/` (and `validation/`, else 20% of `train/`), the pooled features of every image
through EfficientNet-Lite0 with its ImageNet weights at 224 px, computed once; then for each number of labels per
class and each seed, N labelled training images per class drawn at random (numpy's generator of the seed: not the
run's draw), the rest of the training images as unlabelled ones, and:

- the pseudo-labels the run would choose (`semi_supervised.pseudo_labels`, its defaults);
- `semi_supervised.pseudo_label_check` on the validation images (what a run decides) and, the same comparison, on
  the test images (what the decision should have been): the linear probe fitted on the labelled images alone and with
  the pseudo-labels, each scored there.

Prints a markdown table (a row per draw: pseudo-labels chosen and right, validation and test accuracy without / with
them, the check's decision and whether the test agrees) and writes it to --output. The photo sets this project
measures on are `../shared/data/clothing10` and `flowers12` (see that folder's README).

Usage: python bench/pseudo_check.py FOLDER [--labels 5 20] [--seeds 0 1 2] [--output bench/results/pseudo_check_NAME.md]
"""

from __future__ import annotations

import argparse
import os

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import numpy as np

import keras_transfer as kt
from keras_transfer.models import extract_features
from keras_transfer.semi_supervised import pseudo_label_check, pseudo_labels

SIZE = 224


def features(folder):
    """`{split: (features, labels)}` of the folder's train, validation and test images."""
    train, val, test, info = kt.load_dataset(folder, image_size=SIZE, batch_size=64, seed=0)
    model = kt.build_model("efficientnet_lite0", info.num_classes, input_shape=SIZE, weights="imagenet")
    return {name: extract_features(model, ds) for name, ds in (("train", train), ("val", val), ("test", test))}


def draw(features, labels_per_class, seed):
    """One row: the pseudo-labels of a random draw of labelled images and the check on validation and test."""
    x, y = features["train"]
    classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    labelled = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), labels_per_class, replace=False) for c in range(classes)]
    )
    rest = np.setdiff1d(np.arange(len(y)), labelled)
    pseudo, _ = pseudo_labels(x[labelled], y[labelled], x[rest], classes)
    args = (x[labelled], y[labelled], x[rest], pseudo)
    val, test = (pseudo_label_check(*args, features[split], classes) for split in ("val", "test"))
    chosen = pseudo >= 0
    right = float(np.mean(pseudo[chosen] == y[rest][chosen])) if chosen.any() else float("nan")
    return {"chosen": int(chosen.sum()), "right": right, "val": val, "test": test}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a photo folder with train/ and test/ (../shared/data/clothing10, flowers12)")
    parser.add_argument("--labels", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.folder, "test")):
        raise SystemExit(f"{args.folder}: needs train/ and test/ (photo sets: ../shared/data, see its README)")
    name = os.path.basename(os.path.normpath(args.folder))
    cached = features(args.folder)
    lines = [
        f"# {name}: the pseudo-labels' validation check against the test images (cached Lite0 @{SIZE} features)",
        "",
        f"`python bench/pseudo_check.py {args.folder} --labels {' '.join(map(str, args.labels))} --seeds "
        f"{' '.join(map(str, args.seeds))}`; the probe's accuracy (%) fitted on the labelled images without / with "
        f"the pseudo-labels; {len(cached['val'][1])} validation and {len(cached['test'][1])} test images.",
        "",
        "| labels per class | seed | pseudo-labels (right) | validation without / with | check | test without / with "
        "| test agrees |",
        "|---|---|---|---|---|---|---|",
    ]
    agree = 0
    for n in args.labels:
        for seed in args.seeds:
            row = draw(cached, n, seed)
            val, test = row["val"], row["test"]
            agrees = val["used"] == test["used"]
            agree += agrees
            lines.append(
                f"| {n} | {seed} | {row['chosen']} ({row['right']:.1%}) | {100 * val['without']:.1f} / "
                f"{100 * val['with']:.1f} | {'kept' if val['used'] else 'refused'} | {100 * test['without']:.1f} / "
                f"{100 * test['with']:.1f} | {'yes' if agrees else 'no'} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"The check agreed with the test images on {agree} of {len(args.labels) * len(args.seeds)} draws."]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.output or f"bench/results/pseudo_check_{name}.md", "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
