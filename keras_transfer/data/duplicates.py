"""One image, one split: the files of a source identified by what they are before anything splits them (the real
file behind a relative or absolute path, `..` or a link; then the bytes, for files of the same size), so that no
image is both trained on and tested on under two names."""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from keras_transfer.data.records import SPLITS, readable

logger = logging.getLogger(__name__)


def one_per_image(paths, labels, rows=None):
    """Each image of a source once: of `paths` (split -> object array of bytes paths) with `labels` (split -> the
    labels of those paths: ids, or 0/1 rows), the positions to keep: all but the second and later names of an
    image, which stays in the first split (train, validation, test) and place it comes in. `rows` (split -> the
    table row of each path) names the rows of a table.

    Returns:
        `(keep, skipped)`: `keep` is split -> positions kept; `skipped` holds `(path, reason)` for each name left
        out, the reason naming the one kept and how they are the same (the same file, the same file by another
        path or link, or the same bytes).

    Raises:
        ValueError: when two names of one image carry different labels, naming both.
    """
    order = [(split, i) for split in SPLITS if split in paths for i in range(len(paths[split]))]
    position = {at: k for k, at in enumerate(order)}
    same = _same_images(paths, order, position)
    if not same:
        return {split: np.arange(len(paths[split])) for split in paths}, []
    name = lambda at: f"row {rows[at[0]][at[1]]}" if rows is not None else readable(paths[at[0]][at[1]])
    _check_labels_agree(
        same, labels, lambda at: f"{name(at)} ({readable(paths[at[0]][at[1]])})" if rows is not None else name(at)
    )
    skipped = []
    for other, (kept, how) in sorted(same.items(), key=lambda item: position[item[0]]):
        where = "" if kept[0] == other[0] else f", in {kept[0]}"
        reason = f"duplicate of {name(kept)} ({how}{where})"
        skipped.append(
            (readable(paths[other[0]][other[1]]), f"{name(other)}: {reason}" if rows is not None else reason)
        )
    logger.debug(  # the load's summary lists every skipped file once: no second line here
        "%d image%s listed twice (another path, a link or a copy) and kept once, in its first split (info.skipped); "
        "e.g. %s: %s.",
        len(skipped),
        "s" if len(skipped) > 1 else "",
        skipped[0][0],
        skipped[0][1],
    )
    drop = {split: {i for (s, i) in same if s == split} for split in paths}
    return {
        split: np.array([i for i in range(len(paths[split])) if i not in drop[split]], np.int64) for split in paths
    }, skipped


def _same_images(paths, order, position):
    """(split, i) -> ((split, i) kept, how): every later name of an image that came earlier in `order`."""
    first, same = {}, {}  # identity -> (split, i) kept
    for split, i in order:
        real = os.path.realpath(paths[split][i])
        if real in first:
            kept = first[real]
            same[(split, i)] = (
                kept,
                "the same file"
                if _given(paths, kept) == _given(paths, (split, i))
                else "the same file by another path or link",
            )
        else:
            first[real] = (split, i)
    for group in _same_bytes(list(first)):
        kept, *others = sorted((first[real] for real in group), key=position.get)
        for other in others:
            same[other] = (kept, "the same bytes")
    return same


def _check_labels_agree(same, labels, named):
    disagree = [
        (named(kept), named(other))
        for other, (kept, _) in same.items()
        if not np.array_equal(labels[kept[0]][kept[1]], labels[other[0]][other[1]])
    ]
    if disagree:
        shown = "; ".join(f"{a} and {b}" for a, b in disagree[:3]) + (
            f"; and {len(disagree) - 3} more" if len(disagree) > 3 else ""
        )
        raise ValueError(
            f"{len(disagree)} image{'s are' if len(disagree) > 1 else ' is'} listed under two names with different "
            f"labels: {shown}. An image has one label here; remove the wrong name."
        )


def _given(paths, at):
    return os.path.normpath(os.path.abspath(paths[at[0]][at[1]]))


def _same_bytes(files):
    """Groups (of two or more) of `files` with the same content: only files that share their size are read."""
    by_size = {}
    for path in files:
        try:
            by_size.setdefault(os.path.getsize(path), []).append(path)
        except OSError:
            continue
    groups = []
    for candidates in by_size.values():
        if len(candidates) < 2:
            continue
        by_hash = {}
        for path in candidates:
            by_hash.setdefault(_digest(path), []).append(path)
        groups += [group for group in by_hash.values() if len(group) > 1]
    return groups


def _digest(path):
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def new_images(paths, others):
    """Which of `others` (bytes paths of unlabelled images) are images of their own: each once, none that the
    labelled `paths` (split -> bytes paths) hold already. One that is a training image is left out (it is trained
    on with its label); one that is a validation or test image is refused, since training on it, even unlabelled,
    would leak it into the evaluation.

    Returns:
        `(keep, skipped)`: positions of `others` to keep, and `(path, reason)` for each one left out.

    Raises:
        ValueError: naming the unlabelled images that are validation or test images.
    """
    every = {**paths, "unlabelled": others}
    order = [
        (split, i) for split in (*[s for s in SPLITS if s in paths], "unlabelled") for i in range(len(every[split]))
    ]
    same = _same_images(every, order, {at: k for k, at in enumerate(order)})
    same = {other: found for other, found in same.items() if other[0] == "unlabelled"}
    leaks = [(other, kept) for other, (kept, _) in same.items() if kept[0] in ("validation", "test")]
    if leaks:
        named = "; ".join(
            f"{readable(every[o[0]][o[1]])} is {kept[0]} image {readable(every[kept[0]][kept[1]])}"
            for o, kept in leaks[:3]
        ) + (f"; and {len(leaks) - 3} more" if len(leaks) > 3 else "")
        raise ValueError(
            f"{len(leaks)} unlabelled image{'s are' if len(leaks) > 1 else ' is'} also in the validation or test "
            f"split: {named}. Remove them from the unlabelled images: a model "
            "must not train on the images it is scored on."
        )
    skipped = [
        (
            readable(others[o[1]]),
            f"unlabelled image: duplicate of {readable(every[kept[0]][kept[1]])} ({how}, in {kept[0]})",
        )
        for o, (kept, how) in same.items()
    ]
    return np.array([i for i in range(len(others)) if ("unlabelled", i) not in same], np.int64), skipped
