"""Arrays as a source: `(x, y)` NumPy arrays and the offline sets built on them (scikit-learn's digits,
Fashion-MNIST from a local copy or Keras's download)."""

from __future__ import annotations

import gzip
import logging
import os

import numpy as np
import tensorflow as tf

from keras_transfer.data.pipeline import paired, resize
from keras_transfer.data.records import Records

logger = logging.getLogger(__name__)


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


def array_records(name, splits, class_names):
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
        return paired(tf.data.Dataset.from_tensor_slices(arrays[split][0][idx]), resize, may_fail=False)

    labels = {s: y for s, (_, y) in arrays.items()}
    return Records(
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


def digits_arrays():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target


def fashion_mnist_arrays(folders=FASHION_MNIST_DIRS):
    """Fashion-MNIST's official 60,000 training and 10,000 test images, from a local copy or Keras's download:
    `{"train": (x, y), "test": (x, y)}`, uint8 `(n, 28, 28)` images and integer labels. `folders`: where the
    four IDX files are looked for, in order, before the download."""
    for folder in folders:
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
            f"{', '.join(folders)} (Debian's package: apt-get install dataset-fashion-mnist; Keras's cache), and "
            "keras.datasets.fashion_mnist.load_data() (needs internet). Install the Debian package or copy the four "
            "*-ubyte.gz files into one of those folders."
        ) from e
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


def _read_idx(path):
    """Reads an IDX file (the MNIST format): big-endian magic, dimensions, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
