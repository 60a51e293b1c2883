"""The one tf.data pipeline every source ends in: parallel decode + resize, cache, shuffle, batch, prefetch, and
the tf.data service; `decode_files` for sources of image files."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time

import numpy as np
import tensorflow as tf

from keras_transfer.images import file_decode_key, group_decoder

logger = logging.getLogger(__name__)


AUTOTUNE = tf.data.AUTOTUNE


SHUFFLE_BUFFER = 10_000


def with_known_size(dataset):
    """The dataset with its number of batches known, counted once when filtering left it unknown.

    Keras needs it: with an unknown size, progress bars have no total, the stage-2 schedule no length, and
    Keras 3.15's `optimizer.iterations` counts one step too many per epoch (measured: 8 after 2 epochs of 3
    batches), which would corrupt a resumed schedule. The count is stable: a file that fails to decode fails
    every epoch, and with a cache the counting pass fills it.
    """
    n = int(dataset.cardinality())
    if n < 0:
        n = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
    return dataset.apply(tf.data.experimental.assert_cardinality(n))


def _fits_in_memory(n, size, dtype):
    need = n * size[0] * size[1] * 3 * np.dtype(dtype).itemsize
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return True
    if need > available / 2:
        logger.warning(
            "Not caching %d images in memory (%.1f GB, %.1f GB available); pass cache='path/prefix' to cache on disk.",
            n,
            need / 1e9,
            available / 1e9,
        )
        return False
    return True


def resize(image, size):
    # Arrays and TFDS images: bilinear without antialiasing, as Keras resizes (and the model inside). Image files
    # go through images.decode_image, which decodes JPEGs at a reduced scale and resizes with antialiasing.
    resized = tf.image.resize(image, size, method="bilinear")
    if image.dtype == tf.uint8:  # cached as uint8: a quarter of the memory of float32
        return tf.saturate_cast(resized + 0.5, tf.uint8)  # round to nearest, clipped to 0..255
    return resized


def paired(items, load, may_fail=True):
    """`images` for a dataset of items: each loaded at the size, beside its label (shuffled after loading);
    with `may_fail`, items that fail to load are dropped."""

    def pairs(labels, size, shuffle_seed, dtype):  # dtype: what the pipeline wants; arrays keep their own
        ds = tf.data.Dataset.zip(items, tf.data.Dataset.from_tensor_slices(label_array(labels)))
        ds = ds.map(lambda item, label: (load(item, size), label), num_parallel_calls=AUTOTUNE)
        ds = ds.ignore_errors(log_warning=True) if may_fail else ds
        return ds if shuffle_seed is None else shuffle(ds, len(labels), shuffle_seed)

    return pairs


def shuffle(ds, n, seed):
    return ds.shuffle(min(n, SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)


def cache_choice(cache, served, n, size, dtype):
    """What `build_pipeline` caches: nothing for a split the tf.data service decodes, else `cache` (True: in memory
    where it fits)."""
    if served:
        return False
    return cache if cache is not True else _fits_in_memory(n, size, dtype)


def start_data_service(port=0, workers=1):
    """Starts a tf.data service in this process: a dispatcher on `port` (0: any free one) and `workers` workers.
    Returns `{"address": "grpc://localhost:PORT", "dispatcher", "workers"}`; the servers run until the process ends
    (`dispatcher.join()` waits for that)."""
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=port))
    address = dispatcher.target.split("://")[-1]
    # a heartbeat a second (TensorFlow's default: 30 s) so that a new epoch's job reaches the workers at once
    config = service.WorkerConfig(dispatcher_address=address, heartbeat_interval_ms=1000)
    servers = [service.WorkerServer(config) for _ in range(workers)]
    return {"address": f"grpc://{address}", "dispatcher": dispatcher, "workers": servers}


@contextlib.contextmanager
def watch_service(address, timeout_s, on_lost, every_s=5.0):
    """While the block runs, the tf.data service dispatcher at `address` is asked every `every_s` seconds (a TCP
    connection, as `check_data_service` makes); once it has not answered for `timeout_s` seconds, `on_lost(message)`
    is called from the watching thread (the training loop then waits inside TensorFlow, where nothing else reaches
    it: TensorFlow's client retries a lost dispatcher for ever)."""
    host, port = address.split("://")[-1].rsplit(":", 1)
    stop = threading.Event()

    def watch():
        answered = time.monotonic()
        while not stop.wait(every_s):
            try:
                socket.create_connection((host, int(port)), timeout=every_s).close()
                answered = time.monotonic()
            except OSError as e:
                if time.monotonic() - answered >= timeout_s:
                    on_lost(
                        f"the tf.data service at {address} has not answered for {timeout_s:g} s "
                        f"({e.strerror or e}; --peer-timeout)"
                    )
                    return

    thread = threading.Thread(target=watch, name="keras-transfer-service-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def check_data_service(address, timeout=3.0):
    """`address` as `"grpc://host:port"` when a tf.data service dispatcher answers there within `timeout` seconds.

    Raises:
        ValueError: for an address that is not `[grpc://]host:port`, or one where nothing answers.
    """
    match = re.fullmatch(r"(?:grpc://)?([^:/]+):(\d+)", str(address))
    if not match:
        raise ValueError(f"data_service must be 'grpc://host:port'. Received: data_service={address!r}")
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ValueError(
            f"No tf.data service answers at grpc://{host}:{port} within {timeout:g} s ({e.strerror or e}). Start "
            f"one with `keras-transfer data-service --port {port}`, or leave data_service out to decode here."
        ) from e
    return f"grpc://{host}:{port}"


def build_pipeline(images, labels, *, size, batch_size, training, cache, cache_name, seed, deterministic, service=None):
    # `images` drops what fails to decode (never a crash mid-epoch); uncached, it shuffles (files before decoding)
    # and gives float32 (cached: uint8 where it can, a quarter of the memory; cast per batch).
    ds = images(labels, size, seed if training and not cache else None, tf.uint8 if cache or service else tf.float32)
    if cache:
        ds = ds.cache(f"{cache}_{cache_name}" if isinstance(cache, (str, os.PathLike)) else "")
        ds = shuffle(ds, len(labels), seed) if training else ds
    if service:  # images (uint8 where the source allows) go over the wire one by one; batches are made here
        ds = ds.apply(tf.data.experimental.service.distribute("distributed_epoch", service))
    ds = ds.batch(batch_size)
    if ds.element_spec[0].dtype != tf.float32:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    # Evaluation order is the same on every pass; a cached training split decodes once, in order, so that a seed
    # gives the same batches every run (the cache filled as decodes finish made one seed's runs differ by points).
    options.deterministic = bool(deterministic) or not training or bool(cache)
    return ds.with_options(options).prefetch(AUTOTUNE)


def decode_files(paths, labels, size, shuffle_seed=None, dtype=tf.uint8, dct_scaling=True):
    """A dataset of `(decode_image(read_file(path), size), label)`, in the order of `paths` (bytes or str), or
    reshuffled on every pass for a `shuffle_seed`; files that fail to decode are dropped. `dtype` float32 gives
    the same values as uint8 does, as float32 (what a model takes, when the images are not cached as uint8);
    `dct_scaling` as in `decode_image`.

    Upright JPEGs (no EXIF orientation other than 1) are grouped by how `decode_image` would decode them (DCT
    ratio, antialiasing), which their headers tell here in Python, and each group gets a decode fixed for it: the
    same pixels without TensorFlow control flow per image, which measured about 2x slower on small photos. Files
    that are not JPEGs get `decode_image`'s path for them alone (a PNG folder's pipeline built and started 4x
    faster); turned or unreadable JPEGs go through `decode_image`. The groups are merged back in the original
    order; shuffled, each group's files are shuffled and the groups interleaved at random, which is a uniform
    shuffle of all files, done on the file names before decoding (no buffer of decoded images to fill before the
    first one comes out).
    """
    keys = [file_decode_key(path, size, dct_scaling) for path in paths]
    groups = sorted(set(keys), key=repr)
    datasets = []
    for i, key in enumerate(groups):
        pick = np.array([k == key for k in keys])
        decode = group_decoder(key, size, dtype, dct_scaling)
        ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=object)[pick], label_array(labels)[pick]))
        if shuffle_seed is not None:
            ds = ds.shuffle(int(pick.sum()), seed=shuffle_seed + i, reshuffle_each_iteration=True)
        ds = ds.map(
            lambda path, label, decode=decode: (decode(tf.io.read_file(path)), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        datasets.append(ds.ignore_errors(log_warning=True))  # before merging: a dropped file keeps labels paired
    if len(datasets) == 1:
        return datasets[0]
    order = tf.data.Dataset.from_tensor_slices(np.array([groups.index(k) for k in keys], np.int64))
    if shuffle_seed is not None:
        order = order.shuffle(len(keys), seed=shuffle_seed, reshuffle_each_iteration=True)
    return tf.data.Dataset.choose_from_datasets(datasets, order, stop_on_empty_dataset=False)


def label_array(labels):
    """Labels as a pipeline carries them: int32 ids, or float32 0/1 rows for several labels per image."""
    labels = np.asarray(labels)
    return labels.astype(np.float32 if labels.ndim == 2 else np.int32)
