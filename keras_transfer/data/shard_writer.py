"""Writing any source as TFRecord shards: a sink that reads sources and is never imported by them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os

import numpy as np
import tensorflow as tf

from keras_transfer.data.pipeline import AUTOTUNE
from keras_transfer.data.records import SPLITS, has_label, is_int, readable
from keras_transfer.data.shards import MANIFEST, SHARDS_VERSION, sha256
from keras_transfer.data.sources import records as source_records
from keras_transfer.files import commit_gfile, exclusive, write_bytes_gfile
from keras_transfer.images import decode_image, jpeg_header
from keras_transfer.images import image_size as image_size_rule

logger = logging.getLogger(__name__)


LOCK = ".write-shards.lock"  # held by the writer of a local shards folder
SHARD_BYTES = 150 * 2**20  # about 150 MB per shard file, as TF Model Garden and big_vision write them


def write_shards(source, output_dir, *, num_shards=None, image_size=None):
    """Writes a source as sharded TFRecord files that `load_dataset(output_dir, ...)` reads like the source.

    Each of the source's own splits becomes `<split>/shard-00000-of-000NN.tfrecord` files of about `SHARD_BYTES`
    each, holding every image's encoded bytes (as found; re-encoded at `image_size` when given, and for arrays and
    TFDS images, which have no files: PNG), its label(s), its index in the split and its original path, in a
    shuffled order (so each shard holds every class). `manifest.json` lists the class names, the label map,
    whether images carry several labels, the counts per split and class, each shard's bytes, record count and
    SHA-256, and what was skipped; it holds no absolute path, so the folder can be moved or copied to a bucket
    (`tf.io.gfile` paths such as `gs://...` work where TensorFlow's file systems do).

    A shard appears whole or not at all (written under a temporary name, then renamed), and the manifest last: a
    killed writer leaves no manifest, and the same call again keeps the shards it had finished and writes the
    rest. Progress is logged per shard.

    Args:
        source: what `load_dataset` takes (a folder, a CSV file or DataFrame, `"tfds:NAME"`, `"digits"`,
            `"fashion_mnist"`, `(x, y)` arrays, or a `Table` or `Tfds` with its options).
        output_dir: an empty (or not yet existing) folder, or one this same call was writing.
        num_shards: shard files per split (default: enough for about `SHARD_BYTES` each); several workers each
            read whole shards, so give at least as many as workers.
        image_size: `(height, width)` or an int to shrink the images to (bilinear, antialiased); None keeps files
            as they are (TFDS sources need it).

    Returns:
        The manifest, as a dict.

    Raises:
        ValueError: for a bad `num_shards` or `image_size`, or an `output_dir` that holds other
            files or another set of shards.
    """
    if num_shards is not None and (not is_int(num_shards) or num_shards < 1):
        raise ValueError(f"num_shards must be an integer >= 1 or None. Received: num_shards={num_shards!r}")
    size = None if image_size is None else image_size_rule(image_size)
    records = source_records(source)
    if size is None and records.files is None and records.size is None:
        raise ValueError(f"{records.name!r} has images of several sizes and no files: pass image_size=... to write it")
    plan = _shard_plan(records, size, num_shards)
    output_dir = os.fspath(output_dir)
    local = "://" not in output_dir  # a bucket has no lock: one writer there is the caller's to ensure
    with exclusive(output_dir, os.path.join(output_dir, LOCK), "shards folder") if local else contextlib.nullcontext():
        _check_shards_folder(output_dir, plan["fingerprint"])
        shards = {split: _write_split(records, split, plan, output_dir) for split in records.labels}
        _check_still_ours(output_dir, plan, shards)
        manifest = _manifest(records, plan, shards)
        write_bytes_gfile(os.path.join(output_dir, MANIFEST), json.dumps(manifest, indent=1).encode())
    logger.info("Wrote %d shards of %s into %s", sum(map(len, shards.values())), records.name, output_dir)
    return manifest


def _shard_plan(records, size, num_shards):
    """What the shards will hold: per split a shuffled order of the images and a shard count; and a fingerprint
    of everything that decides the files' contents (a folder being written is only resumed with the same)."""
    plan = {"size": size, "order": {}, "shards": {}}
    for split, labels in records.labels.items():
        n = len(labels)
        plan["order"][split] = np.random.default_rng(0).permutation(n)
        if num_shards is None:
            sample = plan["order"][split][:16]
            blobs = [len(blob) for _, blob in _encoded(records, split, sample, size).as_numpy_iterator()]
            num_shards = max(1, math.ceil(n * float(np.mean(blobs or [0])) / SHARD_BYTES))
        plan["shards"][split] = min(num_shards, max(n, 1))
    facts = {
        "classes": list(map(str, records.class_names)),
        "labels": {split: np.asarray(labels).tolist() for split, labels in records.labels.items()},
        "files": {s: [readable(p) for p in f] for s, f in (records.files or {}).items()},
        "size": size,
        "shards": plan["shards"],
    }
    plan["fingerprint"] = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    return plan


def _encoded(records, split, idx, size):
    """A dataset of `(index, encoded image bytes)` for the images `idx` of `split`, in that order; images that
    fail to decode are left out."""
    idx = np.asarray(idx, np.int64)
    if records.files is not None and size is None:
        ds = tf.data.Dataset.from_tensor_slices((idx, records.files[split][idx]))
        ds = ds.map(lambda i, path: (tf.cast(i, tf.int64), tf.io.read_file(path)), num_parallel_calls=AUTOTUNE)
        # decoded once here, so that reading the shards never meets an image that does not decode
        return ds.map(_decodable, num_parallel_calls=AUTOTUNE).ignore_errors()
    images = records.images(split, idx)(idx, size or records.size, None, tf.uint8)
    encode = tf.io.encode_png if records.files is None else (lambda image: tf.io.encode_jpeg(image, quality=95))
    as_bytes = (lambda image: image) if images.element_spec[0].dtype == tf.uint8 else _rounded
    return images.map(lambda image, i: (tf.cast(i, tf.int64), encode(as_bytes(image))), num_parallel_calls=AUTOTUNE)


def _decodable(i, blob):
    with tf.control_dependencies([decode_image(blob)]):
        return i, tf.identity(blob)


def _rounded(image):
    return tf.saturate_cast(tf.round(image), tf.uint8)


def _shard_name(split, k, count):
    return f"{split}/shard-{k:05d}-of-{count:05d}.tfrecord"


def _write_split(records, split, plan, output_dir):
    """Writes (or keeps, when a killed run had finished them) the shards of one split; returns their facts."""
    count, facts = plan["shards"][split], []
    tf.io.gfile.makedirs(os.path.join(output_dir, split))
    for k, chunk in enumerate(np.array_split(plan["order"][split], count)):
        path = os.path.join(output_dir, _shard_name(split, k, count))
        key = _shard_key(plan, chunk)
        done = _finished_shard(path, key)
        if done is None:
            done = _write_shard(records, split, chunk, plan["size"], path)
            write_bytes_gfile(path + ".json", json.dumps({**done, "key": key}).encode())
        facts.append({"file": _shard_name(split, k, count), **{n: done[n] for n in ("bytes", "records", "sha256")}})
        facts[-1].update(missing=done["missing"], indices=sorted(int(i) for i in chunk), headers=done["headers"])
        logger.info("%s: shard %d of %d, %d images, %.1f MB", split, k + 1, count, done["records"], done["bytes"] / 1e6)
    for name in tf.io.gfile.listdir(os.path.join(output_dir, split)):  # what a killed call left half-written
        if ".tmp-" in name:
            tf.io.gfile.remove(os.path.join(output_dir, split, name))
    return facts


def _shard_key(plan, chunk):
    """What a shard's sidecar records: the plan's fingerprint and the images the shard holds."""
    return hashlib.sha256(f"{plan['fingerprint']} {chunk.tolist()}".encode()).hexdigest()


def _check_still_ours(output_dir, plan, shards):
    """Before the manifest: every shard is still the one this call wrote or kept (its key and size), so that a set
    another writer wrote into is never reported as written."""
    for split, facts in shards.items():
        for chunk, fact in zip(np.array_split(plan["order"][split], plan["shards"][split]), facts):
            if _finished_shard(os.path.join(output_dir, fact["file"]), _shard_key(plan, chunk)) is None:
                raise RuntimeError(
                    f"Shard {fact['file']} in {output_dir!r} was changed by another writer while this one wrote; no "
                    "manifest written. Write into a folder of its own."
                )


def _finished_shard(path, key):
    """The facts of a shard a previous call finished with the same contents, else None."""
    try:
        with tf.io.gfile.GFile(path + ".json", "rb") as f:
            done = json.loads(f.read())
        return done if done.get("key") == key and tf.io.gfile.stat(path).length == done["bytes"] else None
    except (tf.errors.OpError, ValueError, KeyError):
        return None


def _write_shard(records, split, chunk, size, path):
    written, headers = set(), {}
    multi = records.multi_label
    temporary = f"{path}.tmp-{os.getpid()}"
    with tf.io.TFRecordWriter(temporary) as writer:
        for i, blob in _encoded(records, split, chunk, size).as_numpy_iterator():
            label = records.labels[split][i]
            ids = np.flatnonzero(label) if multi else [label]
            original = records.files[split][i] if records.files is not None else b""
            writer.write(_example(i, blob, ids, original).SerializeToString())
            written.add(int(i))
            headers[int(i)] = jpeg_header(blob) if blob.startswith(b"\xff\xd8\xff") else "other"
    commit_gfile(temporary, path)
    missing = [int(i) for i in chunk if int(i) not in written]
    facts = {"bytes": tf.io.gfile.stat(path).length, "records": len(written), "sha256": sha256(path)}
    # each image's JPEG header (width, height, orientation), None (a JPEG without one) or "other" (not a JPEG), so
    # that reading picks its decoder without looking
    return {**facts, "missing": missing, "headers": [headers.get(int(i)) for i in sorted(int(i) for i in chunk)]}


def _example(index, blob, ids, path):
    feature = tf.train.Feature
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "index": feature(int64_list=tf.train.Int64List(value=[int(index)])),
                "image": feature(bytes_list=tf.train.BytesList(value=[bytes(blob)])),
                "label": feature(int64_list=tf.train.Int64List(value=[int(i) for i in ids])),
                "path": feature(bytes_list=tf.train.BytesList(value=[bytes(path)])),
            }
        )
    )


def _manifest(records, plan, shards):
    name = records.name.rstrip("/\\")
    return {
        "version": SHARDS_VERSION,
        "source": name if "://" in name else os.path.basename(name) or name,
        "fingerprint": plan["fingerprint"],
        "class_names": list(map(str, records.class_names)),
        "label_map": [[original, i] for i, original in enumerate(records.original_ids)],
        "multi_label": records.multi_label,
        "image_size": None if plan["size"] is None else list(plan["size"]),
        # how `load_dataset` resizes them, as it does the source's: arrays bilinear, files as image files are
        "decode": "file" if records.files is not None else "array",
        "counts": {
            split: {str(n): int(np.sum(has_label(labels, i))) for i, n in enumerate(records.class_names)}
            for split, labels in records.labels.items()
        },
        "shards": shards,
        "labels": {split: np.asarray(labels).tolist() for split, labels in records.labels.items()},
        "skipped": [[_relative(p, name), reason] for p, reason in records.skipped]
        + [
            [_relative(records.files[split][i], name) if records.files else f"{split} {i}", "did not decode"]
            for split, facts in shards.items()
            for shard in facts
            for i in shard["missing"]
        ],
    }


def _relative(path, root):
    """A path as the manifest keeps it: relative to the source's folder (or the table's) where it lies inside."""
    path, root = readable(path), readable(root)
    folder = root if os.path.isdir(root) else os.path.dirname(root)
    inside = os.path.isabs(path) == os.path.isabs(folder) and not os.path.relpath(path, folder).startswith("..")
    return os.path.relpath(path, folder) if folder and inside else path


def _check_shards_folder(output_dir, fingerprint):
    """An empty folder, or the one a call with the same `fingerprint` was writing; else a ValueError."""
    manifest = os.path.join(output_dir, MANIFEST)
    if tf.io.gfile.exists(manifest):
        with tf.io.gfile.GFile(manifest) as f:
            found = json.loads(f.read()).get("fingerprint")
        if found != fingerprint:
            raise ValueError(
                f"{output_dir!r} already holds another set of shards ({manifest}); write into an empty folder. "
                f"Received: output_dir={output_dir!r}"
            )
        return
    if not tf.io.gfile.exists(output_dir):
        tf.io.gfile.makedirs(output_dir)
        return
    for entry in tf.io.gfile.listdir(output_dir):
        inside = os.path.join(output_dir, entry.rstrip("/"))
        if entry == LOCK:
            continue
        leftover = entry.rstrip("/") in SPLITS and all(n.startswith("shard-") for n in tf.io.gfile.listdir(inside))
        if not leftover:
            raise ValueError(
                f"{output_dir!r} holds {entry!r}: shards are written into an empty folder (or one a killed "
                f"write_shards call of the same source left). Received: output_dir={output_dir!r}"
            )
