"""Offline transfer-learning demo: pretrain on Fashion-MNIST 0-4, fine-tune on 5-9 with a few labels, vs scratch.

1. `scripts/pretrain.py`: a small CNN (the `small_cnn` row: 4 conv blocks, 0.4M parameters, made for 32-pixel
   images) trained from scratch on the 30,000 images of Fashion-MNIST classes 0-4 (reused from
   saved_models/pretrained/ when present), BatchNorm statistics recomputed.
2. `scripts/finetune.py`: classes 5-9 with a few labels per class, from that backbone (head, then all layers),
   exporting a SavedModel.
3. `scripts/finetune.py`: the same model from scratch on the same images, with the same augmentation, more epochs,
   BatchNorm trained and its statistics recomputed.
4. The SavedModel reloaded with TensorFlow alone predicts test images; a table compares both on the 5,000
   held-out test images of classes 5-9.

Without Debian's dataset-fashion-mnist (nor Keras's cache, nor internet), the same flow runs on scikit-learn's
digits (0-4 -> 5-9). Usage: python scripts/demo.py [--labels-per-class 5] [--output saved_models/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_transfer.cli import main as finetune  # noqa: E402

BACKBONE, SIZE = "small_cnn", "32"


def available_data():
    from keras_transfer import data

    try:
        data._fashion_mnist()
        return "fashion_mnist"
    except OSError as e:
        print(f"Fashion-MNIST is not available ({str(e).splitlines()[0][:200]}...); running the same flow on digits.")
        return "digits"


def run(step, program, args):
    print(f"\n=== {step}: scripts/{program}.py {' '.join(args)}", flush=True)
    code = program_main(program)(args)
    if code:
        raise SystemExit(f"{step} failed with exit code {code}")


def program_main(program):
    if program == "finetune":
        return finetune
    import importlib.util

    spec = importlib.util.spec_from_file_location(program, os.path.join(os.path.dirname(__file__), f"{program}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def report(run_dir):
    with open(os.path.join(run_dir, "report.json")) as f:
        return json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels-per-class", type=int, default=5)
    parser.add_argument("--output", default="saved_models/demo")
    parser.add_argument("--pretrained", default="saved_models/pretrained")
    args = parser.parse_args(argv)
    if args.labels_per_class < 1:
        parser.error(f"argument --labels-per-class: must be >= 1, got {args.labels_per_class}")
    start = time.time()
    data = available_data()
    source, target = ["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]
    pretrained_dir = os.path.join(args.pretrained, data)
    weights = os.path.join(pretrained_dir, f"{BACKBONE}_supervised.weights.h5")
    if os.path.exists(weights):
        print(f"[1/4] reusing {weights}")
    else:
        run("[1/4] pretrain on classes 0-4", "pretrain", [
            "--data", data, "--classes", *source, "--backbone", BACKBONE, "--image-size", SIZE, "--epochs", "2",
            "--batch-size", "64", "--output", pretrained_dir])  # fmt: skip

    common = ["--data", data, "--classes", *target, "--labels-per-class", str(args.labels_per_class),
              "--backbone", BACKBONE, "--image-size", SIZE, "--batch-size", "8", "--augment",
              "--validation-split", "0.005", "--test-split", "0.2", "--seed", "0"]  # fmt: skip
    export = os.path.join(args.output, "export")
    transfer_dir, scratch_dir = os.path.join(args.output, "transfer"), os.path.join(args.output, "scratch")
    run("[2/4] fine-tune on classes 5-9 from the pretrained backbone", "finetune", common + [
        "--weights", weights, "--epochs", "30", "--fine-tune-epochs", "30", "--unfreeze", "all",
        "--learning-rate", "1e-2", "--fine-tune-learning-rate", "3e-4", "--output", transfer_dir,
        "--export", export])  # fmt: skip
    run("[3/4] the same model from scratch on the same images", "finetune", common + [
        "--weights", "none", "--epochs", "0", "--fine-tune-epochs", "60", "--unfreeze", "all", "--train-batchnorm",
        "--fine-tune-learning-rate", "1e-3", "--output", scratch_dir])  # fmt: skip

    print("\n[4/4] reload the SavedModel with TensorFlow alone and predict test images", flush=True)
    import tensorflow as tf

    from keras_transfer import load_dataset

    _, _, test, info = load_dataset(data, image_size=int(SIZE), batch_size=8, classes=[int(c) for c in target],
                                    test_split=0.2, seed=0)  # fmt: skip
    images, labels = next(iter(test))
    version = max(int(v) for v in os.listdir(export) if v.isdigit())
    served = tf.saved_model.load(os.path.join(export, str(version))).signatures["serving_default"](images=images)
    predicted = [info.class_names[i] for i in served["class_ids"].numpy()]
    truth = [info.class_names[i] for i in labels.numpy()]
    print(f"  {export}/{version} predicts {predicted}\n  true labels {truth}")

    transfer, scratch = report(transfer_dir), report(scratch_dir)
    print(f"\n{data} classes 5-9, {args.labels_per_class} labels per class, "
          f"accuracy on {transfer['num_examples']} held-out test images:")  # fmt: skip
    print(f"  {BACKBONE + ' pretrained on classes 0-4, fine-tuned':<52} {transfer['accuracy']:6.1%}")
    print(f"  {BACKBONE + ' from scratch':<52} {scratch['accuracy']:6.1%}")
    print(f"  difference {100 * (transfer['accuracy'] - scratch['accuracy']):+.1f} points ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
