"""Which source kind a value is: a plain path, DataFrame, `"tfds:NAME"`, `"digits"`, `"fashion_mnist"` or `(x, y)`
becomes its source kind's records, and a source object (`Table`, `Tfds`, `Shards`) gives its own."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from keras_transfer.data.arrays import FASHION_MNIST_CLASSES, array_records, digits_arrays, fashion_mnist_arrays
from keras_transfer.data.duplicates import one_per_image
from keras_transfer.data.folders import folder_records
from keras_transfer.data.shards import MANIFEST, Shards, has_shards_without_manifest, is_shards
from keras_transfer.data.tables import TABLE_OPTIONS, Table, is_dataframe
from keras_transfer.data.tfds import Tfds

SOURCE_OPTIONS = ("data_dir", "data_service", *TABLE_OPTIONS)  # what `source_from` turns into a source object


def records(source):
    """The records of `source`: a source object, or a plain value of one of the kinds `load_dataset` takes.

    Raises:
        ValueError: for a value that is none of them, or a folder of shards without a manifest.
    """
    if isinstance(source, (Table, Tfds, Shards)):
        return source.records()
    if is_dataframe(source) or (isinstance(source, (str, os.PathLike)) and os.path.isfile(source)):
        return Table(source).records()
    if isinstance(source, tuple) and len(source) == 2:
        return array_records("arrays", {"train": source}, None)
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        if source == "digits":
            return array_records("digits", {"train": digits_arrays()}, [str(i) for i in range(10)])
        if source == "fashion_mnist":
            return array_records("fashion_mnist", fashion_mnist_arrays(), list(FASHION_MNIST_CLASSES))
        if source.startswith("tfds:"):
            return Tfds(source[len("tfds:") :]).records()
        if is_shards(source):
            return Shards(source).records()
        if has_shards_without_manifest(source):
            raise ValueError(
                f"{source!r} holds TFRecord shards but no {MANIFEST}: a write_shards call that did not finish (the "
                f"same call again completes it) or shards from elsewhere. Received: source={source!r}"
            )
        if os.path.isdir(source):
            return folder_records(source)
        if not os.path.exists(source):
            raise ValueError(
                f"Dataset source {source!r} is not a folder or a file, and not one of 'tfds:NAME', 'digits', "
                f"'fashion_mnist' or an (x, y) tuple of arrays. Received: source={source!r}"
            )
    raise ValueError(
        "source must be a folder of class subfolders, a CSV file or DataFrame, 'tfds:NAME', 'digits', "
        f"'fashion_mnist', an (x, y) tuple of arrays, or a Table, Tfds or Shards. Received: source={source!r}"
    )


def source_from(source, **options):
    """`source` with the options of one source kind given by name (as the command line and `write_shards` give
    them): table options make a `Table`, `data_dir` a `Tfds` of a `"tfds:NAME"`, `data_service` a `Shards`;
    options left at None (and `label_column="label"`) are not given. Names are the flags' words as arguments.

    Raises:
        ValueError: for an unknown option, or options that do not apply to the source's kind.
    """
    unknown = sorted(set(options) - set(SOURCE_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown source options {unknown}. Expected some of: {', '.join(SOURCE_OPTIONS)}")
    given = {k: v for k, v in options.items() if v is not None and not (k == "label_column" and v == "label")}
    table = {k: v for k, v in given.items() if k in TABLE_OPTIONS}
    is_table = is_dataframe(source) or (isinstance(source, (str, os.PathLike)) and os.path.isfile(source))
    if table and not is_table:
        raise ValueError(
            f"{', '.join(table)} only apply to a table source (a CSV file or a DataFrame). Received: source={source!r}"
        )
    if is_table:
        return Table(source, **{k: tuple(v) if k == "label_columns" else v for k, v in table.items()})
    if "data_service" in given:
        return Shards(source, service=given["data_service"])
    if "data_dir" in given and isinstance(source, str) and source.startswith("tfds:"):
        return Tfds(source[len("tfds:") :], data_dir=given["data_dir"])
    return source


def with_given_splits(records, given):
    """`records` with the splits a caller gave as sources of their own (`given`: split -> records, each its
    "train" images): their labels mapped onto `records`' classes by name, their images and files beside.

    Raises:
        ValueError: for a given split with classes the training source lacks, or of another label kind.
    """
    labels, images, files = dict(records.labels), {}, dict(records.files or {})
    skipped, outliers = list(records.skipped), list(records.outliers)
    for split, other in given.items():
        extra = sorted(set(other.class_names) - set(records.class_names))
        if extra or other.multi_label != records.multi_label:
            why = f"classes the training source lacks: {', '.join(map(str, extra))}" if extra else "another label kind"
            raise ValueError(
                f"The {split} source {other.name!r} has {why}. Training classes: "
                f"{', '.join(map(str, records.class_names))}. Received: {split}={other.name!r}"
            )
        ids = np.array([list(records.class_names).index(name) for name in other.class_names], np.int64)
        if records.multi_label:
            matrix = np.zeros((len(other.labels["train"]), len(records.class_names)), np.uint8)
            matrix[:, ids] = other.labels["train"]
            labels[split] = matrix
        else:
            labels[split] = ids[other.labels["train"]]
        images[split] = other.images
        if other.files is not None and records.files is not None:
            files[split] = other.files["train"]
        skipped += other.skipped
        outliers += other.outliers

    has_files = records.files is not None and all(o.files is not None for o in given.values())
    keep = {split: np.arange(len(values)) for split, values in labels.items()}
    if has_files:  # an image of a given split that is also a training image (by any name) stays in training only
        keep, duplicates = one_per_image(files, labels)
        labels = {split: values[keep[split]] for split, values in labels.items()}
        files = {split: values[keep[split]] for split, values in files.items()}
        skipped += duplicates

    def split_images(split, idx):
        idx = keep[split][idx]
        return images[split]("train", idx) if split in images else records.images(split, idx)

    return dataclasses.replace(
        records,
        labels=labels,
        images=split_images,
        files=files if has_files else None,
        skipped=skipped,
        outliers=outliers,
    )


def read_issue_rows(issues, kind):
    """The `(path, suggested)` rows of a `label_issues.csv` (what `keras-transfer label-issues` writes) or of a list
    of paths (suggested None). `kind` names the argument in errors.

    Raises:
        ValueError: for a file that is missing or has no `path` column.
    """
    import csv

    if not isinstance(issues, (str, os.PathLike)):
        return [(os.fspath(p), None) for p in issues]
    if not os.path.isfile(issues):
        raise ValueError(f"No label issues file at {os.fspath(issues)!r}. Received: {kind}={os.fspath(issues)!r}")
    with open(issues, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "path" not in rows[0]:
        raise ValueError(
            f"{os.fspath(issues)!r} has no 'path' column (columns: {', '.join(rows[0])}); expected the "
            f"label_issues.csv that keras-transfer label-issues writes. Received: {kind}={os.fspath(issues)!r}"
        )
    return [(row["path"], row.get("suggested")) for row in rows]


def without_issues(records, rows, relabel=False):
    """`records` whose training images named in `rows` (`read_issue_rows`; matched by real path) are left out
    (named in `skipped`), or with `relabel` given their suggested class instead. Images of other splits keep their
    labels: the evaluation stays on the labels as given.

    Raises:
        ValueError: for a source without image files, relabelling several labels per image, or a suggested class the
            source does not have.
    """
    what = "relabel_issues" if relabel else "exclude_issues"
    if records.files is None:
        raise ValueError(f"{what} needs a source of image files (a folder or a table). Received: {records.name!r}")
    if relabel and records.multi_label:
        raise ValueError(
            f"relabel_issues takes one label per image; with several, use exclude_issues. Received: {what}"
        )
    named = {os.path.realpath(path): suggested for path, suggested in rows}
    real = [os.path.realpath(os.fsdecode(p)) for p in records.files["train"]]
    hit = np.array([path in named for path in real], bool)
    labels = dict(records.labels)
    if relabel:
        names = list(records.class_names)
        unknown = sorted({named[p] for p in np.array(real)[hit]} - set(names))
        if unknown:
            raise ValueError(f"Suggested classes {unknown} are not classes of {records.name!r}. Received: {what}")
        labels["train"] = labels["train"].copy()
        labels["train"][hit] = [names.index(named[p]) for p in np.array(real)[hit]]
        return dataclasses.replace(records, labels=labels), int(hit.sum())
    keep = np.flatnonzero(~hit)
    labels["train"] = labels["train"][keep]
    files = {**records.files, "train": records.files["train"][keep]}
    reason = "a suspected label error (exclude_issues)"
    skipped = list(records.skipped) + [(os.fsdecode(p), reason) for p in np.asarray(records.files["train"])[hit]]

    def images(split, idx):
        return records.images(split, keep[idx] if split == "train" else idx)

    return dataclasses.replace(records, labels=labels, files=files, images=images, skipped=skipped), int(hit.sum())
