"""Does training without the suspected label errors help? Noisy labels vs the suspects left out vs clean labels.

For a photo folder with its own `train/` and `test/` (e.g. `../shared/data/flowers12`; see that folder's README),
each seed draws `--per-class` training photos per class and flips `--rate` of their labels to another class (drawn
uniformly), and writes them with the folder's test photos (labels as given) as a table. Then, each scored on the same
test photos with the default command (`keras-transfer --data TABLE --split-column split`):

- noisy:     trained on the flipped labels; the run writes the suspected label errors of its training images
             (`label_issues.csv` in the run folder, found before it trains);
- excluded:  trained with `--exclude-issues` that CSV;
- relabelled: trained with `--relabel-issues` that CSV (each suspect given its suggested class);
- clean:     trained on the labels as given.

Prints a markdown table (per seed and mean) and writes it to --output.

Usage: python bench/exclude_issues.py FOLDER [--per-class 30] [--rate 0.2] [--seeds 0 1]
                                      [--output bench/results/exclude_issues.md]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import tempfile

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import numpy as np

from keras_transfer import cli
from keras_transfer.runs import read_run_json

IMAGE = (".jpg", ".jpeg", ".png")


def photos(folder, split):
    """`[(path, class name)]` of `folder/split/<class>/<image>`, sorted."""
    root = os.path.join(folder, split)
    return [
        (os.path.join(root, name, f), name)
        for name in sorted(os.listdir(root))
        for f in sorted(os.listdir(os.path.join(root, name)))
        if f.lower().endswith(IMAGE)
    ]


def tables(folder, per_class, rate, seed, out):
    """`(noisy.csv, clean.csv, flipped paths)`: the drawn training photos (flipped or not) and the test photos."""
    rng = np.random.default_rng(seed)
    train, test = photos(folder, "train"), photos(folder, "test")
    names = sorted({c for _, c in train})
    drawn = []
    for name in names:
        paths = [p for p, c in train if c == name]
        drawn += [(p, name) for p in rng.choice(paths, min(per_class, len(paths)), replace=False)]
    flip = set(rng.choice(len(drawn), int(round(rate * len(drawn))), replace=False).tolist())
    noisy = [(p, rng.choice([n for n in names if n != c]) if i in flip else c) for i, (p, c) in enumerate(drawn)]
    paths = {}
    for kind, rows in (("noisy", noisy), ("clean", drawn)):
        paths[kind] = os.path.join(out, f"{kind}.csv")
        with open(paths[kind], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "split"])
            writer.writerows([(p, c, "train") for p, c in rows] + [(p, c, "test") for p, c in test])
    return paths["noisy"], paths["clean"], {drawn[i][0] for i in flip}


def command(argv):
    with contextlib.redirect_stdout(io.StringIO()) as story:
        code = cli.main(argv)
    if code != 0:
        raise RuntimeError(f"keras-transfer {' '.join(argv)} exited {code}:\n{story.getvalue()[-2000:]}")


def accuracy(table, seed, run, extra=()):
    command(["--data", table, "--split-column", "split", "--seed", str(seed), "--output", run, *extra])
    return read_run_json(run, "report")["accuracy"]


def one_seed(args, seed):
    with tempfile.TemporaryDirectory(prefix="exclude_bench_") as out:
        noisy, clean, flipped = tables(args.folder, args.per_class, args.rate, seed, out)
        run = lambda name: os.path.join(out, name)
        result = {"noisy": accuracy(noisy, seed, run("noisy"))}
        issues = os.path.join(run("noisy"), "label_issues.csv")
        with open(issues) as f:
            found = {row["path"] for row in csv.DictReader(f)}
        off = ["--no-label-issues"]
        result["excluded"] = accuracy(noisy, seed, run("excluded"), [*off, "--exclude-issues", issues])
        result["relabelled"] = accuracy(noisy, seed, run("relabelled"), [*off, "--relabel-issues", issues])
        result["clean"] = accuracy(clean, seed, run("clean"), off)
        finder = read_run_json(run("noisy"), "timings")["label issues"]
        result.update(found=len(found), true=len(found & flipped), flipped=len(flipped), finder_seconds=finder)
    print(f"seed {seed}: {result}", flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output", default="bench/results/exclude_issues.md")
    args = parser.parse_args(argv)
    args.folder = os.path.abspath(args.folder)  # the tables hold absolute paths
    if not os.path.isdir(os.path.join(args.folder, "test")):
        raise SystemExit(
            f"{args.folder}: needs train/ and test/ (the photo sets are in ../shared/data; see its README)"
        )
    results = [one_seed(args, seed) for seed in args.seeds]
    arms = ("noisy", "excluded", "relabelled", "clean")
    lines = [
        "# Training without the suspected label errors",
        "",
        f"`python bench/exclude_issues.py {args.folder} --per-class {args.per_class} --rate {args.rate} --seeds "
        f"{' '.join(map(str, args.seeds))}`; {os.cpu_count()} cores; test accuracy (%) of the default command on the "
        "folder's own test photos. The suspects are those the noisy run found among its training images (its "
        "label_issues.csv).",
        "",
        "| seed | noisy | excluded | relabelled | clean | flagged | of them flipped | flipped | finding s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, r in zip(args.seeds, results):
        cells = " | ".join(f"{100 * r[a]:.1f}" for a in arms)
        lines.append(f"| {seed} | {cells} | {r['found']} | {r['true']} | {r['flipped']} | {r['finder_seconds']:.1f} |")
    means = " | ".join(f"{100 * np.mean([r[a] for r in results]):.1f}" for a in arms)
    lines.append(f"| mean | {means} | | | | |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.output, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
