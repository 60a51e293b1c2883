"""How well `find_label_issues` finds labels flipped on purpose.

For each source (a folder of class folders, or `fashion_mnist_5_9`: the first 2,000 training images of
Fashion-MNIST's classes 5-9 from Debian's package), EfficientNet-Lite0's ImageNet features of every image are
computed once (224 px; cached beside --output). Then, for each noise rate and seed, that fraction of the images gets
a label drawn uniformly from the other classes, and two finders score every image out of sample (5-fold linear
probe on the features):

- floor:      "the probe's most likely class differs from the given label" (the baseline in issue 40: precision
              0.62, recall 0.75 at 10% flipped on a 6-class photo set);
- confident:  `find_label_issues`'s confident learning (prune by noise rate, likeliest class not the given one).

Precision and recall are against the flipped images; "top-half precision" is the precision of the most suspicious
half of the flagged images (ranked by the given label's out-of-sample probability). Scoring time excludes features.

The photo sets are `../shared/data/clothing10` and `flowers12` (see that folder's README for their sources); any
folder of class folders works.

Usage: python bench/label_issues.py SOURCE [SOURCE ...] [--rates 0.05 0.1 0.2] [--seeds 0 1 2]
                                    [--output bench/results/label_issues.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_transfer.label_issues import confident_learning, out_of_sample_probabilities


def features(source, cache_dir):
    """`(features, labels)` of every image of `source`, cached as an .npz in `cache_dir`."""
    from keras_transfer.data.dataset import every_image
    from keras_transfer.models import build_model, extract_features

    name = os.path.basename(os.path.normpath(source))
    path = os.path.join(cache_dir, f"features_{name}.npz")
    if os.path.exists(path):
        saved = np.load(path)
        return saved["features"], saved["labels"]
    data = source
    if source == "fashion_mnist_5_9":
        from keras_transfer.data.arrays import fashion_mnist_arrays

        x, y = fashion_mnist_arrays()["train"]
        keep = np.flatnonzero(y >= 5)[:2000]
        data = (np.repeat(x[keep][..., None], 3, axis=-1), y[keep] - 5)
    start = time.perf_counter()
    parts, labels, _, names, _ = every_image(data, image_size=224, batch_size=32)
    model = build_model("efficientnet_lite0", len(names), weights="imagenet", input_shape=224, augment=False)
    feats, labels = (np.concatenate(a) for a in zip(*(extract_features(model, part) for part in parts)))
    print(f"{name}: features of {len(labels)} images in {time.perf_counter() - start:.0f} s", flush=True)
    np.savez(path, features=feats, labels=labels)
    return feats, labels


def flip(labels, rate, seed):
    rng = np.random.default_rng(seed)
    k = int(labels.max()) + 1
    flipped = rng.choice(len(labels), int(round(rate * len(labels))), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, k, len(flipped))) % k
    return noisy, np.isin(np.arange(len(labels)), flipped)


def scores(found, truth, quality):
    hits = int(np.sum(found & truth))
    order = np.flatnonzero(found)[np.argsort(quality[found])]
    half = order[: max(1, len(order) // 2)]
    return {
        "precision": hits / max(1, int(found.sum())),
        "recall": hits / max(1, int(truth.sum())),
        "top_half": float(np.mean(truth[half])) if len(order) else 0.0,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="bench/results/label_issues.md")
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    lines = [
        "| source | flipped | finder | precision | recall | top-half precision | scoring s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for source in args.sources:
        feats, labels = features(source, os.path.dirname(args.output) or ".")
        for rate in args.rates:
            results = {"floor": [], "confident": []}
            seconds = []
            for seed in args.seeds:
                noisy, truth = flip(labels, rate, seed)
                start = time.perf_counter()
                probs, _, _ = out_of_sample_probabilities(feats, noisy, int(labels.max()) + 1, 5, seed)
                found = confident_learning(probs, noisy)
                seconds.append(time.perf_counter() - start)
                quality = probs[np.arange(len(noisy)), noisy]
                results["confident"].append(scores(found, truth, quality))
                results["floor"].append(scores(probs.argmax(axis=1) != noisy, truth, quality))
            for finder, rows in results.items():
                cells = [
                    f"{np.mean([r[m] for r in rows]):.2f} ({', '.join(f'{r[m]:.2f}' for r in rows)})"
                    for m in ("precision", "recall", "top_half")
                ]
                name = os.path.basename(os.path.normpath(source))
                line = (
                    f"| {name} ({len(labels)}) | {rate:.0%} | {finder} | {' | '.join(cells)} | {np.mean(seconds):.1f} |"
                )
                lines.append(line)
                print(line, flush=True)
    text = (
        f"`python bench/label_issues.py {' '.join(args.sources)} --rates {' '.join(map(str, args.rates))} --seeds "
        f"{' '.join(map(str, args.seeds))}`: mean (each seed)\n\n" + "\n".join(lines) + "\n"
    )
    with open(args.output, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
