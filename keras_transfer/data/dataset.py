"""`load_dataset` and `DatasetInfo`: any source as records, then classes selected, splits drawn and one pipeline
per split."""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from keras_transfer.data.pipeline import build_pipeline, cache_choice, decode_files
from keras_transfer.data.records import SPLITS, has_label, is_int, readable
from keras_transfer.data.sources import read_issue_rows, with_given_splits, without_issues
from keras_transfer.data.sources import records as source_records
from keras_transfer.data.splits import select_classes, split_indices
from keras_transfer.data.unlabelled import unlabelled_images, with_pseudo_labelled
from keras_transfer.images import image_size as image_size_rule

logger = logging.getLogger(__name__)

PER_CLASS_ARGUMENTS = {"train": "labels_per_class", "validation": "validation_per_class", "test": "test_per_class"}


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
        outliers: `(path, reason)` for images kept but unlikely to be photos of the task (a GIF placeholder, a
            1-pixel image): a list to look at.
        files: split -> the path of each image, in the order the split yields them (None for sources without
            files: arrays, TFDS, shards).
        labels: split -> each image's label (an id, or a 0/1 row for several labels per image), in the same order;
            `"unlabelled"`: the unlabelled images' true labels where the source knows them (`"rest"`), else -1.
        unlabelled: with `unlabelled=`, a dataset of `(images, labels)` batches of the unlabelled images, in
            order, unshuffled (labels as in `labels["unlabelled"]`, never for training); their number is
            `sizes["unlabelled"]` and their files `files["unlabelled"]`.
    """

    source: str
    class_names: list
    label_map: dict
    counts: dict
    skipped: list
    image_size: tuple
    multi_label: bool = False
    sizes: dict = dataclasses.field(default_factory=dict)
    files: dict | None = None
    outliers: list = dataclasses.field(default_factory=list)
    labels: dict = dataclasses.field(default_factory=dict, repr=False)
    unlabelled: object = dataclasses.field(default=None, repr=False)

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
    test_split=0.1,
    seed=0,
    cache=True,
    classes=None,
    labels_per_class=None,
    test_per_class=None,
    validation_per_class=None,
    deterministic=False,
    validation=None,
    test=None,
    exclude_issues=None,
    relabel_issues=None,
    unlabelled=None,
    pseudo_labels=None,
):
    """Loads an image classification dataset as batched `tf.data` pipelines.

    Args:
        source: a folder of class subfolders (or with `train/`, `validation/`, `test/` inside), a CSV file or a
            pandas DataFrame of image paths and labels, `"tfds:NAME"`, `"digits"` (scikit-learn's 8x8 digits),
            `"fashion_mnist"`, a folder of TFRecord shards from `write_shards`, a tuple of NumPy arrays `(x, y)` with
            `x` of shape `(n, height, width[, channels])` in 0-255 and `y` integer labels or an `(n, classes)` 0/1
            matrix (several labels per image); or a source object with options of its kind: `Table(csv, ...)`
            (columns, delimiter, root), `Tfds(name, data_dir=...)`, `Shards(folder, service=...)`.
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
        validation_per_class: the same for the validation split, which is evaluated after every epoch: with
            `labels_per_class` on a large source (Fashion-MNIST: `validation_split` 0.2 holds 1,200 images per class),
            validation would otherwise cost more than training.
        deterministic: keep a reproducible element order in the training split too (slower parallel decoding). A
            cached training split always keeps it (it decodes once), and validation and test splits their order,
            so `model.predict(test)` lines up with the labels of another pass over `test`.
        validation: a source of its own for the validation split (a folder of class folders, a CSV file, a
            `Table`, ...; the classes are matched by name): used as it is, instead of `validation_split` and of
            the source's own `validation/`.
        test: the same for the test split.
        exclude_issues: a `label_issues.csv` (what `keras-transfer label-issues` writes) or a list of image paths:
            those training images are left out (listed in `info.skipped`), to train again without suspected label
            errors. Validation and test images keep their labels as given.
        relabel_issues: the same file, its training images given their `suggested` class instead (one label per
            image).
        unlabelled: images without labels, for semi-supervised training: `"rest"`, the training images that
            `labels_per_class` leaves out (their labels kept aside in `info.labels["unlabelled"]`, to measure
            pseudo-labels), a folder of images (subfolders included), or a CSV file or DataFrame whose rows
            without a label name images; an image the source holds already is left out, one that is a validation
            or test image refused. They come as `info.unlabelled`.
        pseudo_labels: with `unlabelled`, a class id per unlabelled image (-1: none): those images join the
            training split with that label (`keras_transfer.semi_supervised` chooses them).

    A table's unusable rows and a folder's unreadable files are left out and listed in `info.skipped`. Several
    labels per image split iteratively (Sechidis et al. 2011), so that every label keeps its share in every split
    where it has enough images.

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
    per_class = {"train": labels_per_class, "validation": validation_per_class, "test": test_per_class}
    size = _check_arguments(image_size, batch_size, validation_split, test_split, per_class)
    records = source_records(source)
    given = {split: source_records(s) for split, s in (("validation", validation), ("test", test)) if s is not None}
    records = with_given_splits(records, given) if given else records
    records = _without_issues(records, exclude_issues, relabel_issues)
    keep_ids, class_names = select_classes(records.class_names, classes)
    selected = _selected_labels(records, keep_ids)
    indices = split_indices(selected, validation_split, test_split, per_class, seed, records.multi_label)
    info = DatasetInfo(
        source=records.name,
        class_names=list(class_names),
        label_map={records.original_ids[i]: k for k, i in enumerate(keep_ids)},
        counts={},
        skipped=list(records.skipped),
        outliers=list(records.outliers),
        image_size=size,
        multi_label=records.multi_label,
    )
    pipeline = dict(size=size, batch_size=batch_size, cache=cache, seed=seed, deterministic=deterministic)
    extra = _unlabelled(unlabelled, pseudo_labels, records, selected, indices)
    pseudo = (extra, pseudo_labels) if pseudo_labels is not None else None
    datasets = {
        split: _split_dataset(
            records, split, selected, indices[split], info, pipeline, pseudo if split == "train" else None
        )
        for split in SPLITS
    }
    if extra is not None:
        _record_unlabelled(info, extra, records.files is not None, pipeline)
    if not info.sizes["train"]:
        raise ValueError(f"No training images left in {records.name!r} after the class selection and splits.")
    _warn_missing_classes(info.counts)
    _warn_empty_splits(info.sizes, {"validation": validation_split, "test": test_split}, records.labels)
    if info.multi_label:
        _warn_constant_labels(info.counts["train"], info.sizes["train"])
    _warn_imbalance(info.counts["train"])
    _warn_small_test(info.sizes["test"])
    if info.outliers:
        logger.info("%d images to look at (kept, but unlikely photos of the task): info.outliers", len(info.outliers))
    logger.debug("%s", info)
    return datasets["train"], datasets["validation"], datasets["test"], info


def _without_issues(records, exclude_issues, relabel_issues):
    """`records` with `exclude_issues` left out of training, or `relabel_issues` relabelled (said in one line)."""
    if exclude_issues is not None and relabel_issues is not None:
        raise ValueError("Give exclude_issues or relabel_issues, not both. Received: both")
    issues = exclude_issues if exclude_issues is not None else relabel_issues
    if issues is None:
        return records
    kind = "exclude_issues" if exclude_issues is not None else "relabel_issues"
    rows = read_issue_rows(issues, kind)
    records, count = without_issues(records, rows, relabel=relabel_issues is not None)
    logger.info(
        "%s %d training images named as suspected label errors (%d named in all: images of other splits keep their "
        "labels)",
        "Relabelled" if relabel_issues is not None else "Left out",
        count,
        len(rows),
    )
    return records


def _split_dataset(records, split, selected, idx, info, pipeline, pseudo=None):
    """One split's pipeline (None when it has no images); its counts, size, labels and files recorded in `info`.
    `pseudo`: `(Unlabelled, pseudo_labels)` whose chosen images join this (training) split."""
    origin = split if split in records.labels else "train"  # a split the source lacks is drawn from its train
    labels = selected[origin][idx]
    files = None if records.files is None else records.files[origin][idx]
    images = (records.worker_images if split == "train" and records.worker_images else records.images)(origin, idx)
    if pseudo is not None:
        images, labels, files = with_pseudo_labelled(images, labels, files, *pseudo)
    info.counts[split] = {name: int(np.sum(has_label(labels, i))) for i, name in enumerate(info.class_names)}
    info.sizes[split] = len(labels)
    info.labels[split] = labels
    if files is not None:
        info.files = info.files or {}
        info.files[split] = [os.fsdecode(p) for p in files]
    if not len(labels):
        return None
    served = records.service if split == "train" else None
    return build_pipeline(
        images,
        labels,
        size=pipeline["size"],
        batch_size=pipeline["batch_size"],
        training=split == "train",
        cache=cache_choice(pipeline["cache"], served, len(labels), pipeline["size"], records.dtype),
        cache_name=split,
        service=served,
        seed=pipeline["seed"],
        deterministic=pipeline["deterministic"],
    )


def _unlabelled(unlabelled, pseudo_labels, records, selected, indices):
    """The `Unlabelled` images of `load_dataset(unlabelled=...)`, None without; checked."""
    if unlabelled is None:
        if pseudo_labels is not None:
            raise ValueError("pseudo_labels label unlabelled images: give unlabelled too. Received: unlabelled=None")
        return None
    if records.multi_label:
        raise ValueError(
            "Unlabelled images are for one label per image; this source has several. Received: "
            f"unlabelled={unlabelled!r}"
        )
    return unlabelled_images(unlabelled, records, selected, indices)


def _record_unlabelled(info, extra, with_files, pipeline):
    """`info` of the unlabelled images: their number, labels, files and ordered pipeline (`info.unlabelled`)."""
    info.skipped += extra.skipped
    info.sizes["unlabelled"], info.labels["unlabelled"] = len(extra.labels), extra.labels
    if with_files and extra.files is not None:
        info.files["unlabelled"] = [os.fsdecode(p) for p in extra.files]
    info.unlabelled = build_pipeline(
        extra.images(np.arange(len(extra.labels))),
        extra.labels,
        size=pipeline["size"],
        batch_size=pipeline["batch_size"],
        training=False,
        cache=False,
        cache_name="unlabelled",
        seed=0,
        deterministic=True,
    )


def _warn_empty_splits(sizes, fractions, own):
    """Warns about a split asked for (a fraction > 0, the source having none of its own) that drew no image: every
    class has too few images to give one away (a class of one image stays in training)."""
    for split, fraction in fractions.items():
        if fraction > 0 and split not in own and not sizes[split]:
            logger.warning(
                "No %s images: %s_split=%s of %d training images drew none (a class of one or two images stays in "
                "training). Give more images per class, or a %s source of its own.",
                split,
                split,
                fraction,
                sizes["train"],
                split,
            )


def _warn_constant_labels(counts, n):
    """Several labels per image: warns about a label that every training image carries (it can only be learned
    as "always"; its AUC and average precision say nothing and are left out of their averages)."""
    always = [name for name, k in counts.items() if n and k == n]
    if always:
        logger.warning(
            'Label%s %s on every training image: nothing to learn apart from "always"; left out of the AUC and '
            "mAP averages.",
            "s" if len(always) > 1 else "",
            ", ".join(map(repr, always)),
        )


def _warn_small_test(n, below=50):
    """Warns about a test split of fewer than `below` images: an accuracy measured on it moves by several points
    from one image to the next."""
    if 0 < n < below:
        logger.warning(
            "The test split has %d images: an accuracy measured on it has a standard error of up to %.1f points "
            "(100 * sqrt(0.25 / %d)). Give more test images (--test-split, --test DIR) for a number to trust.",
            n,
            100 * np.sqrt(0.25 / n),
            n,
        )


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


def _check_arguments(image_size, batch_size, validation_split, test_split, per_class=None):
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
    limits = {PER_CLASS_ARGUMENTS[split]: n for split, n in (per_class or {}).items()}
    for name, value in (("batch_size", batch_size), *limits.items()):
        if (value is not None or name == "batch_size") and (not is_int(value) or value < 1):
            raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return size


def ordered_images(files, labels, *, image_size, batch_size):
    """`(images, labels)` batches of the image `files` in their order, unshuffled and unaugmented, as an
    evaluation split is read (`DatasetInfo.files` and `.labels` of a split give the same images as its pipeline, in
    an order a result can be matched to). Images that fail to decode are left out; the caller checks counts."""
    size = _check_arguments(image_size, batch_size, 0.0, 0.0)
    return build_pipeline(
        lambda labels, size, seed, dtype: decode_files(files, labels, size, seed, dtype),
        np.asarray(labels),
        size=size,
        batch_size=batch_size,
        training=False,
        cache=False,
        cache_name="ordered",
        seed=0,
        deterministic=True,
    )


def every_image(source, *, image_size=(224, 224), batch_size=32):
    """Every labelled image of `source` once, split by split (train, validation, test, those it has) in a fixed
    order, unshuffled: what a pass over all images needs that must know which image each result belongs to
    (`find_label_issues`). Images that fail to decode are left out by the pipeline; the caller checks counts.

    Returns:
        `(parts, labels, files, class_names, multi_label)`: datasets of `(images, labels)` batches, one per split,
        which in turn hold every image; their labels (ids, or 0/1 rows) and files (None for sources without files)
        in the same order.
    """
    size = _check_arguments(image_size, batch_size, 0.0, 0.0)
    records = source_records(source)
    keep_ids, class_names = select_classes(records.class_names, None)
    selected = _selected_labels(records, keep_ids)
    splits = [split for split in SPLITS if split in selected and len(selected[split])]
    parts = [
        build_pipeline(
            records.images(split, np.arange(len(selected[split]))),
            selected[split],
            size=size,
            batch_size=batch_size,
            training=False,
            cache=False,
            cache_name=split,
            seed=0,
            deterministic=True,
        )
        for split in splits
    ]
    labels = np.concatenate([selected[split] for split in splits])
    files = None if records.files is None else [os.fsdecode(p) for s in splits for p in records.files[s]]
    return parts, labels, files, list(class_names), records.multi_label
