"""The records contract every source kind returns: labels per predefined split (decided single- or multi-label
here, once), and a way to get the images of some indices. `load_dataset` splits, selects and pipelines records
without knowing where they came from."""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import numpy as np

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def has_label(labels, i):
    """Which images carry label `i`: integer labels (one per image) or 0/1 rows (several)."""
    return labels == i if labels.ndim == 1 else labels[:, i] > 0


@dataclasses.dataclass
class Records:
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
    outliers: list = dataclasses.field(default_factory=list)  # (path, reason): kept, but unlikely photos of the task
    multi_label: bool = False  # labels are (n, classes) 0/1 arrays
    files: dict = None  # split -> the image files (bytes paths), for sources of files (what `write_shards` copies)
    size: tuple = None  # (height, width) of every image, where the source has one size (arrays)
    # (split, indices) -> `images` of this worker's part only, for the training split of a source that divides
    # itself between workers (shards); None: every worker reads all
    worker_images: object = None
    service: str | None = None  # a tf.data service dispatcher that decodes the training split (shards only)


def warn_similar_names(class_names, where):
    """Warns about classes whose names differ only by case, spaces, `_` or `-` (`cat`, `Cat `): two classes to
    the model, most likely one to the person who named them."""
    groups = {}
    for name in class_names:
        groups.setdefault(re.sub(r"[\s_-]+", "", str(name)).casefold(), []).append(str(name))
    similar = [names for names in groups.values() if len(names) > 1]
    if similar:
        logger.warning(
            "In %s, classes differ only by case or spaces: %s. They are separate classes; rename them alike to "
            "merge them.",
            where,
            "; ".join(" / ".join(repr(n) for n in names) for names in similar),
        )


def readable(name):
    """A file or folder name as text: undecodable bytes (a name that is not UTF-8) shown as `\\xNN` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
