"""TFRecord shards (from `write_shards`) as a source: read per worker, checked against their manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re

import numpy as np
import tensorflow as tf

from keras_transfer.data.pipeline import AUTOTUNE, check_data_service, label_array, resize, shuffle
from keras_transfer.data.records import SPLITS, Records
from keras_transfer.distribute import worker_rank
from keras_transfer.images import decode_image, decode_key, keyed_decoder

logger = logging.getLogger(__name__)


MANIFEST = "manifest.json"


SHARDS_VERSION = 1  # the manifest's format; a newer one is refused by name


def sha256(path):
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Shards:
    """A folder of TFRecord shards from `write_shards` (a plain folder path with a manifest is the same with the
    defaults).

    Args:
        folder: the shards' folder (a `tf.io.gfile` path: local, `gs://...`).
        service: the address of a tf.data service dispatcher (`"grpc://host:port"`; `keras-transfer data-service`
            starts one): the training split's shards are divided between its workers, which read and decode them,
            each image once per epoch (`distributed_epoch`), and batched here; not cached (the workers decode every
            epoch). None: decoded in this process.
    """

    folder: object
    service: str | None = None

    def records(self):
        if not is_shards(self.folder):
            raise ValueError(
                f"Shards reads a folder of TFRecord shards with a {MANIFEST}: write the source once with write_shards "
                "(or `keras-transfer write-shards`) and pass that folder. The tf.data service (data_service) reads "
                "shards only: other pipelines draw images and labels from two inputs, which the service would "
                f"divide between its workers apart. Received: source={self.folder!r}"
            )
        return shard_records(os.fspath(self.folder), self.service)


def has_shards_without_manifest(folder):
    inside = [os.path.join(folder, split) for split in SPLITS if os.path.isdir(os.path.join(folder, split))]
    return any(n.startswith("shard-") and n.endswith(".tfrecord") for f in inside for n in os.listdir(f))


def is_shards(source):
    return (
        isinstance(source, (str, os.PathLike))
        and bool(os.fspath(source))
        and tf.io.gfile.exists(os.path.join(os.fspath(source), MANIFEST))
    )


def shard_records(folder, service=None):
    """A folder from `write_shards` as records; each shard checked against the manifest by size."""
    folder = os.fspath(folder)
    with tf.io.gfile.GFile(os.path.join(folder, MANIFEST)) as f:
        manifest = json.loads(f.read())
    if manifest.get("version", 0) > SHARDS_VERSION:
        raise ValueError(
            f"{folder!r} was written by a newer keras_transfer (shards format {manifest['version']}; this one reads "
            f"up to {SHARDS_VERSION}): upgrade keras_transfer. Received: source={folder!r}"
        )
    _check_shard_files(folder, manifest)
    multi, names = manifest["multi_label"], manifest["class_names"]
    labels, positions = {}, {}
    for split, stored in manifest["labels"].items():
        missing = {i for shard in manifest["shards"][split] for i in shard["missing"]}
        present = np.array([i for i in range(len(stored)) if i not in missing], np.int64)
        positions[split] = np.full(len(stored), -1, np.int64)
        positions[split][present] = np.arange(len(present))
        stored = np.asarray(stored, np.uint8 if multi else np.int64)
        labels[split] = stored[present] if len(present) else stored[:0]

    def images(split, idx, workers=(1, 0)):
        mine = _worker_shards(manifest["shards"][split], positions[split], idx, folder, workers)
        files = [os.path.join(folder, shard["file"]) for shard in mine["shards"]]
        headers = {i: h for s in manifest["shards"][split] for i, h in zip(s["indices"], s["headers"])}
        headers = None if manifest["decode"] == "array" else [headers.get(i) for i in range(len(positions[split]))]
        reader = _shard_reader(files, positions[split], len(labels[split]), idx, headers)
        return lambda *args: reader(*args).take(mine["images"])

    return Records(
        folder,
        names,
        [original for original, _ in manifest["label_map"]],
        labels,
        images,
        skipped=[tuple(entry) for entry in manifest["skipped"]],
        multi_label=multi,
        worker_images=lambda split, idx: images(split, idx, worker_rank()),
        service=service and check_data_service(service),
    )


def _check_shard_files(folder, manifest):
    listed = {shard["file"] for facts in manifest["shards"].values() for shard in facts}
    for split in manifest["shards"]:
        names = (
            tf.io.gfile.listdir(os.path.join(folder, split)) if tf.io.gfile.isdir(os.path.join(folder, split)) else []
        )
        strangers = sorted(f"{split}/{n}" for n in names if n.endswith(".tfrecord") and f"{split}/{n}" not in listed)
        if strangers:
            raise ValueError(
                f"{folder!r} mixes shards of another set with its own: {', '.join(strangers[:3])} are not in its "
                f"{MANIFEST}. Write each set into its own folder. Received: source={folder!r}"
            )
    for facts in manifest["shards"].values():
        for shard in facts:
            path = os.path.join(folder, shard["file"])
            size = tf.io.gfile.stat(path).length if tf.io.gfile.exists(path) else None
            if size != shard["bytes"]:
                found = "missing" if size is None else f"{size} bytes"
                raise ValueError(
                    f"Shard {path!r} does not match {MANIFEST}: {found}, expected {shard['bytes']} bytes "
                    f"({shard['records']} records). Write the shards again. Received: source={folder!r}"
                )


def check_shards(folder):
    """Reads every record of a `write_shards` folder and checks each shard against its manifest (size, record
    count, SHA-256): what to run when training from shards stopped on "corrupted record". Returns the manifest.

    Raises:
        ValueError: naming the first shard that is missing, damaged or different, and what differs.
    """
    folder = os.fspath(folder)
    shard_records(folder)  # the manifest's version, stray files and sizes
    with tf.io.gfile.GFile(os.path.join(folder, MANIFEST)) as f:
        manifest = json.loads(f.read())
    for facts in manifest["shards"].values():
        for shard in facts:
            path = os.path.join(folder, shard["file"])
            try:
                records = int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))
            except tf.errors.DataLossError as e:
                why = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", e.message)
                raise ValueError(f"Shard {path!r} is damaged: {why}. Write the shards again.") from e
            found = {"records": records, "sha256": sha256(path)}
            wrong = [f"{k} {found[k]} (expected {shard[k]})" for k in found if found[k] != shard[k]]
            if wrong:
                raise ValueError(f"Shard {path!r} does not match {MANIFEST}: {', '.join(wrong)}. Write it again.")
    return manifest


def _shard_decoder(headers, positions, size, dtype):
    """(branch per record index, decode(blob, branch)): arrays' images resized as arrays are; files grouped by
    `decode_key` as `decode_files` groups them (`headers`: one per record index)."""
    if headers is None:
        branches = tf.zeros([len(positions)], tf.int32)
        return branches, lambda blob, branch: tf.cast(resize(decode_image(blob), size), dtype)
    keys = [h if h == "other" else decode_key(h, size) for h in headers]
    groups = sorted(set(keys), key=repr)
    branches = tf.constant(np.array([groups.index(k) for k in keys], np.int32).reshape(-1))
    return branches, keyed_decoder(groups, size, dtype)


def _worker_shards(shards, positions, idx, folder, workers=(1, 0)):
    """A worker's part of a split's shards, for `workers` = `(workers, rank)` (`worker_rank()`): every
    `workers`-th shard from its rank on, and as many images as the worker with the fewest kept images has, so
    that every worker runs the same number of steps; `{"shards", "images"}`."""
    workers, rank = workers
    kept = set(positions[np.asarray(idx, np.int64)].tolist()) if len(idx) else set()
    images = [len(kept & set(positions[np.asarray(s["indices"], np.int64)].tolist())) for s in shards]
    if workers > len(shards):
        raise ValueError(
            f"{folder!r} has {len(shards)} shards for a split, fewer than the {workers} workers in TF_CONFIG: each "
            f"worker reads whole shards. Write them again with write_shards(..., num_shards={workers}) or more."
        )
    least = min(sum(images[w::workers]) for w in range(workers))
    if workers > 1 and sum(images[rank::workers]) > least:
        logger.warning(
            "Worker %d of %d reads %d images of this split, the fewest any worker has is %d: it uses %d per pass, "
            "so that every worker runs the same number of steps (a number of shards that is a multiple of the "
            "workers keeps the parts even).",
            rank,
            workers,
            sum(images[rank::workers]),
            least,
            least,
        )
    return {"shards": shards[rank::workers], "images": least}


def _shard_reader(files, positions, n, idx, headers):
    """`images` for shards: the records of the kept positions `idx`, decoded at the size (images from arrays
    resized as arrays are, files as image files are: by their JPEG `headers`, one per record index, as
    `decode_files` decodes them), beside their labels."""
    keep = np.zeros(n, bool)
    keep[idx] = True
    keep, positions = tf.constant(keep), tf.constant(positions)
    spec = {"index": tf.io.FixedLenFeature([], tf.int64), "image": tf.io.FixedLenFeature([], tf.string)}

    def pairs(labels, size, shuffle_seed, dtype):
        by_position = np.zeros((n, *np.shape(labels)[1:]), label_array(labels).dtype)
        by_position[idx] = label_array(labels)
        by_position = tf.constant(by_position)
        ds = tf.data.Dataset.from_tensor_slices(files)  # this worker's shards: nothing for tf.distribute to shard
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
        if shuffle_seed is not None:
            ds = ds.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=AUTOTUNE)
        ds = ds.batch(256).map(lambda records: tf.io.parse_example(records, spec), num_parallel_calls=AUTOTUNE)
        ds = ds.unbatch()  # parsed 256 at a time: 3x faster than one by one
        branches, decode = _shard_decoder(headers, positions, size, dtype)
        ds = ds.map(lambda example: (example["index"], tf.gather(positions, example["index"]), example["image"]))
        ds = ds.filter(lambda index, position, blob: (position >= 0) & tf.gather(keep, tf.maximum(position, 0)))
        if shuffle_seed is not None:  # encoded bytes in the buffer, decoded after
            ds = shuffle(ds, len(idx), shuffle_seed)
        return ds.map(
            lambda index, position, blob: (decode(blob, tf.gather(branches, index)), tf.gather(by_position, position)),
            num_parallel_calls=AUTOTUNE,
        )

    return pairs
