"""Does the ranking predict fine-tuned accuracy? `rank_backbones` vs the default command run on every candidate.

For each source: the candidates are ranked on its training images (`kt.rank.rank_backbones`, the scores of
`rank.SCORES`), then each candidate is fine-tuned with the default command (`keras-transfer --data SOURCE --backbone
B --image-size S`, the same seed, labels per class and split) and scored on the source's test images. Per source and
score: the weighted Kendall tau between the score and the fine-tuned accuracy (`scipy.stats.weightedtau`, which
weighs the top of the ranking most), and the regret: the best fine-tuned accuracy minus the fine-tuned accuracy of
the candidate the score ranks first. Also the time of the whole ranking against one fine-tune of the top candidate.

Offline candidates: EfficientNet-Lite0/1/2 with their real ImageNet weights at two or three sizes, and Lite0 with
random weights as a control. The photo sets are `../shared/data/clothing10` and `flowers12` (see that folder's README);
`fashion_mnist` means Fashion-MNIST classes 5-9 (Debian's dataset-fashion-mnist), 100 test and 100 validation images
per class.

`--fine-tuned-from RESULTS.json` takes the fine-tuned accuracies (and their times) from an earlier run of this
benchmark with the same sources, candidates, labels per class and seed, and only ranks again: for a change to the
scores, which does not change what fine-tuning gives.

Usage: python bench/rank.py SOURCE [SOURCE ...] [--labels-per-class 20] [--seed 0]
                            [--candidates efficientnet_lite0@160 ...] [--output bench/results/rank.md]
                            [--fine-tuned-from bench/results/rank.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

import numpy as np

from keras_transfer import cli, rank
from keras_transfer.runs import read_run_json

CANDIDATES = (
    "efficientnet_lite0@160",
    "efficientnet_lite0@224",
    "efficientnet_lite1@240",
    "efficientnet_lite2@260",
    "efficientnet_lite0@224:none",
)


def source_options(source):
    """`(load_dataset options, command flags)` of a source: Fashion-MNIST is classes 5-9, 100 test images each."""
    if source == "fashion_mnist":
        options = {"classes": [5, 6, 7, 8, 9], "test_per_class": 100, "validation_per_class": 100}
        return options, ["--classes", *"56789", "--test-per-class", "100", "--validation-per-class", "100"]
    return {}, []


def fine_tuned_accuracy(source, candidate, labels, seed, flags):
    """The default command's test accuracy for one candidate."""
    with tempfile.TemporaryDirectory(prefix="rank_bench_") as out:
        argv = ["--data", source, "--backbone", candidate.backbone, "--seed", str(seed), *flags]
        argv += ["--image-size", str(candidate.image_size)] if candidate.image_size else []
        argv += ["--weights", "none"] if candidate.weights is None else []
        argv += ["--labels-per-class", str(labels), "--output", os.path.join(out, "run")]
        with contextlib.redirect_stdout(io.StringIO()) as story:
            code = cli.main(argv)
        if code != 0:
            raise RuntimeError(f"keras-transfer {' '.join(argv)} exited {code}:\n{story.getvalue()[-2000:]}")
        return read_run_json(os.path.join(out, "run"), "report")["accuracy"]


def one_source(source, args, earlier=None):
    options, flags = source_options(source)
    candidates = [rank.parse_candidate(c) for c in args.candidates]
    with tempfile.TemporaryDirectory(prefix="rank_bench_") as out:
        start = time.perf_counter()
        rows = rank.rank_backbones(
            source, candidates, output_dir=out, labels_per_class=args.labels_per_class, seed=args.seed, **options
        )
        ranking_seconds = time.perf_counter() - start
    by_name = {r["candidate"]: r for r in rows}
    if earlier is not None:
        return {
            "rows": rows,
            "by_name": by_name,
            "tuned": _earlier_tuned(earlier, candidates, args),
            "ranking_seconds": ranking_seconds,
        }
    tuned = {}
    for candidate in candidates:
        start = time.perf_counter()
        accuracy = fine_tuned_accuracy(source, candidate, args.labels_per_class, args.seed, flags)
        tuned[candidate.name] = (accuracy, time.perf_counter() - start)
        print(f"{source} {candidate.name}: fine-tuned {accuracy:.4f} ({tuned[candidate.name][1]:.0f} s)", flush=True)
    return {"rows": rows, "by_name": by_name, "tuned": tuned, "ranking_seconds": ranking_seconds}


def _earlier_tuned(earlier, candidates, args):
    """The fine-tuned `(accuracy, seconds)` of each candidate from an earlier run's results for this source."""
    for key, value in (("labels_per_class", args.labels_per_class), ("seed", args.seed)):
        if earlier.get(key, value) != value:
            raise SystemExit(f"--fine-tuned-from: those fine-tunes had {key} {earlier[key]}, not {value}")
    missing = [c.name for c in candidates if c.name not in earlier["tuned"]]
    if missing:
        raise SystemExit(f"--fine-tuned-from has no fine-tuned accuracy for {missing}")
    return {c.name: tuple(earlier["tuned"][c.name]) for c in candidates}


def agreement(result):
    """Per score: (weighted Kendall tau with the fine-tuned accuracy, regret in points, the top candidate)."""
    from scipy.stats import weightedtau

    names = list(result["tuned"])
    accuracy = np.array([result["tuned"][n][0] for n in names])
    out = {}
    for score in rank.SCORES:
        values = np.array([result["by_name"][n][score] for n in names])
        top = names[int(np.argmax(values))]
        tau = weightedtau(values, accuracy).statistic
        out[score] = (float(tau), 100 * float(accuracy.max() - result["tuned"][top][0]), top)
    return out


def short_list(result):
    """A sentence on the candidates marked `close` (the score cannot tell them from the first): the regret of the
    best of them, and the time of fine-tuning them all."""
    names = [r["candidate"] for r in result["rows"] if r.get("close")]
    accuracy = {n: result["tuned"][n][0] for n in result["tuned"]}
    best = max(names, key=accuracy.get)
    regret = 100 * (max(accuracy.values()) - accuracy[best])
    seconds = sum(result["tuned"][n][1] for n in names)
    return (
        f"Short list (`close`: within two standard errors of the first's score): {', '.join(names)}; the best of "
        f"them fine-tuned {100 * accuracy[best]:.1f}% ({best}): regret {regret:.1f} points; fine-tuning all "
        f"{len(names)}: {seconds:.0f} s."
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="folders of photos, or fashion_mnist")
    parser.add_argument("--labels-per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--output", default="bench/results/rank.md")
    parser.add_argument("--fine-tuned-from", help="an earlier run's results JSON: its fine-tuned accuracies, reused")
    args = parser.parse_args(argv)
    earlier = {}
    if args.fine_tuned_from:
        with open(args.fine_tuned_from) as f:
            earlier = json.load(f)
    results = {}
    for source in args.sources:
        if source != "fashion_mnist" and not os.path.isdir(source):
            raise SystemExit(f"{source}: no such folder (the photo sets are in ../shared/data; see its README)")
        if args.fine_tuned_from and source not in earlier:
            raise SystemExit(f"--fine-tuned-from {args.fine_tuned_from} has no results for {source}")
        results[source] = one_source(source, args, earlier.get(source))
        write(results, args)


def write(results, args):
    lines = [
        "# Does the ranking predict fine-tuned accuracy?",
        "",
        f"`python bench/rank.py {' '.join(results)} --labels-per-class {args.labels_per_class} --seed {args.seed}"
        + (f" --fine-tuned-from {args.fine_tuned_from}" if args.fine_tuned_from else "")
        + f"`; {os.cpu_count()} cores. Fine-tuned: the default command's test accuracy"
        + (f" (from {args.fine_tuned_from}: not run again)." if args.fine_tuned_from else "."),
    ]
    for source, result in results.items():
        top_name = max(result["tuned"], key=lambda n: result["by_name"][n]["score"])
        lines += [
            "",
            f"## {source}",
            "",
            "| candidate | " + " | ".join(rank.SCORES) + " | fine-tuned | seconds |",
            "|---" * (len(rank.SCORES) + 3) + "|",
        ]
        for name, (accuracy, seconds) in sorted(result["tuned"].items(), key=lambda kv: -kv[1][0]):
            scores = " | ".join(f"{result['by_name'][name][s]:.4f}" for s in rank.SCORES)
            lines.append(f"| {name} | {scores} | {100 * accuracy:.1f} | {seconds:.0f} |")
        lines += ["", "| score | weighted tau | regret (points) | ranked first |", "|---|---|---|---|"]
        for score, (tau, regret, top) in agreement(result).items():
            lines.append(f"| {score} | {tau:+.2f} | {regret:.1f} | {top} |")
        ratio = result["ranking_seconds"] / result["tuned"][top_name][1]
        lines += [
            "",
            f"Ranking all {len(result['tuned'])} candidates: {result['ranking_seconds']:.0f} s; one "
            f"fine-tune of the top candidate ({top_name}): {result['tuned'][top_name][1]:.0f} s; "
            f"ratio {ratio:.2f} (goal <= 0.20).",
            "",
            short_list(result),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    raw = {
        s: {
            "ranking": r["rows"],
            "tuned": r["tuned"],
            "ranking_seconds": r["ranking_seconds"],
            "labels_per_class": args.labels_per_class,
            "seed": args.seed,
        }
        for s, r in results.items()
    }
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
