"""tf.data input pipelines: image folders, TFDS names, NumPy arrays and the offline datasets.

Every source becomes the same thing: integer labels in memory, images read lazily, split stratified and
deterministically for a seed, then one pipeline (parallel decode + resize, cache, shuffle, batch, augment,
prefetch; uncached, image files are shuffled by name before decoding, so no buffer of decoded images has to
fill before the first batch). Images come out as float32 RGB in 0-255 at `image_size`; the model does its own
preprocessing.
Bad files are found before training by their bytes, reported with path and reason, and left out.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import threading

import numpy as np
import tensorflow as tf

from keras_transfer.images import decode_files, find_images, image_problem  # noqa: F401  (image_problem: public here too)
from keras_transfer.images import image_size as image_size_rule

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
SPLITS = ("train", "validation", "test")
# Folder names accepted for each split in the root/train, root/validation, root/test layout.
SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}
TFDS_DEADLINE_S = 30  # tfds itself retries a failing download for minutes
SHUFFLE_BUFFER = 10_000

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
        label_map: original label (folder name, or original integer id) -> label id used here.
        counts: split -> class name -> number of images.
        skipped: `(path, reason)` for every file or folder left out.
        image_size: `(height, width)` of the images the datasets yield.
    """

    source: str
    class_names: list
    label_map: dict
    counts: dict
    skipped: list
    image_size: tuple

    @property
    def num_classes(self):
        return len(self.class_names)

    def __str__(self):
        sizes = ", ".join(f"{split} {sum(c.values())}" for split, c in self.counts.items() if sum(c.values()))
        text = f"{self.source}: {self.num_classes} classes, {sizes} images at {self.image_size[0]}x{self.image_size[1]}"
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
):
    """Loads an image classification dataset as batched `tf.data` pipelines.

    Args:
        source: a folder of class subfolders (or with `train/`, `validation/`, `test/` inside), `"tfds:NAME"`,
            `"digits"` (scikit-learn's 8x8 digits), `"fashion_mnist"`, or a tuple of NumPy arrays `(x, y)` with
            `x` of shape `(n, height, width[, channels])` in 0-255 and integer labels `y`.
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
        labels_per_class: keep at most this many training images per class (few-shot runs).
        test_per_class: keep at most this many test images per class: a stratified sample, drawn with `seed`, for a
            quicker evaluation (the standard error of an accuracy grows as 1/sqrt(test images)).
        deterministic: keep a reproducible element order in the training split too (slower parallel decoding).
            Validation and test splits always keep their order, so `model.predict(test)` lines up with the labels
            of another pass over `test`.
        data_dir: the TFDS data directory for `"tfds:NAME"`.

    Returns:
        `(train, validation, test, info)`: datasets of `(images, labels)` batches, float32 `(batch, height,
        width, 3)` in 0-255 and int32 `(batch,)`; a split with no images is None. `info` is a `DatasetInfo`.

    Raises:
        ValueError: for an unknown source, a folder with no images or one class only, bad arrays, unknown
            classes or bad fractions.
        OSError: when a TFDS dataset or Fashion-MNIST is not on this machine and cannot be downloaded.

    Example:
    >>> train, val, test, info = load_dataset("digits", image_size=32, batch_size=8, test_split=0.1)
    >>> info.num_classes, sum(info.counts["test"].values())
    (10, 179)
    """
    size = _check_arguments(image_size, batch_size, validation_split, test_split, labels_per_class, test_per_class)
    records = _records(source, data_dir)
    keep_ids, class_names = _select_classes(records.class_names, classes)
    relabel = np.full(len(records.class_names), -1, dtype=np.int64)
    relabel[keep_ids] = np.arange(len(keep_ids))
    indices = _split_indices(records, relabel, validation_split, test_split, (labels_per_class, test_per_class), seed)
    info = DatasetInfo(
        source=records.name,
        class_names=list(class_names),
        label_map={records.original_ids[i]: int(relabel[i]) for i in keep_ids},
        counts={},
        skipped=list(records.skipped),
        image_size=size,
    )
    datasets = {}
    for split in SPLITS:
        origin = split if split in records.labels else "train"
        labels = relabel[records.labels[origin][indices[split]]]
        info.counts[split] = {name: int(np.sum(labels == i)) for i, name in enumerate(class_names)}
        datasets[split] = (
            _pipeline(
                records.images(origin, indices[split]),
                labels,
                size=size,
                batch_size=batch_size,
                training=split == "train",
                cache=cache if cache is not True else _fits_in_memory(len(labels), size, records.dtype),
                cache_name=split,
                seed=seed,
                deterministic=deterministic,
            )
            if len(labels)
            else None
        )
    if not sum(info.counts["train"].values()):
        raise ValueError(f"No training images left in {records.name!r} after the class selection and splits.")
    _warn_missing_classes(info.counts)
    logger.debug("%s", info)
    return datasets["train"], datasets["validation"], datasets["test"], info


def _warn_missing_classes(counts):
    """Warns, per class, about a validation or test split that has images but none of the class (too few images
    to stratify: a class of one image lands in training only), naming the class and its counts."""
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


def _split_indices(records, relabel, validation_split, test_split, per_class, seed):
    """split -> positions into the records' own split (`train` when the source has none), for the kept classes:
    predefined splits as they are, the missing ones stratified out of the training images; then at most
    `per_class = (train, test)` images per class in those splits (None: all)."""
    rng = np.random.default_rng(seed)
    indices = {
        split: rng.permutation(np.flatnonzero(relabel[records.labels[split]] >= 0))
        for split in SPLITS
        if split in records.labels
    }
    train_positions = indices["train"]
    derived = _stratified_split(
        relabel[records.labels["train"][train_positions]],
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
            origin = split if split in records.labels else "train"
            labels = relabel[records.labels[origin][indices[split]]]
            indices[split] = _limit_per_class(indices[split], labels, limit)
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


def _records(source, data_dir):
    if isinstance(source, tuple) and len(source) == 2:
        x, y = source
        return _array_records("arrays", {"train": (x, y)}, None)
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        if source == "digits":
            return _array_records("digits", {"train": _digits()}, [str(i) for i in range(10)])
        if source == "fashion_mnist":
            return _array_records("fashion_mnist", _fashion_mnist(), list(FASHION_MNIST_CLASSES))
        if source.startswith("tfds:"):
            return _tfds_records(source[len("tfds:") :], data_dir)
        if os.path.isdir(source):
            return _folder_records(source)
        if not os.path.exists(source):
            raise ValueError(
                f"Dataset source {source!r} is not a folder, and not one of 'tfds:NAME', 'digits', "
                f"'fashion_mnist' or an (x, y) tuple of arrays. Received: source={source!r}"
            )
    raise ValueError(
        "source must be a folder of class subfolders, 'tfds:NAME', 'digits', 'fashion_mnist' or an (x, y) tuple "
        f"of arrays. Received: source={source!r}"
    )


def _array_records(name, splits, class_names):
    arrays = {split: _check_arrays(x, y) for split, (x, y) in splits.items()}
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

    return _Records(
        name, class_names, list(range(len(class_names))), {s: y for s, (_, y) in arrays.items()}, images, dtype=dtype
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
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"y must be one integer label per image. Received: y.shape={y.shape}, y.dtype={y.dtype}, x.shape={x.shape}"
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
    return x, y.astype(np.int64)


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target


def _fashion_mnist():
    """Fashion-MNIST's official 60,000 training and 10,000 test images, from a local copy or Keras's download."""
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
    paths = {split: [p for name in class_names for p in scan.get(name, [])] for split, scan in scans.items()}
    labels = {
        split: np.array([ids[name] for name in class_names for _ in scan.get(name, [])], dtype=np.int64)
        for split, scan in scans.items()
    }

    def images(split, idx):
        # As bytes: a file name the OS allows need not be UTF-8, and tf.string holds any bytes.
        files = np.array([os.fsencode(p) for p in paths[split]], dtype=object)[idx]
        return lambda labels, size, shuffle_seed, dtype: decode_files(files, labels, size, shuffle_seed, dtype)

    return _Records(root, class_names, class_names, labels, images, skipped=skipped)


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
        ds = tf.data.Dataset.zip(items, tf.data.Dataset.from_tensor_slices(labels.astype(np.int32)))
        ds = ds.map(lambda item, label: (load(item, size), label), num_parallel_calls=AUTOTUNE)
        ds = ds.ignore_errors(log_warning=True) if may_fail else ds
        return ds if shuffle_seed is None else _shuffle(ds, len(labels), shuffle_seed)

    return pairs


def _shuffle(ds, n, seed):
    return ds.shuffle(min(n, SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)


def _pipeline(images, labels, *, size, batch_size, training, cache, cache_name, seed, deterministic):
    # `images` drops what fails to decode (never a crash mid-epoch); uncached, it shuffles (files before decoding)
    # and gives float32 (cached: uint8 where it can, a quarter of the memory; cast per batch).
    ds = images(labels, size, seed if training and not cache else None, tf.uint8 if cache else tf.float32)
    if cache:
        ds = ds.cache(f"{cache}_{cache_name}" if isinstance(cache, (str, os.PathLike)) else "")
        ds = _shuffle(ds, len(labels), seed) if training else ds
    ds = ds.batch(batch_size)
    if ds.element_spec[0].dtype != tf.float32:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic) or not training  # evaluation order is the same on every pass
    return ds.with_options(options).prefetch(AUTOTUNE)
