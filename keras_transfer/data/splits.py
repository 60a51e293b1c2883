"""Class selection and splits: stratified for one label per image, iterative (Sechidis et al. 2011) for several;
at most N images per class or label for few-shot runs."""

from __future__ import annotations

import numpy as np

from keras_transfer.data.records import SPLITS


def split_indices(selected, validation_split, test_split, per_class, seed, multi_label=False):
    """split -> positions into the source's own split (`train` when the source has none), for the kept classes
    (`selected`: split -> labels, from `_selected_labels`): predefined splits as they are, the missing ones
    stratified out of the training images (iteratively for `multi_label`, the records' label kind); then at most
    `per_class[split]` images per class (per label) in each split (None or absent: all); `"rest"`: the training
    positions that limit left out."""
    rng = np.random.default_rng(seed)
    kept = lambda labels: np.ones(len(labels), bool) if multi_label else labels >= 0
    indices = {split: rng.permutation(np.flatnonzero(kept(selected[split]))) for split in SPLITS if split in selected}
    train_positions = indices["train"]
    split_rows = _iterative_split if multi_label else _stratified_split
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
    before = indices["train"]
    for split in SPLITS:
        limit = per_class.get(split)
        if limit is not None:
            labels = selected[split if split in selected else "train"][indices[split]]
            limit_rows = _limit_per_label if multi_label else _limit_per_class
            indices[split] = limit_rows(indices[split], labels, limit)
    indices["rest"] = before[~np.isin(before, indices["train"])]  # training images the limit left out
    return indices


def select_classes(class_names, classes):
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
