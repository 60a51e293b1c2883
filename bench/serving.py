"""The demo's fine-tuned EfficientNet-Lite0 in every export format: each file's size, accuracy on the demo's test
images, agreement with Keras, largest probability difference, batch-1 latency and batch-32 throughput, the formats
alternating in one run on this machine (`keras_transfer.export.benchmark_exports`, through `keras-transfer
export-bench`).

Reads the demo's run folder (`make demo` writes saved_models/demo/run; without it this script runs the demo
first). int8 calibrates on the run's training images. Goals (issue 26): int8 within 1 point of Keras's accuracy and
at least 3.5x smaller than the float32 TFLite file; float16 within 0.1 point and about 2x smaller.

Usage: python bench/serving.py [--run saved_models/demo/run] [--repeats 5] [--output bench/results/serving.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal

from keras_transfer.export import format_exports
from keras_transfer.recipe import export_bench
from keras_transfer.runs import run_file

# (format, the most accuracy points it may lose against Keras, the least size factor against float32 TFLite)
GOALS = (("tflite_float16", 0.1, 1.9), ("tflite_int8", 1.0, 3.5))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="saved_models/demo/run", help="a finished run folder (the demo's)")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds, formats alternating")
    parser.add_argument("--output", default="bench/results/serving.md")
    args = parser.parse_args(argv)
    if not os.path.isfile(run_file(args.run, "model")):
        print(f"{args.run} holds no finished run: running the demo first (scripts/demo.py)", flush=True)
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
        import demo

        code = demo.main(["--output", os.path.dirname(os.path.normpath(args.run))])
        if code:
            return code
    export_bench(args.run, args.repeats)
    with open(run_file(run_file(args.run, "exports"), "exports_table")) as f:
        rows = json.load(f)
    checks = goal_lines(rows)
    print("\n".join(checks))
    with open(os.path.join(args.run, "config.yaml")) as f:
        config = f.read()
    text = "\n\n".join(
        [
            f"`python bench/serving.py --run {args.run} --repeats {args.repeats}` on {os.cpu_count()} CPU cores",
            "```\n" + format_exports(rows) + "\n```",
            "\n".join(f"- {line}" for line in checks),
            "The run's settings:\n```yaml\n" + config.strip() + "\n```",
        ]
    )
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text + "\n")
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    print(f"Wrote {args.output}")
    return 0


def goal_lines(rows):
    """One line per goal in GOALS: the measured accuracy loss and size factor, and whether each goal holds."""
    by = {row["format"]: row for row in rows}
    lines = []
    for name, points, factor in GOALS:
        if "error" in by.get(name, {"error": "not measured"}) or "error" in by["keras"] or "error" in by["tflite"]:
            lines.append(f"{name}: not measured ({by.get(name, {}).get('error', 'missing')})")
            continue
        change = 100 * (by[name]["accuracy"] - by["keras"]["accuracy"])
        smaller = by["tflite"]["bytes"] / by[name]["bytes"]
        verdicts = ["met" if ok else "NOT met" for ok in (change >= -points, smaller >= factor)]
        lines.append(
            f"{name}: accuracy {change:+.2f} points against Keras (goal: at most {points} lower, {verdicts[0]}), "
            f"{smaller:.2f}x smaller than float32 TFLite (goal: >= {factor}x, {verdicts[1]})"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
