"""Pretrain a backbone from scratch, supervised or self-supervised (SimCLR), for `build_model(weights=...)`.

Usage: keras-transfer pretrain --data fashion_mnist --classes 0 1 2 3 4 --backbone mobilenet_v3_small \
           --image-size 32 --method supervised --epochs 2 --output saved_models/pretrained
"""

from __future__ import annotations

import argparse
import json

from keras_transfer.backbones import BACKBONES
from keras_transfer.cli import add_verbose, class_list, positive_int
from keras_transfer.pretraining import METHODS, pretrain


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion_mnist", help="a load_dataset source (default: fashion_mnist)")
    parser.add_argument("--classes", nargs="+", help="class subset, names or ids")
    parser.add_argument("--backbone", default="mobilenet_v3_small", choices=sorted(BACKBONES), metavar="BACKBONE")
    parser.add_argument("--method", default="supervised", choices=METHODS)
    parser.add_argument("--image-size", type=positive_int, default=None, help="default: the backbone's")
    parser.add_argument("--epochs", type=positive_int, default=2)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--output", default="saved_models/pretrained")
    parser.add_argument("--seed", type=int, default=0)
    return add_verbose(parser)


def run(args):
    if not args.learning_rate > 0:
        raise ValueError(f"--learning-rate must be > 0. Received: {args.learning_rate}")
    path = pretrain(
        args.backbone,
        args.data,
        method=args.method,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        classes=class_list(args.classes),
        output_dir=args.output,
        seed=args.seed,
    )
    with open(path[: -len(".weights.h5")] + ".json") as f:
        print(f"{path}\n{json.dumps(json.load(f)['metrics'], indent=2)}")
    return 0
