"""Training with unlabelled images too (`--unlabelled`, `semi_supervised="pseudo-label"`): pseudo-labels from a
linear probe on the pretrained backbone's pooled features, refined over a few rounds (self-training, as USB's
pseudo-label baseline does online, here once on cached features), class-balanced (each class at most the same
number, its most confident images) and thresholded on the probe's probability; the run then fine-tunes (LP-FT) on
the labelled and pseudo-labelled images together. Where the run has a validation split, the pseudo-labels are used
only if they do not lower the probe's accuracy on it (`pseudo_label_check`): on photos whose classes the pretrained
features barely separate, wrong pseudo-labels cost more than the right ones bring.

`pseudo_labels` is the method on features; `pseudo_label_images` runs it for a `load_dataset` result and a model.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time

import numpy as np

logger = logging.getLogger(__name__)

PER_CLASS = 100  # pseudo-labelled images per class at most, unless told
THRESHOLD = 0.5  # the probe's probability a pseudo-label needs at least
ROUNDS = 3  # self-training rounds: the probe refitted on the labelled and pseudo-labelled images of the last


def pseudo_labels(
    labelled, labels, unlabelled, num_classes, *, per_class=PER_CLASS, threshold=THRESHOLD, rounds=ROUNDS
):
    """Pseudo-labels of the `unlabelled` features from the labelled ones: round r of `rounds` fits the linear probe
    (`heads.fit_probe`) on the labelled features and the pseudo-labels of the round before, then gives each class
    its most confident unlabelled images predicted as it, with probability >= `threshold`, at most
    `ceil(per_class * r / rounds)` of them.

    Returns:
        `(pseudo, confidence)`: a class id per unlabelled image (-1: not chosen) and the probe's probability of its
        likeliest class (of the last round).
    """
    from keras_transfer.heads import fit_probe

    if not (0 <= threshold < 1) or not isinstance(per_class, int) or per_class < 1 or rounds < 1:
        raise ValueError(
            "pseudo-labels need 0 <= threshold < 1, per_class >= 1 and rounds >= 1. Received: "
            f"threshold={threshold!r}, per_class={per_class!r}, rounds={rounds!r}"
        )
    pseudo = np.full(len(unlabelled), -1, np.int64)
    for r in range(1, rounds + 1):
        chosen = pseudo >= 0
        x = np.concatenate([labelled, unlabelled[chosen]])
        kernel, bias = fit_probe(x, np.concatenate([labels, pseudo[chosen]]), num_classes)
        logits = unlabelled @ kernel + bias
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        guess, confidence = p.argmax(axis=1), p.max(axis=1)
        quota, pseudo = math.ceil(per_class * r / rounds), np.full(len(unlabelled), -1, np.int64)
        for c in range(num_classes):
            candidates = np.flatnonzero((guess == c) & (confidence >= threshold))
            best = candidates[np.argsort(-confidence[candidates], kind="stable")[:quota]]
            pseudo[best] = c
    return pseudo, confidence


def pseudo_label_check(labelled, labels, unlabelled, pseudo, validation, num_classes):
    """Whether the pseudo-labels help, judged on a validation split: the linear probe (`heads.fit_probe`) fitted on
    the labelled features alone and on them with the pseudo-labelled ones, each scored on `validation`.

    Args:
        labelled, labels, unlabelled, num_classes: as `pseudo_labels` takes them.
        pseudo: `pseudo_labels`' class id per unlabelled image (-1: not chosen).
        validation: `(features, labels)` of the validation images (integer or one-hot labels).

    Returns:
        `{"without": accuracy, "with": accuracy, "images": n, "chosen": pseudo-labelled images, "used": with >=
        without}`.
    """
    from keras_transfer.heads import fit_probe

    x_val, y_val = validation
    y_val = np.asarray(y_val)
    y_val = y_val.argmax(axis=1) if y_val.ndim > 1 else y_val
    chosen = pseudo >= 0
    fits = {
        "without": (labelled, labels),
        "with": (np.concatenate([labelled, unlabelled[chosen]]), np.concatenate([labels, pseudo[chosen]])),
    }
    scores = {}
    for name, (x, y) in fits.items():
        kernel, bias = fit_probe(x, y, num_classes)
        scores[name] = round(float(np.mean((x_val @ kernel + bias).argmax(axis=1) == y_val)), 4)
    used = scores["with"] >= scores["without"]
    return scores | {"images": len(y_val), "chosen": int(chosen.sum()), "used": bool(used)}


def pseudo_check_line(check):
    """The story's words for `pseudo_label_check`'s result."""
    text = (
        f"the probe with the {check['chosen']} chosen scored {check['with']:.1%} on the {check['images']} validation "
        f"images, without them {check['without']:.1%}"
    )
    return text + (": used" if check["used"] else ": not used, training on the labelled images alone")


def pseudo_label_images(
    model, train, info, *, validation=None, per_class=PER_CLASS, threshold=THRESHOLD, rounds=ROUNDS
):
    """`pseudo_labels` for a `load_dataset(..., unlabelled=...)` result: the pooled features of `model` (a run's
    model before training) over the labelled `train` batches and `info.unlabelled`; with `validation` batches, the
    pseudo-labels are kept only where `pseudo_label_check` says they do not lower the probe's validation accuracy.

    Returns:
        `(pseudo, confidence, check, seconds)`: the first two as `pseudo_labels`' (every image -1 where the check
        refused them), `check` as `pseudo_label_check`'s (None without `validation` or without a pseudo-label).
    """
    from keras_transfer.models import extract_features

    start = time.perf_counter()
    labelled, labels = extract_features(model, train)
    unlabelled, _ = extract_features(model, info.unlabelled)
    if len(unlabelled) != info.sizes["unlabelled"]:
        raise ValueError(
            f"{info.sizes['unlabelled'] - len(unlabelled)} unlabelled images could not be decoded; remove them and "
            "run again."
        )
    pseudo, confidence = pseudo_labels(
        labelled, labels, unlabelled, info.num_classes, per_class=per_class, threshold=threshold, rounds=rounds
    )
    check = None
    if validation is not None and (pseudo >= 0).any():
        check = pseudo_label_check(
            labelled, labels, unlabelled, pseudo, extract_features(model, validation), info.num_classes
        )
        if not check["used"]:
            pseudo = np.full_like(pseudo, -1)
    return pseudo, confidence, check, round(time.perf_counter() - start, 1)


def pseudo_summary(pseudo, truth, class_names):
    """One line: how many images got a pseudo-label, per class, and how many are right where `truth` (the true
    labels, -1 where unknown) says."""
    counts = ", ".join(f"{name} {int(np.sum(pseudo == c))}" for c, name in enumerate(class_names))
    chosen = pseudo >= 0
    text = f"{int(chosen.sum())} of the {len(pseudo)} unlabelled images ({counts})"
    known = chosen & (truth >= 0)
    if known.any():
        text += f"; {np.mean(pseudo[known] == truth[known]):.1%} of them right (their true labels are known)"
    return text


COLUMNS = ("index", "path", "pseudo_label", "confidence", "true_label")


def pseudo_labels_csv(pseudo, confidence, info):
    """The text of a run's `pseudo_labels.csv`: a row per unlabelled image (`index` in `info.unlabelled`'s order,
    its `path` where it has one), its `pseudo_label` (a class name, empty where none was chosen), the probe's
    `confidence`, and its `true_label` where the source knows it."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    files = (info.files or {}).get("unlabelled")
    names = lambda ids, i: info.class_names[ids[i]] if ids[i] >= 0 else ""
    truth = info.labels["unlabelled"]
    for i in range(len(pseudo)):
        path = files[i] if files else f"#{i}"
        writer.writerow([i, path, names(pseudo, i), f"{confidence[i]:.4f}", names(truth, i)])
    return text.getvalue()


def read_pseudo_labels(path, info):
    """The pseudo-labels (class ids, -1 for none) a run wrote to `path` (`pseudo_labels_csv`) before a kill, or
    None when there is no such file or it is not of `info`'s unlabelled images and classes."""
    with contextlib.suppress(OSError), open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        ids = {name: i for i, name in enumerate(info.class_names)} | {"": -1}
        if len(rows) == info.sizes["unlabelled"] and all(row["pseudo_label"] in ids for row in rows):
            return np.array([ids[row["pseudo_label"]] for row in rows], np.int64)
    return None


# FixMatch (Sohn et al. 2020), USB's hyperparameters where this machine allows: confidence threshold 0.95 and
# unlabelled-loss weight 1 as USB's; USB's 7 unlabelled images per labelled one would make each step ~15x a
# supervised one, so a batch holds RATIO of them (each one is run twice: as it is, and strongly augmented).
FIXMATCH_THRESHOLD = 0.95
FIXMATCH_WEIGHT = 1.0
FIXMATCH_RATIO = 2


def fixmatch_data(train, unlabelled, ratio=FIXMATCH_RATIO, seed=0):
    """`train`'s `(images, labels)` batches as `((images, unlabelled_images), labels)`: each batch with `ratio`
    times its size of unlabelled images, drawn shuffled from `unlabelled` (batches of images, or of `(images,
    labels)` whose labels are ignored). An epoch is one pass over the unlabelled images (as FixMatch counts
    iterations, not labelled epochs), `train` repeating, and never fewer batches than `train` has."""
    import tensorflow as tf

    from keras_transfer.data import with_known_size

    images = unlabelled.unbatch()
    if isinstance(images.element_spec, tuple):
        images = images.map(lambda x, *_: x)
    first = lambda ds: int(tf.nest.flatten(next(iter(ds.take(1))))[0].shape[0])  # the size of its first batch
    batch = ratio * int(train.element_spec[0].shape[0] or first(train))  # None: the last batch may be smaller
    count = int(with_known_size(unlabelled).cardinality()) * first(unlabelled)  # at most this many images
    steps = max(int(train.cardinality()), -(-count // batch))
    images = images.shuffle(4096, seed=seed, reshuffle_each_iteration=True).repeat().batch(batch, drop_remainder=True)
    pairs = tf.data.Dataset.zip(train.repeat(), images).take(steps)
    both = pairs.map(lambda labelled, u: ((labelled[0], u), *labelled[1:]), num_parallel_calls=tf.data.AUTOTUNE)
    return both.prefetch(tf.data.AUTOTUNE)


def fixmatch_step(model, threshold=FIXMATCH_THRESHOLD, weight=FIXMATCH_WEIGHT, seed=0):
    """A `train_step` for `model` (softmax output) on `fixmatch_data` batches: the supervised loss on the labelled
    images plus `weight` times the cross-entropy of each unlabelled image, strongly augmented (RandAugment, 2 ops),
    against the class the model gives it as it is, counted where that class's probability is >= `threshold` (0
    elsewhere; FixMatch's mean over all unlabelled images). Both go through the model's own layers in training
    mode (its augmentation layer included; frozen BatchNorm stays in inference mode), in one forward pass. Its
    logs add `confident`: the share of the batch's unlabelled images above the threshold (an epoch's: its last
    batch's)."""
    import keras
    import tensorflow as tf

    from keras_transfer.compat import compute_loss, track_loss

    strong = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=seed)

    def train_step(data):
        (x, unlabelled), y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, unlabelled = tf.cast(x, tf.float32), tf.cast(unlabelled, tf.float32)
        guess = tf.stop_gradient(tf.cast(model(unlabelled, training=False), tf.float32))
        mask = tf.cast(tf.reduce_max(guess, axis=-1) >= threshold, tf.float32)
        pseudo = tf.argmax(guess, axis=-1)
        if y.shape.rank == 2 and y.shape[-1] == guess.shape[-1]:  # one-hot labels (label smoothing)
            pseudo = tf.one_hot(pseudo, guess.shape[-1])
        n = tf.shape(x)[0]
        with tf.GradientTape() as tape:
            out = model(tf.concat([x, strong(unlabelled, training=True)], axis=0), training=True)
            y_pred = out[:n]
            loss = compute_loss(model, x, y, y_pred, sample_weight)
            track_loss(model, loss, n)
            loss_u = compute_loss(model, unlabelled, pseudo, out[n:], mask)
            loss = model.optimizer.scale_loss(loss + weight * loss_u)
        variables = model.trainable_weights
        model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        logs = dict(model.compute_metrics(x, y, y_pred, sample_weight=sample_weight))
        logs["confident"] = tf.reduce_mean(mask)  # this batch's share of unlabelled images above the threshold
        return logs

    return train_step
