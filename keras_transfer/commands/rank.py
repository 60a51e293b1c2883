"""Rank candidate backbones on your own images: pooled features of the training images once per candidate (cached,
resumable), then LogME, NLEEP, H-score and a k-fold linear probe; best first, printed and written as ranking.csv and
ranking.json.

Usage: keras-transfer rank --data SOURCE --backbones NAME[@SIZE][:none] ... --output DIR
                           [--labels-per-class N] [--max-images N] [--folds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging

from keras_transfer.cli import add_verbose, positive_int
from keras_transfer.rank import FEATURE_BATCH

logger = logging.getLogger(__name__)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of class folders, a CSV table, ... (as --data of run)")
    parser.add_argument(
        "--backbones",
        nargs="+",
        required=True,
        metavar="NAME[@SIZE][:none]",
        help="candidates: a backbone key (or hub:/keras_hub:), @SIZE for an image size other than its default, "
        ":none for random weights (a control); e.g. efficientnet_lite0@160 efficientnet_lite2",
    )
    parser.add_argument("--output", required=True, help="folder for ranking.csv, ranking.json and cached features")
    parser.add_argument("--labels-per-class", type=positive_int, help="at most this many training images per class")
    parser.add_argument("--max-images", type=positive_int, help="at most this many training images in all")
    parser.add_argument("--validation-split", type=float, default=0.2, help="as the run's (default 0.2)")
    parser.add_argument("--test-split", type=float, default=0.1, help="as the run's (default 0.1)")
    parser.add_argument("--folds", type=positive_int, default=5, help="k of the probe's k-fold (default 5)")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=FEATURE_BATCH,
        help=f"images per batch of the feature pass (default {FEATURE_BATCH})",
    )
    parser.add_argument("--seed", type=int, default=0, help="the split seed (as the run's)")
    return add_verbose(parser)


def run(args):
    from keras_transfer.rank import parse_candidate, rank_backbones, ranking_table
    from keras_transfer.recipe import check_folder

    candidates = [parse_candidate(c) for c in args.backbones]  # bad names and sizes fail before any work
    check_folder(args.output, "--output")
    logger.info(f"Ranking {len(candidates)} backbones on {args.data} (features cached in {args.output}/features)")
    rows = rank_backbones(
        args.data,
        candidates,
        output_dir=args.output,
        labels_per_class=args.labels_per_class,
        max_images=args.max_images,
        folds=args.folds,
        batch_size=args.batch_size,
        seed=args.seed,
        validation_split=args.validation_split,
        test_split=args.test_split,
    )
    close = [f"{r['backbone']} at {r['image_size']} px" for r in rows[1:] if r["close"]]
    logger.info(
        f"\n{ranking_table(rows)}\n\nscore = {rows[0]['score_name']} (see docs/tools.md); best: {rows[0]['backbone']}"
        f" at {rows[0]['image_size']} px"
        + (f"; as close as the score can tell: {', '.join(close)} (fine-tune those too if you can)" if close else "")
        + f"\n{args.output}/ranking.csv\n{args.output}/ranking.json"
    )
    return 0
