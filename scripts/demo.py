"""Offline transfer-learning demo on scikit-learn's digits, through `scripts/finetune.py` (no downloads).

Seed 001's flow end to end with the command-line program: train VGG16 from scratch on digits 0-4 and save it;
fine-tune a model for digits 5-9 from that saved backbone with a few labels per class (head on a frozen backbone,
then `block5`, seed 002), exporting a SavedModel; train the same model from scratch on the same images; reload
the export with TensorFlow alone and predict a few test images; print a short table.

Usage: python scripts/demo.py [--labels-per-class 5] [--output saved_models/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_transfer.cli import main as finetune  # noqa: E402

COMMON = ["--data", "digits", "--backbone", "vgg16", "--image-size", "32", "--batch-size", "32",
          "--dense-units", "128", "--validation-split", "0.2", "--test-split", "0.3", "--seed", "0"]  # fmt: skip
SOURCE = [str(c) for c in range(5)]
TARGET = [str(c) for c in range(5, 10)]


def run(step, args):
    print(f"\n=== {step}: scripts/finetune.py {' '.join(args)}", flush=True)
    code = finetune(args)
    if code:
        raise SystemExit(f"{step} failed with exit code {code}")


def accuracy(run_dir):
    with open(os.path.join(run_dir, "report.json")) as f:
        return json.load(f)["accuracy"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels-per-class", type=int, default=5)
    parser.add_argument("--output", default="saved_models/demo")
    args = parser.parse_args(argv)
    if args.labels_per_class < 1:
        parser.error(f"argument --labels-per-class: must be >= 1, got {args.labels_per_class}")
    out = args.output
    few = ["--classes", *TARGET, "--labels-per-class", str(args.labels_per_class)]
    start = time.time()

    pretrained = os.path.join(out, "pretrain", "model.keras")
    if os.path.exists(pretrained):
        print(f"[1/4] reusing {pretrained}")
    else:
        run("[1/4] pretrain vgg16 from scratch on digits 0-4", COMMON + [
            "--classes", *SOURCE, "--weights", "none", "--epochs", "0", "--fine-tune-epochs", "4",
            "--unfreeze", "all", "--fine-tune-learning-rate", "3e-4", "--output", os.path.join(out, "pretrain")])  # fmt: skip
    export = os.path.join(out, "export")
    run("[2/4] transfer to digits 5-9", COMMON + few + [
        "--weights", pretrained, "--epochs", "30", "--fine-tune-epochs", "20", "--unfreeze", "from:block5",
        "--learning-rate", "1e-3", "--fine-tune-learning-rate", "1e-4", "--output", os.path.join(out, "transfer"),
        "--export", export])  # fmt: skip
    run("[3/4] the same model from scratch on the same images", COMMON + few + [
        "--weights", "none", "--epochs", "0", "--fine-tune-epochs", "50", "--unfreeze", "all",
        "--fine-tune-learning-rate", "3e-4", "--output", os.path.join(out, "scratch")])  # fmt: skip

    print("\n[4/4] reload the SavedModel with TensorFlow alone and predict test images", flush=True)
    import tensorflow as tf

    from keras_transfer import load_dataset

    _, _, test, info = load_dataset("digits", image_size=32, batch_size=8, classes=range(5, 10),
                                    labels_per_class=args.labels_per_class, test_split=0.3, seed=0)  # fmt: skip
    images, labels = next(iter(test))
    version = max(int(v) for v in os.listdir(export) if v.isdigit())
    served = tf.saved_model.load(os.path.join(export, str(version))).signatures["serving_default"](images=images)
    predicted = [info.class_names[i] for i in served["class_ids"].numpy()]
    print(f"  {export}/{version}: predicted {predicted}")

    print(f"\nDigits 5-9, {args.labels_per_class} labels per class, accuracy on the held-out test images:")
    print(f"  {'vgg16 pretrained on digits 0-4, fine-tuned':<44} {accuracy(os.path.join(out, 'transfer')):6.1%}")
    print(f"  {'vgg16 from scratch':<44} {accuracy(os.path.join(out, 'scratch')):6.1%}")
    truth = [info.class_names[i] for i in labels.numpy()]
    print(f"  (the exported SavedModel got {sum(p == t for p, t in zip(predicted, truth))} of the {len(truth)} shown right)")
    print(f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
