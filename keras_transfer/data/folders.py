"""Image folders as a source: `root/<class>/<image>`, or `root/train|validation|test/<class>/<image>`."""

from __future__ import annotations

import logging
import os

import numpy as np

from keras_transfer.data.duplicates import one_per_image
from keras_transfer.data.pipeline import decode_files
from keras_transfer.data.records import Records, readable, warn_similar_names
from keras_transfer.images import find_images

logger = logging.getLogger(__name__)


# Folder names accepted for each split in the root/train, root/validation, root/test layout.
SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}


def folder_records(root):
    layout = {}
    for split, names in SPLIT_FOLDERS.items():
        found = next((os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))), None)
        if found:
            layout[split] = found
    if "train" not in layout:
        layout = {"train": root}
    else:
        logger.info(
            "%s holds its own splits: %s",
            readable(root),
            ", ".join(f"{readable(os.path.relpath(folder, root))}/ -> {split}" for split, folder in layout.items()),
        )
    skipped, outliers = [], []
    scans = {split: _scan_classes(folder, skipped, outliers) for split, folder in layout.items()}
    class_names = sorted(name for name, files in scans["train"].items() if files)
    if len(class_names) < 2:
        raise ValueError(
            f"Image folder {layout['train']!r} needs at least two class subfolders with images; found "
            f"{len(class_names)} ({', '.join(class_names) or 'none'}). Expected root/<class>/<image> or "
            f"root/train/<class>/<image>. Received: source={root!r}"
        )
    warn_similar_names(class_names, f"the folder {readable(layout['train'])!r}")
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
    keep, duplicates = one_per_image(paths, labels)
    paths, labels = ({split: values[split][keep[split]] for split in values} for values in (paths, labels))
    skipped += duplicates

    def images(split, idx):
        files = paths[split][idx]  # as bytes: a file name the OS allows need not be UTF-8; tf.string holds any
        return lambda labels, size, shuffle_seed, dtype: decode_files(files, labels, size, shuffle_seed, dtype)

    return Records(root, class_names, class_names, labels, images, skipped=skipped, outliers=outliers, files=paths)


def _scan_classes(folder, skipped, outliers):
    """class name -> sorted readable image paths (subfolders included, hidden files ignored)."""
    classes = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        files, bad = find_images(entry.path, outliers)
        skipped.extend(bad)
        if not files:
            skipped.append((entry.path, "empty class folder: no readable images"))
            logger.warning("Class folder %s has no readable images; it is left out.", readable(entry.path))
        classes[readable(entry.name)] = files
    return classes
