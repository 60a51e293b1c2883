"""Image retrieval from the command line: index a folder, then find the images most like a query image.

Usage:
  keras-transfer retrieve index FOLDER --model resnet50 [--weights imagenet] --index saved_models/index
  keras-transfer retrieve index FOLDER --model run/model.keras --index saved_models/index   (fine-tuned)
  keras-transfer retrieve query saved_models/index IMAGE [IMAGE ...] [--k 5] [--json] [--output F] [--faiss]
  keras-transfer retrieve evaluate saved_models/index        (recall@k and mAP; class = parent folder name)
"""

from __future__ import annotations

import argparse
import json
import os

from keras_transfer.backbones import BACKBONES
from keras_transfer.cli import add_verbose, positive_int, weights_arg


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="embed every image under FOLDER and save the index")
    index.add_argument("folder")
    index.add_argument("--model", required=True, help="a backbone key (e.g. resnet50) or a .keras model file")
    index.add_argument(
        "--weights",
        default="imagenet",
        help="backbone weights for a backbone key: imagenet, none or a file (default: imagenet)",
    )
    index.add_argument("--image-size", type=int, help="input side for a backbone key (default: the backbone's)")
    index.add_argument("--index", required=True, help="folder to write the index to")
    index.add_argument("--batch-size", type=positive_int, default=32)
    index.add_argument("--add", action="store_true", help="add to the index in --index instead of replacing it")
    query = commands.add_parser("query", help="the k indexed images most like each IMAGE")
    query.add_argument("index")
    query.add_argument("images", nargs="+")
    query.add_argument("--k", type=positive_int, default=5)
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.add_argument("--output", help="also write the results as JSON to this file")
    query.add_argument("--faiss", action="store_true", help="approximate search with faiss-cpu")
    evaluate = commands.add_parser("evaluate", help="recall@k and mAP, relevant = same parent folder")
    evaluate.add_argument("index")
    for command in (index, query, evaluate):
        add_verbose(command)
    return parser


def run(args):
    return {"index": build_index, "query": query, "evaluate": evaluate}[args.command](args)


def build_index(args):
    import time

    from keras_transfer.retrieval import FeatureIndex

    if args.add:
        index = FeatureIndex.load(args.index)
    else:
        model = args.model
        if model not in BACKBONES:
            if not (model.endswith(".keras") and os.path.isfile(model)):
                raise ValueError(
                    f"--model must be a backbone key ({', '.join(sorted(BACKBONES))}) or a .keras "
                    f"file. Received: --model {model!r}"
                )
            import keras

            import keras_transfer.preprocessing  # noqa: F401  (registers the model's preprocessing layer)

            model = keras.saving.load_model(model, compile=False)
        index = FeatureIndex(
            model, weights=weights_arg(args.weights), image_size=args.image_size, batch_size=args.batch_size
        )
    start = time.time()
    added = index.add(args.folder)
    seconds = time.time() - start
    index.save(args.index)
    print(f"indexed {added} images in {seconds:.1f} s ({added / seconds:.0f} images/s); {len(index)} in {args.index}")
    return 0


def query(args):
    from keras_transfer.retrieval import FeatureIndex

    index = FeatureIndex.load(args.index, search="faiss" if args.faiss else None)
    results = [{"query": image, "results": index.query(image, k=args.k)} for image in args.images]
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(result["query"])
        for rank, hit in enumerate(result["results"], start=1):
            print(f"  {rank:>3}  {hit['score']:.4f}  {hit['path'] or '#' + str(hit['index'])}")
    return 0


def evaluate(args):
    import numpy as np

    from keras_transfer.retrieval import FeatureIndex, retrieval_metrics

    index = FeatureIndex.load(args.index)
    if any(path is None for path in index.paths):
        raise ValueError(f"{args.index!r} holds images without paths; evaluate needs class folders.")
    classes = sorted({os.path.basename(os.path.dirname(p)) for p in index.paths})
    labels = np.array([classes.index(os.path.basename(os.path.dirname(p))) for p in index.paths])
    metrics = retrieval_metrics(index.embeddings, labels)
    print(f"{len(index)} images, {len(classes)} classes: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return 0
