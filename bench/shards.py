"""Reading a folder vs the same images as TFRecord shards (`write_shards`), and what each of 2 workers reads.

Two sets are generated: many small files (10,000 PNGs of 64x64, where opening each file and checking its header
dominate) and photo-sized JPEGs (1,000 of 1024x768, where decoding dominates). For each, one pass over the training
split from `load_dataset` (listing and checks included, no cache), folder and shards alternating, `--repeats`
rounds: images/s and CPU ms per image (process time, all threads), medians, and the median of each round's
shards/folder ratio. Then the shards' bytes each worker of 2 reads
(the shards `load_dataset` gives a worker of a 2-worker `TF_CONFIG`; tests/test_shards.py trains 2 real
processes and checks they read disjoint whole shards).
Goals (issue 27): shards >= 1.5x the folder's images/s on the small files, never slower on the photos, and with
2 workers each reading <= 55% of the bytes.

Usage: python bench/shards.py [--small 10000] [--photos 1000] [--repeats 5] [--output bench/results/shards.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()

import numpy as np
from PIL import Image

import keras_transfer as kt
from keras_transfer.data import write_shards


def make_folder(root, n, size, suffix):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = os.path.join(root, f"class_{i % 4}")
        os.makedirs(folder, exist_ok=True)
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # smooth images, as photos are: compress as photos do
        image = Image.fromarray(base).resize(size[::-1], Image.BILINEAR)
        image.save(os.path.join(folder, f"{i}.{suffix}"), quality=90) if suffix == "jpg" else image.save(
            os.path.join(folder, f"{i}.{suffix}")
        )
    return root


def one_pass(source, size):
    start, cpu = time.perf_counter(), time.process_time()
    train, _, _, info = kt.load_dataset(source, image_size=size, batch_size=64, validation_split=0.0, cache=False)
    n = sum(len(y) for _, y in train.as_numpy_iterator())
    return n / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / n


def compare(name, folder, shards, size, repeats):
    rows = {"folder": [], "shards": []}
    one_pass(folder, size), one_pass(shards, size)  # warm: file cache, tracing
    for _ in range(repeats):
        for source, key in ((folder, "folder"), (shards, "shards")):
            rows[key].append(one_pass(source, size))
    rate = {k: float(np.median([r[0] for r in v])) for k, v in rows.items()}
    cpu = {k: float(np.median([r[1] for r in v])) for k, v in rows.items()}
    ratios = [s[0] / f[0] for f, s in zip(rows["folder"], rows["shards"])]  # paired: the same round
    return {
        "set": name,
        "images_per_second": rate,
        "cpu_ms_per_image": cpu,
        "ratio": float(np.median(ratios)),
        "ratios": ratios,
    }


def worker_bytes(shards):
    from keras_transfer.data.shards import _worker_shards

    with open(os.path.join(shards, "manifest.json")) as f:
        facts = json.load(f)["shards"]["train"]
    total = sum(s["bytes"] for s in facts)
    positions = np.arange(sum(s["records"] for s in facts))
    shares = []
    for rank in range(2):
        mine = _worker_shards(facts, positions, positions, shards, (2, rank))["shards"]
        shares.append(sum(s["bytes"] for s in mine) / total)
    return shares


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="bench/results/shards.md")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="keras_transfer_shards_")
    results = []
    for name, n, size, suffix, read_at in (
        (f"{args.small} PNGs 64x64", args.small, (64, 64), "png", 64),
        (f"{args.photos} JPEGs 1024x768", args.photos, (768, 1024), "jpg", 224),
    ):
        folder = make_folder(os.path.join(work, suffix, "images"), n, size, suffix)
        shards = os.path.join(work, suffix, "shards")
        write_shards(folder, shards, num_shards=8)
        results.append({**compare(name, folder, shards, read_at, args.repeats), "worker_bytes": worker_bytes(shards)})
        print(summary_line(results[-1]), flush=True)
    lines = [
        f"`python bench/shards.py --small {args.small} --photos {args.photos} --repeats {args.repeats}` "
        f"on {os.cpu_count()} CPU cores, median of {args.repeats} alternating rounds",
        "",
    ]
    lines += [f"- {summary_line(r)}" for r in results]
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    shutil.rmtree(work)
    print(f"Wrote {args.output}")


def summary_line(r):
    rate, cpu = r["images_per_second"], r["cpu_ms_per_image"]
    return (
        f"{r['set']}: folder {rate['folder']:.0f} images/s ({cpu['folder']:.2f} CPU ms/image), shards "
        f"{rate['shards']:.0f} images/s ({cpu['shards']:.2f} CPU ms/image): {r['ratio']:.2f}x (median of the rounds' "
        f"ratios, {min(r['ratios']):.2f}-{max(r['ratios']):.2f}); of 8 shards, "
        f"2 workers read {r['worker_bytes'][0]:.0%} and {r['worker_bytes'][1]:.0%} of the bytes"
    )


if __name__ == "__main__":
    main()
