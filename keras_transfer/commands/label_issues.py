"""Find suspected label errors: out-of-sample probabilities from a k-fold linear probe on pretrained features, then
confident learning; the most suspicious first, in a CSV and a page with the images.

Usage: keras-transfer label-issues --data SOURCE [--backbone efficientnet_lite0] [--weights imagenet]
                                   [--image-size S] [--folds 5] --output DIR
"""

from __future__ import annotations

import argparse
import logging

from keras_transfer.cli import add_verbose, backbone_arg, positive_int, weights_arg

logger = logging.getLogger(__name__)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of class folders, a CSV table, ... (as --data of run)")
    parser.add_argument("--backbone", default="efficientnet_lite0", type=backbone_arg, help="the feature extractor")
    parser.add_argument("--weights", default="imagenet", type=weights_arg, help="imagenet, none or a weights file")
    parser.add_argument("--image-size", type=positive_int, help="default: the backbone's")
    parser.add_argument("--folds", type=positive_int, default=5, help="k of the k-fold (default 5)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--output", required=True, help="folder for label_issues.csv and label_issues.html")
    return add_verbose(parser)


def run(args):
    from keras_transfer.label_issues import find_label_issues, write_label_issues
    from keras_transfer.recipe import check_folder

    check_folder(args.output, "--output")  # an unwritable folder fails before the features are computed
    issues = find_label_issues(
        args.data,
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        folds=args.folds,
        batch_size=args.batch_size,
    )
    logger.info("%s", issues)
    if issues.left_out:
        names = ", ".join(issues.class_names[c] for c in issues.left_out)
        logger.info(f"Not scored (fewer images than the {args.folds} folds): {names}")
    csv_path, html_path = write_label_issues(issues, args.output)
    seconds = issues.seconds
    logger.info(f"\n{csv_path}\n{html_path}\n(features {seconds['features']} s, scoring {seconds['scoring']} s)")
    return 0
