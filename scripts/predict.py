"""Predict image files with an exported SavedModel or a `.keras` model: a top-k table or JSON.

Usage: python scripts/predict.py MODEL IMAGE_OR_FOLDER [...] [--top-k 5] [--json] [--batch-size 32]
       python scripts/predict.py --imagenet [--backbone efficientnet_lite0] IMAGE_OR_FOLDER [...]
       (the 1000 ImageNet classes; efficientnet_lite0/1/2 work offline)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_transfer.data import find_images, image_problem  # noqa: E402
from keras_transfer.export import keras_predictor, load_predictor  # noqa: E402


def image_files(inputs):
    """(readable image paths, [(path, reason)] for the rest); folders are searched like training folders."""
    found, skipped = [], []
    for item in inputs:
        if os.path.isdir(item):
            files, bad = find_images(item)
            found += files
            skipped += bad
        else:
            reason = image_problem(item) if os.path.exists(item) else "no such file"
            if reason:
                skipped.append((item, reason))
            else:
                found.append(item)
    return found, skipped


def predictor(args):
    """(predict, class_names) for the model argument, or the ImageNet classifier with --imagenet."""
    if not args.imagenet:
        return load_predictor(args.model)
    from keras_transfer import imagenet_classifier
    from keras_transfer.weights import imagenet_classes

    if args.model is not None:  # with --imagenet every positional argument is an image
        args.inputs.insert(0, args.model)
    return keras_predictor(imagenet_classifier(args.backbone)), [name for _, name in imagenet_classes()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="SavedModel version folder, folder of versions, or .keras file")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--imagenet", action="store_true",
                        help="classify into the 1000 ImageNet classes with --backbone's ImageNet classifier instead "
                             "of a model; every positional argument is then an image")  # fmt: skip
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="with --imagenet (default: efficientnet_lite0, whose weights are installed)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error(f"argument --top-k/--batch-size: must be >= 1, got {args.top_k}/{args.batch_size}")
    try:
        predict, class_names = predictor(args)
    except ValueError as e:
        parser.error(f"argument {'--backbone' if args.imagenet else 'model'}: {e}")
    paths, skipped = image_files(args.inputs)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not paths:
        parser.error(f"no readable images in {' '.join(args.inputs)}")

    results = []
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start : start + args.batch_size]
        blobs = []
        for path in batch:
            with open(path, "rb") as f:
                blobs.append(f.read())
        for path, probs in zip(batch, predict(blobs)):
            top = np.argsort(-probs)[: min(args.top_k, len(probs))]
            results.append({"path": path, "predictions": [
                {"label": class_names[i], "probability": float(probs[i])} for i in top]})  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(len(r["path"]) for r in results)
        for r in results:
            top = "  ".join(f"{p['label']} {p['probability']:.1%}" for p in r["predictions"])
            print(f"{r['path']:<{width}}  {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
