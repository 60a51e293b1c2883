"""Predict image files with an exported SavedModel or a `.keras` model: a top-k table or JSON.

Usage: python scripts/predict.py MODEL IMAGE_OR_FOLDER [...] [--top-k 5] [--json] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_transfer.data import find_images, image_problem  # noqa: E402
from keras_transfer.export import load_predictor  # noqa: E402


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="SavedModel version folder, folder of versions, or .keras file")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error(f"argument --top-k/--batch-size: must be >= 1, got {args.top_k}/{args.batch_size}")
    try:
        predict, class_names = load_predictor(args.model)
    except ValueError as e:
        parser.error(f"argument model: {e}")
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
