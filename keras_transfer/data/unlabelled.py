"""Images without labels, beside a labelled source (`load_dataset(..., unlabelled=...)`): the training images that
`labels_per_class` left out (`"rest"`), a folder of images, or a table's rows without a label; and the training
split with some of them given pseudo-labels (`pseudo_labels=`), for semi-supervised training
(`keras_transfer.semi_supervised`)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from keras_transfer.data.duplicates import new_images
from keras_transfer.data.pipeline import decode_files
from keras_transfer.data.tables import is_dataframe, unlabelled_paths
from keras_transfer.images import find_images

REST = "rest"  # the training images `labels_per_class` left out, without their labels


@dataclasses.dataclass
class Unlabelled:
    """The unlabelled images: `images(idx)` as `Records.images` gives a split's, their true labels where the source
    has them (`"rest"`: for benchmarks, never trained on; -1 where unknown), their files (None for sources without
    files), the files left out and why."""

    images: object
    labels: np.ndarray
    files: np.ndarray | None
    skipped: list


def unlabelled_images(unlabelled, records, selected, indices):
    """The `Unlabelled` of `unlabelled` (`"rest"`, a folder, a CSV file or DataFrame) for `records`
    (`selected`: split -> labels in the kept classes' ids; `indices`: split -> positions, as `split_indices` drew
    them, `"rest"` the training positions `labels_per_class` left out).

    Raises:
        ValueError: for another value, `"rest"` without `labels_per_class` (nothing left out), a folder that is not
            one or holds no image, a source whose training split is read by several workers or a data service, or
            unlabelled images that are validation or test images (named).
    """
    if records.service or records.worker_images:
        raise ValueError(
            "Unlabelled images are read on one machine, from the source itself: not with shards read by several "
            f"workers or a tf.data service. Received: unlabelled={unlabelled!r}"
        )
    rest = indices["rest"]
    if isinstance(unlabelled, str) and unlabelled == REST:
        if not len(rest):
            raise ValueError(
                "unlabelled='rest' takes the training images that labels_per_class leaves out, and it left none out: "
                "give labels_per_class below the images per class. Received: unlabelled='rest'"
            )
        files = None if records.files is None else records.files["train"][rest]
        return Unlabelled(lambda idx: records.images("train", rest[idx]), selected["train"][rest], files, [])
    if is_dataframe(unlabelled) or (isinstance(unlabelled, (str, os.PathLike)) and os.path.isfile(unlabelled)):
        found, skipped = unlabelled_paths(unlabelled)
    elif isinstance(unlabelled, (str, os.PathLike)) and os.path.isdir(unlabelled):
        found, skipped = find_images(os.fspath(unlabelled))
    else:
        raise ValueError(
            "unlabelled must be 'rest' (with labels_per_class), a folder of images (subfolders included) or a "
            f"CSV file or DataFrame of image paths (rows without a label). Received: unlabelled={unlabelled!r}"
        )
    paths = np.array([os.fsencode(p) for p in found], dtype=object)
    origin = lambda split: split if split in records.labels else "train"
    labelled = (
        {s: records.files[origin(s)][indices[s]] for s in ("train", "validation", "test")} if records.files else {}
    )
    keep, duplicates = new_images(labelled, paths) if paths.size else (np.arange(0), [])
    paths = paths[keep]
    if not len(paths):
        raise ValueError(f"The unlabelled images {unlabelled!r} hold no readable image of their own.")

    def images(idx):
        chosen = paths[idx]
        return lambda labels, size, seed, dtype: decode_files(chosen, labels, size, seed, dtype)

    return Unlabelled(images, np.full(len(paths), -1, np.int64), paths, skipped + duplicates)


def with_pseudo_labelled(images, labels, files, unlabelled, pseudo_labels):
    """A training split's `(images, labels, files)` with the unlabelled images whose `pseudo_labels` entry is a
    class id (-1: left out) added under that class: `images` a `Records.images(...)` callable of the labelled ones.

    Raises:
        ValueError: for `pseudo_labels` of another length than the unlabelled images.
    """
    pseudo = np.asarray(pseudo_labels, np.int64)
    if pseudo.shape != unlabelled.labels.shape:
        raise ValueError(
            f"pseudo_labels must give one class id (or -1) per unlabelled image: {len(unlabelled.labels)} of them. "
            f"Received: {pseudo.shape[0] if pseudo.ndim else pseudo} values"
        )
    chosen = np.flatnonzero(pseudo >= 0)
    if not len(chosen):  # none chosen (none confident enough, or the validation check refused them)
        return images, labels, files
    extra = unlabelled.images(chosen)
    n = len(labels)

    def joined(all_labels, size, seed, dtype):
        first, second = images(all_labels[:n], size, seed, dtype), extra(all_labels[n:], size, seed, dtype)
        if seed is None:  # in order: the labelled images, then the pseudo-labelled ones
            return first.concatenate(second)
        weights = [n / len(all_labels), 1 - n / len(all_labels)]  # each shuffled, mixed in proportion
        return tf.data.Dataset.sample_from_datasets([first, second], weights, seed=seed, stop_on_empty_dataset=False)

    files = None if files is None or unlabelled.files is None else np.concatenate([files, unlabelled.files[chosen]])
    return joined, np.concatenate([labels, pseudo[chosen]]), files
