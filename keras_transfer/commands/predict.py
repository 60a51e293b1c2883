"""Predict image files with a `.keras` model, an exported SavedModel, a `.tflite` file (through LiteRT) or a
`.onnx` file (through ONNX Runtime), all decoded by the one image decoder: a top-k table or JSON; for a
multi-label model, the labels above their thresholds (from the export's metadata; 0.5 for a .keras file).

Usage: keras-transfer predict MODEL IMAGE_OR_FOLDER [...] [--top-k 5] [--json] [--batch-size 32]
       keras-transfer predict --imagenet [--backbone efficientnet_lite0] IMAGE_OR_FOLDER [...]
       (the 1000 ImageNet classes; efficientnet_lite0/1/2 work offline)
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from keras_transfer.cli import add_model_loading, add_verbose, backbone_arg, model_loading, positive_int
from keras_transfer.export import export_thresholds, keras_predictor, load_predictor
from keras_transfer.images import image_files


def predictor(args):
    """(predict, class_names) for the model argument, or the ImageNet classifier with --imagenet."""
    tta = "flip" if args.tta else None
    if not args.imagenet:
        return load_predictor(args.model, tta=tta, **model_loading(args))
    from keras_transfer import imagenet_classifier
    from keras_transfer.weights import imagenet_classes

    if args.model is not None:  # with --imagenet every positional argument is an image
        args.inputs.insert(0, args.model)
    return keras_predictor(imagenet_classifier(args.backbone), tta=tta), [name for _, name in imagenet_classes()]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model",
        nargs="?",
        help="a .keras file, SavedModel version folder (or folder of versions), .tflite or .onnx file",
    )
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument(
        "--imagenet",
        action="store_true",
        help="classify into the 1000 ImageNet classes with --backbone's ImageNet classifier instead "
        "of a model; every positional argument is then an image",
    )
    parser.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        type=backbone_arg,
        help="with --imagenet (default: efficientnet_lite0, whose weights are installed)",
    )
    parser.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average each image with its left-right mirror"
    )
    parser.add_argument("--top-k", type=positive_int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    return add_verbose(add_model_loading(parser))


def run(args):
    predict, class_names = predictor(args)
    thresholds = None if args.imagenet else export_thresholds(args.model)
    paths, skipped = image_files(args.inputs)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not paths:
        raise ValueError(f"no readable images in {' '.join(args.inputs)}")
    results = []
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start : start + args.batch_size]
        blobs = []
        for path in batch:
            with open(path, "rb") as f:
                blobs.append(f.read())
        for path, probs in zip(batch, predict(blobs)):
            if thresholds is not None:  # several labels per image: those at or above their thresholds
                top = [i for i in np.argsort(-probs) if probs[i] >= thresholds[i]]
            else:
                top = np.argsort(-probs)[: min(args.top_k, len(probs))]
            results.append(
                {"path": path, "predictions": [{"label": class_names[i], "probability": float(probs[i])} for i in top]}
            )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    width = max(len(r["path"]) for r in results)
    for r in results:
        top = "  ".join(f"{p['label']} {p['probability']:.1%}" for p in r["predictions"])
        top = top or ("no label above its threshold" if thresholds is not None else "")
        print(f"{r['path']:<{width}}  {top}")
    return 0
