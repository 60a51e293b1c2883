"""Does training with the unlabelled images too help? Supervised LP-FT vs pseudo-labels, paired seeds.

For each source, labels per class N and seed, the same command twice, scored on the same test images:

- supervised:   `keras-transfer --data SOURCE --labels-per-class N` (N labelled training images per class);
- pseudo-label: the same with `--unlabelled rest`: the training images N leaves out, without their labels, and
                `--semi-supervised pseudo-label` (the default method);
- fixmatch:     the same with `--semi-supervised fixmatch` (a consistency loss on the unlabelled images in stage 2).

`--arms` picks which (supervised is always run: the gains are over it).

A photo folder with its own `train/` (`val/`) and `test/` (`../shared/data/flowers12`, `clothing10`; see that
folder's README) runs the default command; `fashion_mnist` runs the demo's command (classes 5-9, 160 px, 400 test
images per class, LP-FT with 29 fine-tuning epochs, no validation split). Prints a markdown table (mean +- sd and
each seed; the pseudo-labels' count and accuracy; the CPU seconds of each run) and writes it to --output.

Usage: python bench/semi_supervised.py SOURCE [--labels 5 20] [--seeds 0 1 2] [--arms pseudo-label fixmatch]
                                    [--output bench/results/semi_SOURCE.md]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import tempfile
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import numpy as np

from keras_transfer import cli
from keras_transfer.runs import read_run_json, run_file

DEMO = [  # scripts/demo.py's flags, less the output and the comparison with random weights
    "--classes",
    *"56789",
    "--image-size",
    "160",
    "--validation-split",
    "0",
    "--test-split",
    "0",
    "--test-per-class",
    "400",
    "--head-init",
    "probe",
    "--fine-tune-epochs",
    "29",
]
ARMS = {
    "supervised": [],
    "pseudo-label": ["--unlabelled", "rest", "--semi-supervised", "pseudo-label"],
    "fixmatch": ["--unlabelled", "rest", "--semi-supervised", "fixmatch"],
}


def run(source, labels, seed, arm, out):
    """Test accuracy, the pseudo-labels `(trained on, right, kept by the validation check)` (None for the supervised
    arm) and CPU seconds."""
    folder = os.path.join(out, f"{arm}_{labels}_{seed}")
    argv = ["--data", source, "--labels-per-class", str(labels), "--seed", str(seed), "--output", folder]
    argv += (DEMO if source == "fashion_mnist" else []) + ARMS[arm] + ["--no-label-issues"]
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()) as story:
        code = cli.main(argv)
    if code != 0:
        raise RuntimeError(f"keras-transfer {' '.join(argv)} exited {code}:\n{story.getvalue()[-2000:]}")
    cpu = time.process_time() - start
    pseudo = None
    if arm == "pseudo-label":
        with open(run_file(folder, "pseudo_labels"), newline="") as f:
            chosen = [r for r in csv.DictReader(f) if r["pseudo_label"]]
        check = read_run_json(folder, "pseudo_check")  # the validation check (none without a validation split)
        pseudo = (len(chosen), sum(r["pseudo_label"] == r["true_label"] for r in chosen), check.get("used", True))
    return read_run_json(folder, "report")["accuracy"], pseudo, cpu


def cell(values):
    values = 100 * np.asarray(values)
    return (
        f"{values.mean():.1f} +- {values.std(ddof=1) if len(values) > 1 else 0:.1f} ("
        + " / ".join(f"{v:.1f}" for v in values)
        + ")"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a photo folder with train/ and test/, or fashion_mnist")
    parser.add_argument("--labels", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS)[1:], default=["pseudo-label"])
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.source != "fashion_mnist" and not os.path.isdir(os.path.join(args.source, "test")):
        raise SystemExit(f"{args.source}: needs train/ and test/ (photo sets: ../shared/data, see its README)")
    name = os.path.basename(os.path.normpath(args.source))
    output = args.output or f"bench/results/semi_{name}.md"
    arms = ["supervised", *args.arms]
    lines = [
        f"# {name}: supervised LP-FT vs {' and '.join(args.arms)} on the unlabelled rest",
        "",
        f"`python bench/semi_supervised.py {args.source} --labels {' '.join(map(str, args.labels))} --seeds "
        f"{' '.join(map(str, args.seeds))} --arms {' '.join(args.arms)}`; {os.cpu_count()} cores; test accuracy (%), "
        "mean +- sd over the paired seeds (each seed); gain over supervised; pseudo-labels (the pseudo-label arm): "
        "trained on per run (of them right), mean, and in how many runs the validation check kept them; CPU s: "
        "process time of each run, mean.",
        "",
        "| labels per class | "
        + " | ".join(arms)
        + " | "
        + " | ".join(f"gain {arm}" for arm in args.arms)
        + (" | pseudo-labels" if "pseudo-label" in arms else "")
        + " | "
        + " | ".join(f"CPU s {arm}" for arm in arms)
        + " |",
        "|---|" + "---|" * (2 * len(arms) + len(args.arms) + ("pseudo-label" in arms)),
    ]
    with tempfile.TemporaryDirectory(prefix="semi_bench_") as out:
        for labels in args.labels:
            results = {arm: [] for arm in arms}
            for seed in args.seeds:
                for arm in arms:
                    results[arm].append(run(args.source, labels, seed, arm, out))
                    print(f"{labels} labels, seed {seed}, {arm}: {results[arm][-1]}", flush=True)
            lines.append(_row(labels, arms, results))
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(output, "w") as f:
        f.write(text)


def _row(labels, arms, results):
    acc = {arm: np.array([r[0] for r in rows]) for arm, rows in results.items()}
    cells = [cell(acc[arm]) for arm in arms]
    for arm in arms[1:]:
        gain = 100 * (acc[arm] - acc["supervised"])
        cells.append(f"{gain.mean():+.1f} ({' / '.join(f'{g:+.1f}' for g in gain)})")
    if "pseudo-label" in arms:
        chosen = [r[1] for r in results["pseudo-label"]]
        used = [c for c in chosen if c[2]]
        right = f"{np.mean([c[1] / max(c[0], 1) for c in used]):.1%}" if used else "-"
        cells.append(f"{np.mean([c[0] for c in chosen]):.0f} ({right}); used in {len(used)} of {len(chosen)} runs")
    cells += [f"{np.mean([r[2] for r in results[arm]]):.0f}" for arm in arms]
    return f"| {labels} | " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
