"""tf.data input pipelines: image folders, tables (CSV files, DataFrames), TFDS names, NumPy arrays and the offline
datasets.

Every source becomes the same thing: labels in memory (one integer per image, or a 0/1 row per image for several
labels per image), images read lazily, split stratified (iteratively, for several labels) and deterministically for
a seed, then one pipeline (parallel decode + resize, cache, shuffle, batch, augment,
prefetch; uncached, image files are shuffled by name before decoding, so no buffer of decoded images has to
fill before the first batch). Images come out as float32 RGB in 0-255 at `image_size`; the model does its own
preprocessing.
Bad files are found before training by their bytes, reported with path and reason, and left out.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import threading

import numpy as np
import tensorflow as tf

from keras_transfer.distribute import worker_rank
from keras_transfer.images import (
    decode_files,
    decode_image,
    decode_key,
    find_images,
    image_problem,
    jpeg_header,
    keyed_decoder,
    label_array,
)
from keras_transfer.images import image_size as image_size_rule

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
SPLITS = ("train", "validation", "test")
# Folder names accepted for each split in the root/train, root/validation, root/test layout.
SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}
TFDS_DEADLINE_S = 30  # tfds itself retries a failing download for minutes
SHUFFLE_BUFFER = 10_000
# Tables: the path column looked for when none is named (the first present), the split column's values, and the
# options that only a table source takes (`load_dataset`'s table arguments, in order).
PATH_COLUMNS = ("path", "filename", "file", "image")
SPLIT_VALUES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
}
TABLE_OPTIONS = ("root", "path_column", "label_column", "label_columns", "label_delimiter", "split_column")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Where Fashion-MNIST's IDX files are looked for, in order: Debian's dataset-fashion-mnist, Keras's cache.
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "~/.keras/datasets/fashion-mnist")


@dataclasses.dataclass
class DatasetInfo:
    """What `load_dataset` found.

    Attributes:
        source: the source as given (a path, `"tfds:NAME"`, `"digits"`, `"fashion_mnist"` or `"arrays"`).
        class_names: names of the classes, in label order (label i is `class_names[i]`).
        label_map: original label (folder name, table label, or original integer id) -> label id used here.
        counts: split -> class name -> number of images (with that label, for several labels per image).
        skipped: `(path, reason)` for every file, folder or table row left out (a row's reason starts with
            "row N:", N its line in the CSV file or its DataFrame index).
        image_size: `(height, width)` of the images the datasets yield.
        multi_label: True when an image may carry several labels (batches then carry float32 0/1 rows).
        sizes: split -> number of images.
    """

    source: str
    class_names: list
    label_map: dict
    counts: dict
    skipped: list
    image_size: tuple
    multi_label: bool = False
    sizes: dict = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self):
        return len(self.class_names)

    def __str__(self):
        sizes = ", ".join(f"{split} {n}" for split, n in self.sizes.items() if n)
        kind = f"{self.num_classes} classes"
        if self.multi_label:
            per_image = sum(sum(c.values()) for c in self.counts.values()) / max(sum(self.sizes.values()), 1)
            kind = f"multi-label: {self.num_classes} labels, {per_image:.1f} per image"
        text = f"{self.source}: {kind}, {sizes} images at {self.image_size[0]}x{self.image_size[1]}"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped:" + "".join(f"\n  {readable(p)}: {r}" for p, r in self.skipped)
        return text


def load_dataset(
    source,
    *,
    image_size=(224, 224),
    batch_size=32,
    validation_split=0.2,
    test_split=0.0,
    seed=0,
    cache=True,
    classes=None,
    labels_per_class=None,
    test_per_class=None,
    deterministic=False,
    data_dir=None,
    root=None,
    path_column=None,
    label_column="label",
    label_columns=None,
    label_delimiter=None,
    split_column=None,
    data_service=None,
):
    """Loads an image classification dataset as batched `tf.data` pipelines.

    Args:
        source: a folder of class subfolders (or with `train/`, `validation/`, `test/` inside), a CSV file or a
            pandas DataFrame of image paths and labels (see `root` and after), `"tfds:NAME"`, `"digits"`
            (scikit-learn's 8x8 digits), `"fashion_mnist"`, or a tuple of NumPy arrays `(x, y)` with `x` of shape
            `(n, height, width[, channels])` in 0-255 and `y` integer labels or an `(n, classes)` 0/1 matrix
            (several labels per image).
        image_size: `(height, width)` or an int; images are resized (bilinear, as the model does) to it.
        batch_size: images per batch.
        validation_split: fraction of the training images held out for validation when the source has no
            validation split of its own.
        test_split: the same for a test split.
        seed: fixes the splits and the shuffling. (Augmentation lives in the model: `build_model(augment=True)`.)
        cache: True caches decoded, resized images in memory (skipped with a warning when they would not fit
            in half the available memory), a path prefix caches them on disk, False does not cache.
        classes: a subset of classes, as original names or ids (e.g. `range(5, 10)`); they are relabelled
            0..k-1 in the order of their original ids, and their names are kept.
        labels_per_class: keep at most this many training images per class (few-shot runs). With several labels
            per image: at least this many per label where it has them, the rarest label drawn first (labels that
            come with others then have more).
        test_per_class: keep at most this many test images per class: a stratified sample, drawn with `seed`, for a
            quicker evaluation (the standard error of an accuracy grows as 1/sqrt(test images)).
        deterministic: keep a reproducible element order in the training split too (slower parallel decoding).
            Validation and test splits always keep their order, so `model.predict(test)` lines up with the labels
            of another pass over `test`.
        data_dir: the TFDS data directory for `"tfds:NAME"`.
        root: a table's relative paths are resolved against it (default: the CSV file's folder, or the current
            folder for a DataFrame).
        path_column: a table's column of image paths (default: the first of `path`, `filename`, `file`, `image`).
        label_column: a table's column of labels: class names (sorted into ids, as folders are) or integers.
        label_columns: instead, one 0/1 column per class (several labels per image), named in class order.
        label_delimiter: splits each label cell into several labels (e.g. `" "`, `","`, `"|"`).
        split_column: a table's column of predefined splits: `train`, `validation` (`val`, `valid`) or `test`;
            the splits it lacks are drawn from its training rows.
        data_service: the address of a tf.data service dispatcher (`"grpc://host:port"`; `keras-transfer
            data-service` starts one), for a source of TFRecord shards (`write_shards`): the training split's
            shards are divided between its workers, which read and decode them, each image once per epoch
            (`distributed_epoch`), and batched here; not cached (the workers decode every epoch). None: decoded
            in this process.

    A table's rows that cannot be used (file missing, not an image or damaged, empty label, a path listed twice)
    are left out and listed in `info.skipped`. Several labels per image split iteratively (Sechidis et al. 2011),
    so that every label keeps its share in every split where it has enough images.

    Returns:
        `(train, validation, test, info)`: datasets of `(images, labels)` batches, float32 `(batch, height,
        width, 3)` in 0-255 and int32 `(batch,)` (float32 `(batch, classes)` 0/1 for several labels per image); a
        split with no images is None. `info` is a `DatasetInfo`.

    Raises:
        ValueError: for an unknown source, a folder with no images or one class only, bad arrays, a table with a
            missing column or bad cells (naming the row, the column and the value), unknown classes or bad
            fractions.
        OSError: when a TFDS dataset or Fashion-MNIST is not on this machine and cannot be downloaded.

    Example:
    >>> train, val, test, info = load_dataset("digits", image_size=32, batch_size=8, test_split=0.1)
    >>> info.num_classes, sum(info.counts["test"].values())
    (10, 179)
    """
    size = _check_arguments(image_size, batch_size, validation_split, test_split, labels_per_class, test_per_class)
    service = data_service and check_data_service(data_service)
    table = dict(zip(TABLE_OPTIONS, (root, path_column, label_column, label_columns, label_delimiter, split_column)))
    records = _records(source, data_dir, table)
    _check_served(service, records)
    keep_ids, class_names = _select_classes(records.class_names, classes)
    selected = _selected_labels(records, keep_ids)
    indices = _split_indices(selected, validation_split, test_split, (labels_per_class, test_per_class), seed)
    info = DatasetInfo(
        source=records.name,
        class_names=list(class_names),
        label_map={records.original_ids[i]: k for k, i in enumerate(keep_ids)},
        counts={},
        skipped=list(records.skipped),
        image_size=size,
        multi_label=records.multi_label,
    )
    datasets = {}
    for split in SPLITS:
        origin = split if split in records.labels else "train"
        labels = selected[origin][indices[split]]
        info.counts[split] = {name: int(np.sum(_has_label(labels, i))) for i, name in enumerate(class_names)}
        info.sizes[split] = len(labels)
        datasets[split] = (
            _pipeline(
                (records.worker_images if split == "train" and records.worker_images else records.images)(
                    origin, indices[split]
                ),
                labels,
                size=size,
                batch_size=batch_size,
                training=split == "train",
                cache=_cache_choice(cache, service and split == "train", len(labels), size, records.dtype),
                cache_name=split,
                service=service if split == "train" else None,
                seed=seed,
                deterministic=deterministic,
            )
            if len(labels)
            else None
        )
    if not info.sizes["train"]:
        raise ValueError(f"No training images left in {records.name!r} after the class selection and splits.")
    _warn_missing_classes(info.counts)
    _warn_imbalance(info.counts["train"])
    logger.debug("%s", info)
    return datasets["train"], datasets["validation"], datasets["test"], info


def _check_served(service, records):
    if service and records.worker_images is None:
        raise ValueError(
            "data_service reads TFRecord shards: write the source once with write_shards (or `keras-transfer "
            "write-shards`) and pass that folder. Other pipelines draw images and labels from two inputs, which the "
            f"service would divide between its workers apart. Received: source={records.name!r}"
        )


def _has_label(labels, i):
    """Which images carry label `i`: integer labels (one per image) or 0/1 rows (several)."""
    return labels == i if labels.ndim == 1 else labels[:, i] > 0


def _selected_labels(records, keep_ids):
    """split -> the records' labels in the ids of the kept classes: integers (-1 for a class left out), or the
    kept classes' 0/1 columns."""
    if records.multi_label:
        return {split: labels[:, keep_ids] for split, labels in records.labels.items()}
    relabel = np.full(len(records.class_names), -1, dtype=np.int64)
    relabel[keep_ids] = np.arange(len(keep_ids))
    return {split: relabel[labels] for split, labels in records.labels.items()}


def _warn_imbalance(counts, ratio=10):
    """Warns when the largest training class has at least `ratio` times the images of the smallest."""
    present = {name: n for name, n in counts.items() if n}
    if len(present) < 2:
        return
    largest, smallest = max(present, key=present.get), min(present, key=present.get)
    if present[largest] >= ratio * present[smallest]:
        logger.warning(
            "The training classes are imbalanced: %r has %d images, %r %d (%.0fx). Consider "
            "fine_tune(..., class_weight='balanced') (CLI: --class-weight balanced).",
            largest,
            present[largest],
            smallest,
            present[smallest],
            present[largest] / present[smallest],
        )


def _warn_missing_classes(counts):
    """Warns, per class, about a validation or test split that has images but none of the class (too few images
    to stratify: a class of one image lands in training only), naming the class and its counts; and about a
    label without training images (several labels per image: iterative stratification may place all of a rare
    label's images elsewhere)."""
    for name, n in counts["train"].items():
        total = sum(counts[s].get(name, 0) for s in counts)
        if n == 0 and total:
            logger.warning("Label %r has %d image%s, none in the training split.", name, total, "s"[: total != 1])
    for split in ("validation", "test"):
        if not sum(counts[split].values()):
            continue
        for name, n in counts[split].items():
            if n == 0:
                total = sum(counts[s].get(name, 0) for s in counts)
                logger.warning(
                    "Class %r has %d image%s (train %d): none in the %s split, so it is not %s there.",
                    name,
                    total,
                    "s" if total != 1 else "",
                    counts["train"].get(name, 0),
                    split,
                    "validated" if split == "validation" else "tested",
                )


def _check_arguments(image_size, batch_size, validation_split, test_split, labels_per_class, test_per_class):
    """The image size as `(height, width)`, after checking every numeric argument of `load_dataset`."""
    size = image_size_rule(image_size)
    for name, value in (("validation_split", validation_split), ("test_split", test_split)):
        if not isinstance(value, (int, float, np.number)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1). Received: {name}={value!r}")
    if validation_split + test_split >= 1.0:
        raise ValueError(
            "validation_split + test_split must leave images for training. "
            f"Received: validation_split={validation_split!r}, test_split={test_split!r}"
        )
    for name, value in (
        ("batch_size", batch_size),
        ("labels_per_class", labels_per_class),
        ("test_per_class", test_per_class),
    ):
        if (value is not None or name == "batch_size") and (not _is_int(value) or value < 1):
            raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return size


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _split_indices(selected, validation_split, test_split, per_class, seed):
    """split -> positions into the source's own split (`train` when the source has none), for the kept classes
    (`selected`: split -> labels, from `_selected_labels`): predefined splits as they are, the missing ones
    stratified out of the training images; then at most `per_class = (train, test)` images per class in those
    splits (None: all)."""
    rng = np.random.default_rng(seed)
    kept = lambda labels: np.ones(len(labels), bool) if labels.ndim == 2 else labels >= 0
    indices = {split: rng.permutation(np.flatnonzero(kept(selected[split]))) for split in SPLITS if split in selected}
    train_positions = indices["train"]
    split_rows = _stratified_split if selected["train"].ndim == 1 else _iterative_split
    derived = split_rows(
        selected["train"][train_positions],
        validation_split,
        test_split,
        rng,
        need_validation="validation" not in indices,
        need_test="test" not in indices,
    )
    indices["train"] = train_positions[derived["train"]]
    for split in ("validation", "test"):
        indices.setdefault(split, train_positions[derived[split]])
    for split, limit in zip(("train", "test"), per_class):
        if limit is not None:
            labels = selected[split if split in selected else "train"][indices[split]]
            limit_rows = _limit_per_class if labels.ndim == 1 else _limit_per_label
            indices[split] = limit_rows(indices[split], labels, limit)
    return indices


# --- sources -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Records:
    """A source before splitting: labels per predefined split and a way to get the images of some indices."""

    name: str
    class_names: list  # original class names, index = original label id
    original_ids: list  # what label_map reports for each original class (folder name or integer id)
    labels: dict  # predefined split -> int array of original label ids
    # (split, indices) -> ((labels, size, shuffle_seed, dtype) -> dataset of (image at size, in dtype where the
    # source can, else uint8 or float32; label), files that fail to decode dropped, reshuffled every pass for a
    # seed (None: in order))
    images: object
    dtype: object = np.uint8
    skipped: list = dataclasses.field(default_factory=list)
    multi_label: bool = False  # labels are (n, classes) 0/1 arrays
    files: dict = None  # split -> the image files (bytes paths), for sources of files (what `write_shards` copies)
    size: tuple = None  # (height, width) of every image, where the source has one size (arrays)
    # (split, indices) -> `images` of this worker's part only, for the training split of a source that divides
    # itself between workers (shards); None: every worker reads all
    worker_images: object = None


def _records(source, data_dir, table):
    given = [name for name in TABLE_OPTIONS if table[name] != (None if name != "label_column" else "label")]
    is_table = _is_dataframe(source) or (isinstance(source, (str, os.PathLike)) and os.path.isfile(source))
    if given and not is_table:
        raise ValueError(
            f"{', '.join(given)} only apply to a table source (a CSV file or a DataFrame). Received: source={source!r}"
        )
    if is_table:
        return _table_records(source, table)
    if isinstance(source, tuple) and len(source) == 2:
        x, y = source
        return _array_records("arrays", {"train": (x, y)}, None)
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        if source == "digits":
            return _array_records("digits", {"train": _digits()}, [str(i) for i in range(10)])
        if source == "fashion_mnist":
            return _array_records("fashion_mnist", fashion_mnist_arrays(), list(FASHION_MNIST_CLASSES))
        if source.startswith("tfds:"):
            return _tfds_records(source[len("tfds:") :], data_dir)
        if _is_shards(source):
            return _shard_records(source)
        if _has_shards_without_manifest(source):
            raise ValueError(
                f"{source!r} holds TFRecord shards but no {MANIFEST}: a write_shards call that did not finish (the "
                f"same call again completes it) or shards from elsewhere. Received: source={source!r}"
            )
        if os.path.isdir(source):
            return _folder_records(source)
        if not os.path.exists(source):
            raise ValueError(
                f"Dataset source {source!r} is not a folder or a file, and not one of 'tfds:NAME', 'digits', "
                f"'fashion_mnist' or an (x, y) tuple of arrays. Received: source={source!r}"
            )
    raise ValueError(
        "source must be a folder of class subfolders, a CSV file or DataFrame, 'tfds:NAME', 'digits', "
        f"'fashion_mnist' or an (x, y) tuple of arrays. Received: source={source!r}"
    )


def _array_records(name, splits, class_names):
    arrays = {split: _check_arrays(x, y) for split, (x, y) in splits.items()}
    multi_label = next(iter(arrays.values()))[1].ndim == 2
    if multi_label:
        class_names = [str(i) for i in range(next(iter(arrays.values()))[1].shape[1])]
    if class_names is None:
        ids = sorted(set(np.concatenate([y for _, y in arrays.values()]).tolist()))
        if ids and (ids[0] < 0):
            raise ValueError(f"Labels must be integers >= 0. Received: a label {ids[0]}")
        class_names = [str(i) for i in range(ids[-1] + 1)] if ids else []
        if len(ids) < len(class_names):
            logger.warning(
                "The labels are not 0..%d: %d distinct values between 0 and %d, so %d of the %d classes "
                "have no images. Relabel them 0..%d (or pass classes=...).",
                len(ids) - 1,
                len(ids),
                ids[-1],
                len(class_names) - len(ids),
                len(class_names),
                len(ids) - 1,
            )
    dtype = next(iter(arrays.values()))[0].dtype

    def images(split, idx):
        # Arrays cannot fail to load: no error filter, so the datasets keep a known size (Keras warns "Your input
        # ran out of data" in `evaluate` and `predict` on a dataset of unknown size).
        return _paired(tf.data.Dataset.from_tensor_slices(arrays[split][0][idx]), _resize, may_fail=False)

    labels = {s: y for s, (_, y) in arrays.items()}
    return _Records(
        name,
        class_names,
        list(range(len(class_names))),
        labels,
        images,
        dtype=dtype,
        multi_label=multi_label,
        size=tuple(next(iter(arrays.values()))[0].shape[1:3]),
    )


def _check_arrays(x, y):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(
            "x must have shape (n, height, width) or (n, height, width, channels) with 1, 3 or 4 channels. "
            f"Received: x.shape={x.shape}"
        )
    multi = y.ndim == 2 and y.shape[1] >= 2 and len(y) == len(x) and np.isin(y, (0, 1)).all()
    if not multi and (y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(
            "y must be one integer label per image, or a 0/1 matrix of shape (images, classes) for several labels "
            f"per image. Received: y.shape={y.shape}, y.dtype={y.dtype}, x.shape={x.shape}"
        )
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        x = x[..., :3]
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if x.size and float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
            logger.warning(
                "x holds floats in [%.3g, %.3g], but every model here expects RGB values in 0-255 (it "
                "applies its backbone's own scaling): multiply by 255.",
                float(x.min()),
                float(x.max()),
            )
    return x, y.astype(np.uint8 if multi else np.int64)


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target


def fashion_mnist_arrays():
    """Fashion-MNIST's official 60,000 training and 10,000 test images, from a local copy or Keras's download:
    `{"train": (x, y), "test": (x, y)}`, uint8 `(n, 28, 28)` images and integer labels."""
    for folder in FASHION_MNIST_DIRS:
        folder = os.path.expanduser(folder)
        files = [
            os.path.join(folder, f"{p}-{k}-idx{3 if k == 'images' else 1}-ubyte.gz")
            for p in ("train", "t10k")
            for k in ("images", "labels")
        ]
        if all(os.path.isfile(f) for f in files):
            train_x, train_y, test_x, test_y = (_read_idx(f) for f in files)
            logger.debug("Fashion-MNIST from %s", folder)
            return {"train": (train_x, train_y), "test": (test_x, test_y)}
    try:
        import keras

        (train_x, train_y), (test_x, test_y) = keras.datasets.fashion_mnist.load_data()
    except Exception as e:
        raise OSError(
            f"Fashion-MNIST is not on this machine and could not be downloaded ({e}). Looked in: "
            f"{FASHION_MNIST_DIRS[0]} (Debian package: apt-get install dataset-fashion-mnist), "
            f"{FASHION_MNIST_DIRS[1]} (Keras's cache), and keras.datasets.fashion_mnist.load_data() (needs "
            "internet). Install the Debian package or copy the four *-ubyte.gz files into one of those folders."
        ) from e
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


def _read_idx(path):
    """Reads an IDX file (the MNIST format): big-endian magic, dimensions, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _folder_records(root):
    layout = {}
    for split, names in SPLIT_FOLDERS.items():
        found = next((os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))), None)
        if found:
            layout[split] = found
    if "train" not in layout:
        layout = {"train": root}
    skipped = []
    scans = {split: _scan_classes(folder, skipped) for split, folder in layout.items()}
    class_names = sorted(name for name, files in scans["train"].items() if files)
    if len(class_names) < 2:
        raise ValueError(
            f"Image folder {layout['train']!r} needs at least two class subfolders with images; found "
            f"{len(class_names)} ({', '.join(class_names) or 'none'}). Expected root/<class>/<image> or "
            f"root/train/<class>/<image>. Received: source={root!r}"
        )
    for split, scan in scans.items():
        extra = sorted(name for name, files in scan.items() if files and name not in class_names)
        if extra:
            raise ValueError(
                f"The {split} folder {layout[split]!r} has classes the training folder lacks: {', '.join(extra)}. "
                f"Training classes: {', '.join(class_names)}."
            )
    ids = {name: i for i, name in enumerate(class_names)}
    paths = {
        split: np.array([os.fsencode(p) for name in class_names for p in scan.get(name, [])], dtype=object)
        for split, scan in scans.items()
    }
    labels = {
        split: np.array([ids[name] for name in class_names for _ in scan.get(name, [])], dtype=np.int64)
        for split, scan in scans.items()
    }

    def images(split, idx):
        files = paths[split][idx]  # as bytes: a file name the OS allows need not be UTF-8; tf.string holds any
        return lambda labels, size, shuffle_seed, dtype: decode_files(files, labels, size, shuffle_seed, dtype)

    return _Records(root, class_names, class_names, labels, images, skipped=skipped, files=paths)


def _scan_classes(folder, skipped):
    """class name -> sorted readable image paths (subfolders included, hidden files ignored)."""
    classes = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        files, bad = find_images(entry.path)
        skipped.extend(bad)
        if not files:
            skipped.append((entry.path, "empty class folder: no readable images"))
            logger.warning("Class folder %s has no readable images; it is left out.", readable(entry.path))
        classes[readable(entry.name)] = files
    return classes


def readable(name):
    """A file or folder name as text: undecodable bytes (a name that is not UTF-8) shown as `\\xNN` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


# --- tables ----------------------------------------------------------------------------------------------------


def _is_dataframe(source):
    return type(source).__name__ == "DataFrame" and hasattr(source, "columns") and hasattr(source, "to_dict")


def _table_records(source, table):
    """A CSV file or DataFrame of image paths and labels (`load_dataset`'s table arguments) as records: every row
    checked, the unusable ones in `skipped` with their row and reason."""
    delimiter = table["label_delimiter"]
    if delimiter is not None and (not isinstance(delimiter, str) or not delimiter):
        raise ValueError(f"label_delimiter must be a non-empty string, e.g. ' ' or '|'. Received: {delimiter!r}")
    if table["label_delimiter"] is not None and table["label_columns"] is not None:
        raise ValueError(
            "Pass label_delimiter (one label column) or label_columns (one 0/1 column per label), not both."
        )
    name, rows, columns, root = _read_table(source, table["root"])
    path_column = _table_column(table["path_column"], columns, "path_column", PATH_COLUMNS)
    if table["label_columns"] is not None:
        label_columns = [_table_column(c, columns, "label_columns") for c in table["label_columns"]]
        if len(label_columns) < 2:
            raise ValueError(f"label_columns must name at least two columns. Received: label_columns={label_columns!r}")
        class_names, original_ids = list(label_columns), list(label_columns)
        labels = [(row, _zero_one_row(row, cells, label_columns)) for row, cells in rows]
    else:
        column = _table_column(table["label_column"], columns, "label_column")
        cells = [(row, _label_set(cells[column], table["label_delimiter"])) for row, cells in rows]
        _check_delimiter(table["label_delimiter"], rows, column)
        class_names, original_ids = _label_names([names for _, names in cells], column)
        labels = [(row, sorted(class_names.index(n) for n in names) if names else None) for row, names in cells]
    multi = table["label_columns"] is not None or table["label_delimiter"] is not None
    split_column = table["split_column"] and _table_column(table["split_column"], columns, "split_column")
    usable, skipped = _usable_rows(rows, labels, path_column, root)
    splits = {}
    for i, path, ids in usable:
        split = _split_value(*rows[i], split_column) if split_column else "train"
        splits.setdefault(split, []).append((path, ids))
    if "train" not in splits:
        raise ValueError(f"The table {name!r} has no usable training rows ({len(skipped)} rows skipped).")

    def as_labels(entries):
        if not multi:
            return np.array([ids[0] for _, ids in entries], dtype=np.int64)
        matrix = np.zeros((len(entries), len(class_names)), np.uint8)
        for i, (_, ids) in enumerate(entries):
            matrix[i, ids] = 1
        return matrix

    paths = {split: np.array([os.fsencode(p) for p, _ in entries], dtype=object) for split, entries in splits.items()}

    def images(split, idx):
        files = paths[split][idx]
        return lambda labels, size, shuffle_seed, dtype: decode_files(files, labels, size, shuffle_seed, dtype)

    labels = {split: as_labels(entries) for split, entries in splits.items()}
    return _Records(name, class_names, original_ids, labels, images, skipped=skipped, multi_label=multi, files=paths)


def _read_table(source, root):
    """`(name, rows, columns, root)`: rows are `(row number, {column: cell text})`, numbered by CSV line (the
    header is line 1) or DataFrame index; `root` resolved."""
    if _is_dataframe(source):
        columns = [str(c) for c in source.columns]
        records = source.to_dict("records")
        rows = [(index, {str(k): _cell_text(v) for k, v in r.items()}) for index, r in zip(source.index, records)]
        name, folder = "dataframe", os.getcwd()
    else:
        name = os.fspath(source)
        try:
            with open(name, "rb") as f:
                text = f.read().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            raise ValueError(
                f"The table {name!r} is not UTF-8 text: byte {e.object[e.start : e.start + 1]!r} on line {line}. "
                "Save it as UTF-8 (e.g. pandas: df.to_csv(path, index=False, encoding='utf-8'))."
            ) from None
        reader = csv.reader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in next(reader, [])]
        rows = []
        for cells in reader:
            if any(c.strip() for c in cells):  # blank lines are not rows
                rows.append((reader.line_num, dict(zip(columns, (c.strip() for c in cells)))))
        folder = os.path.dirname(os.path.abspath(name))
    if not rows:
        raise ValueError(f"The table {name!r} has no rows (columns: {', '.join(columns) or 'none'}).")
    return name, rows, columns, os.fspath(root) if root is not None else folder


def _cell_text(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _table_column(name, columns, argument, defaults=None):
    if name is None and defaults:
        found = next((c for c in defaults if c in columns), None)
        if found is None:
            raise ValueError(
                f"No image path column: none of {', '.join(defaults)} is among the table's columns "
                f"({', '.join(columns)}). Pass {argument}=... naming it."
            )
        return found
    if name not in columns:
        raise ValueError(
            f"The table has no column {name!r}; its columns: {', '.join(columns)}. Received: {argument}={name!r}"
        )
    return name


def _label_set(cell, delimiter):
    if delimiter is None:
        return [cell] if cell else []
    return sorted({part.strip() for part in cell.split(delimiter) if part.strip()})


def _check_delimiter(delimiter, rows, column):
    if delimiter is None or any(delimiter in cells[column] for _, cells in rows):
        return
    seen = next((c for c in (" ", ",", "|", ";") if any(c in cells[column] for _, cells in rows)), None)
    hint = f"; the cells hold {seen!r}: pass label_delimiter={seen!r}" if seen else ""
    raise ValueError(
        f"label_delimiter={delimiter!r} splits no cell of column {column!r} (e.g. row {rows[0][0]}: "
        f"{rows[0][1][column]!r}), so every image would have one label{hint}. For one label per image, pass no "
        "label_delimiter."
    )


def _label_names(name_sets, column):
    """Class names in label order and their original ids: integers sorted by value (kept as ints), or names
    sorted (as folders are); a column holding both is refused."""
    names = sorted({n for names in name_sets for n in names})
    numbers = [n for n in names if re.fullmatch(r"-?\d+", n)]
    if numbers and len(numbers) < len(names):
        text = next(n for n in names if n not in numbers)
        raise ValueError(
            f"Column {column!r} holds both numbers and names (e.g. {numbers[0]!r} and {text!r}): labels must be all "
            "class names or all integer ids."
        )
    if numbers:
        names = sorted(names, key=int)
        return names, [int(n) for n in names]
    return names, list(names)


def _zero_one_row(row, cells, columns):
    ids = []
    for i, column in enumerate(columns):
        value = cells[column].lower()
        if value not in ("0", "1", "true", "false", "0.0", "1.0"):
            raise ValueError(
                f"Row {row}, column {column!r}: {cells[column]!r} is not 0 or 1 (label_columns hold one 0/1 "
                "column per class)."
            )
        if value in ("1", "true", "1.0"):
            ids.append(i)
    return ids


def _usable_rows(rows, labels, path_column, root):
    """`(row index, path, label ids)` for every usable row, and `(path, "row N: reason")` for the others: no path,
    no label (one label per image), file missing or not a whole image, a path listed twice."""
    usable, skipped, first = [], [], {}
    for i, ((row, cells), (_, ids)) in enumerate(zip(rows, labels)):
        given = cells.get(path_column, "")
        path = os.path.normpath(os.path.join(root, os.path.expanduser(given))) if given else ""
        reason = None
        if not given:
            reason = "empty path"
        elif ids is None:
            reason = "empty label"
        elif path in first:
            other_row, other_ids = first[path]
            same = "the same label" if other_ids == ids else "another label"
            reason = f"duplicate of row {other_row} ({same})"
        elif not os.path.isfile(path):
            reason = "file missing" if not os.path.exists(path) else "not a file"
        else:
            reason = image_problem(path)
        if reason:
            skipped.append((path or given, f"row {row}: {reason}"))
            continue
        first[path] = (row, ids)
        usable.append((i, path, ids))
    if skipped:
        logger.warning(
            "%d table row%s left out (see info.skipped), e.g. %s", len(skipped), "s"[: len(skipped) != 1], skipped[0][1]
        )
    return usable, skipped


def _split_value(row, cells, column):
    value = cells.get(column, "").lower()
    if value not in SPLIT_VALUES:
        raise ValueError(
            f"Row {row}, column {column!r}: split {cells.get(column, '')!r} is not one of train, validation (val, "
            "valid) or test."
        )
    return SPLIT_VALUES[value]


def _tfds_records(name, data_dir):
    import tensorflow_datasets as tfds  # imported here: it is slow to import and only this source needs it

    builder = tfds.builder(name, data_dir=data_dir)
    _prepare_with_deadline(builder, name, data_dir)
    class_names = list(builder.info.features[builder.info.supervised_keys[1]].names)
    available = set(builder.info.splits.keys()) or {"train"}  # mocked datasets list no splits
    splits = {"train": "train"}
    for split, names in SPLIT_FOLDERS.items():
        found = next((n for n in names if n in available), None)
        if found and split != "train":
            splits[split] = found
    image_key, label_key = builder.info.supervised_keys
    gray = builder.info.features[image_key].shape[-1] == 1

    def labels_of(split_name):
        # Labels only: the images are not decoded for this pass.
        ds = builder.as_dataset(split=split_name, decoders={image_key: tfds.decode.SkipDecoding()}, shuffle_files=False)
        return np.fromiter(ds.map(lambda example: example[label_key]).as_numpy_iterator(), dtype=np.int64)

    labels = {split: labels_of(split_name) for split, split_name in splits.items()}

    def images(split, idx):
        keep = np.zeros(len(labels[split]), dtype=bool)
        keep[idx] = True
        keep = tf.constant(keep)
        ds = builder.as_dataset(split=splits[split], as_supervised=True, shuffle_files=False)
        ds = ds.enumerate().filter(lambda i, example: tf.gather(keep, i)).map(lambda i, example: example[0])
        return _paired(ds, lambda image, size: _resize(tf.image.grayscale_to_rgb(image) if gray else image, size))

    return _Records(f"tfds:{name}", class_names, list(range(len(class_names))), labels, images)


def _prepare_with_deadline(builder, name, data_dir):
    """`download_and_prepare` that gives up after TFDS_DEADLINE_S with a message on preparing offline."""
    outcome = {}

    def run():
        try:
            builder.download_and_prepare()
        except BaseException as e:  # reported to the caller below
            outcome["error"] = e

    thread = threading.Thread(target=run, name=f"tfds-prepare-{name}", daemon=True)
    thread.start()
    thread.join(TFDS_DEADLINE_S)
    if thread.is_alive() or "error" in outcome:
        why = f"not prepared within {TFDS_DEADLINE_S} s" if thread.is_alive() else str(outcome["error"])
        where = data_dir or "~/tensorflow_datasets"
        raise OSError(
            f"TFDS dataset {name!r} is not prepared in {where} and could not be downloaded ({why}). "
            f"To use it offline: on a machine with internet run `tfds build {name} --data_dir DIR` (or "
            f"`tfds.load({name!r}, data_dir=DIR)`), copy DIR here and pass data_dir=DIR."
        ) from outcome.get("error")


# --- selection and splits ------------------------------------------------------------------------------------


def _select_classes(class_names, classes):
    """Original ids to keep (sorted) and their names; every class when `classes` is None."""
    if classes is None:
        return np.arange(len(class_names)), list(class_names)
    wanted = list(classes)
    ids = []
    for c in wanted:
        if isinstance(c, (int, np.integer)) and 0 <= c < len(class_names):
            ids.append(int(c))
        elif isinstance(c, str) and c in class_names:
            ids.append(class_names.index(c))
        else:
            raise ValueError(
                f"Unknown class {c!r}. Expected ids 0..{len(class_names) - 1} or names: {', '.join(class_names)}. "
                f"Received: classes={wanted!r}"
            )
    ids = sorted(set(ids))
    if len(ids) < 2:
        raise ValueError(f"classes must name at least two classes. Received: classes={wanted!r}")
    return np.array(ids), [class_names[i] for i in ids]


def _stratified_split(labels, validation_split, test_split, rng, *, need_validation, need_test):
    """Positions into `labels` for train/validation/test, the same fraction taken from every class."""
    out = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(idx) * test_split)) if need_test else 0
        n_val = int(round(len(idx) * validation_split)) if need_validation else 0
        n_test, n_val = min(n_test, len(idx) - 1), min(n_val, max(len(idx) - 1 - n_test, 0))
        out["test"].append(idx[:n_test])
        out["validation"].append(idx[n_test : n_test + n_val])
        out["train"].append(idx[n_test + n_val :])
    return {
        split: np.sort(np.concatenate(parts)) if parts else np.array([], dtype=np.int64) for split, parts in out.items()
    }


def _iterative_split(labels, validation_split, test_split, rng, *, need_validation, need_test):
    """Positions into `labels` (`(n, classes)` 0/1) for train/validation/test by iterative stratification
    (Sechidis et al. 2011): the images of the label with the fewest left are placed first, each into the split
    that most lacks that label (ties: the split that lacks most images, then at random), so that every label keeps
    about its share in every split; images without labels fill what each split lacks."""
    shares = np.array([0.0, validation_split * need_validation, test_split * need_test])
    shares[0] = 1.0 - shares.sum()
    closed = np.where(shares > 0, 0.0, -np.inf)[:, None]  # a split with no share gets no image
    want = shares[:, None] * labels.sum(axis=0)[None, :] + closed
    want_rows = shares * len(labels) + closed[:, 0]
    split_of = np.full(len(labels), -1)
    positive = labels > 0

    def place(row, lacks):
        best = np.flatnonzero(lacks == lacks.max())
        best = best[want_rows[best] == want_rows[best].max()]
        split = best[0] if len(best) == 1 else rng.choice(best)
        split_of[row] = split
        want[split] -= positive[row]
        want_rows[split] -= 1

    while True:
        left = positive[split_of < 0].sum(axis=0)
        if not left.any():
            break
        label = int(np.argmin(np.where(left > 0, left, np.inf)))
        for row in rng.permutation(np.flatnonzero((split_of < 0) & positive[:, label])):
            place(row, want[:, label])
    for row in rng.permutation(np.flatnonzero(split_of < 0)):
        place(row, want_rows)
    return {split: np.flatnonzero(split_of == j) for j, split in enumerate(SPLITS)}


def _limit_per_label(indices, labels, n):
    """The images of `indices` (in their order) that give each label `n` images where it has them: the rarest
    label first, then each next; labels that come with others may end with more."""
    chosen, have = np.zeros(len(indices), bool), np.zeros(labels.shape[1])
    for label in np.argsort(labels.sum(axis=0), kind="stable"):
        for row in np.flatnonzero((labels[:, label] > 0) & ~chosen):
            if have[label] >= n:
                break
            chosen[row] = True
            have += labels[row] > 0
    return indices[np.flatnonzero(chosen)]


def _limit_per_class(indices, labels, n):
    if not len(indices):
        return indices
    keep = np.concatenate([np.flatnonzero(labels == label)[:n] for label in np.unique(labels)])
    return indices[np.sort(keep)]


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


# --- the pipeline --------------------------------------------------------------------------------------------


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


def _resize(image, size):
    # Arrays and TFDS images: bilinear without antialiasing, as Keras resizes (and the model inside). Image files
    # go through images.decode_image, which decodes JPEGs at a reduced scale and resizes with antialiasing.
    resized = tf.image.resize(image, size, method="bilinear")
    if image.dtype == tf.uint8:  # cached as uint8: a quarter of the memory of float32
        return tf.saturate_cast(resized + 0.5, tf.uint8)  # round to nearest, clipped to 0..255
    return resized


def _paired(items, load, may_fail=True):
    """`images` for a dataset of items: each loaded at the size, beside its label (shuffled after loading);
    with `may_fail`, items that fail to load are dropped."""

    def pairs(labels, size, shuffle_seed, dtype):  # dtype: what the pipeline wants; arrays keep their own
        ds = tf.data.Dataset.zip(items, tf.data.Dataset.from_tensor_slices(label_array(labels)))
        ds = ds.map(lambda item, label: (load(item, size), label), num_parallel_calls=AUTOTUNE)
        ds = ds.ignore_errors(log_warning=True) if may_fail else ds
        return ds if shuffle_seed is None else _shuffle(ds, len(labels), shuffle_seed)

    return pairs


def _shuffle(ds, n, seed):
    return ds.shuffle(min(n, SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)


def _cache_choice(cache, served, n, size, dtype):
    """What `_pipeline` caches: nothing for a split the tf.data service decodes, else `cache` (True: in memory
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


def _pipeline(images, labels, *, size, batch_size, training, cache, cache_name, seed, deterministic, service=None):
    # `images` drops what fails to decode (never a crash mid-epoch); uncached, it shuffles (files before decoding)
    # and gives float32 (cached: uint8 where it can, a quarter of the memory; cast per batch).
    ds = images(labels, size, seed if training and not cache else None, tf.uint8 if cache or service else tf.float32)
    if cache:
        ds = ds.cache(f"{cache}_{cache_name}" if isinstance(cache, (str, os.PathLike)) else "")
        ds = _shuffle(ds, len(labels), seed) if training else ds
    if service:  # images (uint8 where the source allows) go over the wire one by one; batches are made here
        ds = ds.apply(tf.data.experimental.service.distribute("distributed_epoch", service))
    ds = ds.batch(batch_size)
    if ds.element_spec[0].dtype != tf.float32:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic) or not training  # evaluation order is the same on every pass
    return ds.with_options(options).prefetch(AUTOTUNE)


# --- TFRecord shards -----------------------------------------------------------------------------------------

SHARD_BYTES = 150 * 2**20  # about 150 MB per shard file, as TF Model Garden and big_vision write them
MANIFEST = "manifest.json"
SHARDS_VERSION = 1  # the manifest's format; a newer one is refused by name
SOURCE_OPTIONS = ("data_dir", *TABLE_OPTIONS)  # what `write_shards` passes on to read its source


def write_shards(source, output_dir, *, num_shards=None, image_size=None, **source_options):
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
            `"fashion_mnist"`, `(x, y)` arrays).
        output_dir: an empty (or not yet existing) folder, or one this same call was writing.
        num_shards: shard files per split (default: enough for about `SHARD_BYTES` each); several workers each
            read whole shards, so give at least as many as workers.
        image_size: `(height, width)` or an int to shrink the images to (bilinear, antialiased); None keeps files
            as they are (TFDS sources need it).
        **source_options: `data_dir` and the table options of `load_dataset` (`root`, `path_column`, ...).

    Returns:
        The manifest, as a dict.

    Raises:
        ValueError: for an unknown option, a bad `num_shards` or `image_size`, or an `output_dir` that holds other
            files or another set of shards.
    """
    unknown = sorted(set(source_options) - set(SOURCE_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown options {unknown} for write_shards. Expected some of: {', '.join(SOURCE_OPTIONS)}")
    if num_shards is not None and (not _is_int(num_shards) or num_shards < 1):
        raise ValueError(f"num_shards must be an integer >= 1 or None. Received: num_shards={num_shards!r}")
    size = None if image_size is None else image_size_rule(image_size)
    table = {name: source_options.get(name, "label" if name == "label_column" else None) for name in TABLE_OPTIONS}
    records = _records(source, source_options.get("data_dir"), table)
    if size is None and records.files is None and records.size is None:
        raise ValueError(f"{records.name!r} has images of several sizes and no files: pass image_size=... to write it")
    plan = _shard_plan(records, size, num_shards)
    output_dir = os.fspath(output_dir)
    _check_shards_folder(output_dir, plan["fingerprint"])
    shards = {split: _write_split(records, split, plan, output_dir) for split in records.labels}
    manifest = _manifest(records, plan, shards)
    _write_atomically(os.path.join(output_dir, MANIFEST), json.dumps(manifest, indent=1).encode())
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
        key = hashlib.sha256(f"{plan['fingerprint']} {chunk.tolist()}".encode()).hexdigest()
        done = _finished_shard(path, key)
        if done is None:
            done = _write_shard(records, split, chunk, plan["size"], path)
            _write_atomically(path + ".json", json.dumps({**done, "key": key}).encode())
        facts.append({"file": _shard_name(split, k, count), **{n: done[n] for n in ("bytes", "records", "sha256")}})
        facts[-1].update(missing=done["missing"], indices=sorted(int(i) for i in chunk), headers=done["headers"])
        logger.info("%s: shard %d of %d, %d images, %.1f MB", split, k + 1, count, done["records"], done["bytes"] / 1e6)
    for name in tf.io.gfile.listdir(os.path.join(output_dir, split)):  # what a killed call left half-written
        if ".tmp-" in name:
            tf.io.gfile.remove(os.path.join(output_dir, split, name))
    return facts


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
    tf.io.gfile.rename(temporary, path, overwrite=True)
    missing = [int(i) for i in chunk if int(i) not in written]
    facts = {"bytes": tf.io.gfile.stat(path).length, "records": len(written), "sha256": _sha256(path)}
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


def _sha256(path):
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path, data):
    temporary = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(temporary, path, overwrite=True)


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
            split: {str(n): int(np.sum(_has_label(labels, i))) for i, n in enumerate(records.class_names)}
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
        leftover = entry.rstrip("/") in SPLITS and all(n.startswith("shard-") for n in tf.io.gfile.listdir(inside))
        if not leftover:
            raise ValueError(
                f"{output_dir!r} holds {entry!r}: shards are written into an empty folder (or one a killed "
                f"write_shards call of the same source left). Received: output_dir={output_dir!r}"
            )


def _has_shards_without_manifest(folder):
    inside = [os.path.join(folder, split) for split in SPLITS if os.path.isdir(os.path.join(folder, split))]
    return any(n.startswith("shard-") and n.endswith(".tfrecord") for f in inside for n in os.listdir(f))


def _is_shards(source):
    return isinstance(source, (str, os.PathLike)) and tf.io.gfile.exists(os.path.join(os.fspath(source), MANIFEST))


def _shard_records(folder):
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

    return _Records(
        folder,
        names,
        [original for original, _ in manifest["label_map"]],
        labels,
        images,
        skipped=[tuple(entry) for entry in manifest["skipped"]],
        multi_label=multi,
        worker_images=lambda split, idx: images(split, idx, worker_rank()),
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
    _shard_records(folder)  # the manifest's version, stray files and sizes
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
            found = {"records": records, "sha256": _sha256(path)}
            wrong = [f"{k} {found[k]} (expected {shard[k]})" for k in found if found[k] != shard[k]]
            if wrong:
                raise ValueError(f"Shard {path!r} does not match {MANIFEST}: {', '.join(wrong)}. Write it again.")
    return manifest


def _shard_decoder(headers, positions, size, dtype):
    """(branch per record index, decode(blob, branch)): arrays' images resized as arrays are; files grouped by
    `decode_key` as `decode_files` groups them (`headers`: one per record index)."""
    if headers is None:
        branches = tf.zeros([len(positions)], tf.int32)
        return branches, lambda blob, branch: tf.cast(_resize(decode_image(blob), size), dtype)
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
            ds = _shuffle(ds, len(idx), shuffle_seed)
        return ds.map(
            lambda index, position, blob: (decode(blob, tf.gather(branches, index)), tf.gather(by_position, position)),
            num_parallel_calls=AUTOTUNE,
        )

    return pairs
