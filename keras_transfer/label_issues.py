"""Which labels are wrong: out-of-sample probabilities from a k-fold linear probe on a pretrained backbone's pooled
features, then confident learning (Northcutt, Jiang and Chuang, JAIR 2021; as cleanlab's `find_label_issues` does
it by default: per-class thresholds, the calibrated confident joint, pruning by noise rate), ranked by how little
probability the given label gets.

`find_label_issues` is the library call; `keras-transfer label-issues` prints the top rows and writes
`label_issues.csv` and a self-contained `label_issues.html` with the images.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import logging
import os
import time

import numpy as np

from keras_transfer.files import write_text
from keras_transfer.runs import run_file

logger = logging.getLogger(__name__)

COLUMNS = ("path", "given", "suggested", "score", "margin", "fold")
FOLDS = 5  # k of the k-fold out-of-sample probabilities, unless told


@dataclasses.dataclass
class LabelIssues:
    """What `find_label_issues` found.

    `rows`: one dict per suspected image (`COLUMNS`), most suspicious first: `score` is the out-of-sample
    probability of the given label (lower: more suspicious), `margin` the suggested label's probability minus the
    given one's, `fold` the fold whose probe had not seen the image. `probabilities` `(n, classes)` holds every
    image's out-of-sample probabilities (NaN for the images of classes too small for the folds), `labels` the given
    labels and `files` the paths (or None), in the same order; `suspected` is the boolean mask of `rows`."""

    rows: list
    class_names: list
    probabilities: np.ndarray
    labels: np.ndarray
    files: list | None
    suspected: np.ndarray
    left_out: list  # classes with fewer images than folds: not scored
    seconds: dict  # "features" and "scoring"

    def __str__(self):
        scored = int(np.sum(~np.isnan(self.probabilities[:, 0])))
        lines = [f"{len(self.rows)} suspected label errors among {scored} images (out-of-sample, confident learning)"]
        if not self.rows:
            return lines[0]
        width = max([len(_short(r["path"])) for r in self.rows[:10]] + [4])
        lines += [f"  {'path':<{width}}  {'given':<14} {'suggested':<14} {'score':>6}"]
        for row in self.rows[:10]:
            lines.append(
                f"  {_short(row['path']):<{width}}  {row['given']:<14} {row['suggested']:<14} {row['score']:6.3f}"
            )
        if len(self.rows) > 10:
            lines.append(f"  ... and {len(self.rows) - 10} more")
        return "\n".join(lines)


def find_label_issues(
    source, *, backbone="efficientnet_lite0", weights="imagenet", image_size=None, folds=FOLDS, batch_size=32, seed=0
):
    """Suspected label errors in `source` (any `load_dataset` source; every split it has, together).

    Each image's class probabilities come from a linear probe (`heads.fit_probe`) fitted on the pooled features of
    the other folds (stratified `folds`-fold), so no image is scored by a probe that saw its label. Confident
    learning then flags, for each pair (given class i, likely class j), as many images of class i as the
    calibrated confident joint counts for that pair, those with the largest margin p_j - p_i, and keeps only those
    whose most likely class is not the given one.

    Args:
        source: a folder of class folders, a CSV table, `(images, labels)` arrays, ... (as `load_dataset`).
        backbone, weights, image_size: the feature extractor (`build_model`); `image_size` None: its default.
        folds: k of the k-fold (>= 2). A class with fewer images is named and left out of the scoring.
        batch_size: images per batch of the feature pass.
        seed: the folds' shuffle.

    Returns:
        A `LabelIssues`.

    Several labels per image (a multi-label table): `multi_label_issues`, one row per suspected (image, label).

    Raises:
        ValueError: for fewer than two classes with at least `folds` images (one label per image), or `folds` < 2.
    """
    from keras_transfer.data.dataset import every_image
    from keras_transfer.models import build_model, default_input_size, extract_features

    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2. Received: folds={folds!r}")
    size = image_size or default_input_size(backbone, weights)
    start = time.perf_counter()
    parts, labels, files, class_names, multi_label = every_image(source, image_size=size, batch_size=batch_size)
    model = build_model(backbone, len(class_names), weights=weights, input_shape=size, augment=False)
    features, seen = (np.concatenate(a) for a in zip(*(extract_features(model, part) for part in parts)))
    _check_decoded(seen, labels, source)
    seconds = {"features": round(time.perf_counter() - start, 1)}
    return _scored(features, labels, files, class_names, multi_label, folds, seed, seconds)


def split_label_issues(model, info, split="train", *, batch_size=32, folds=FOLDS, seed=0):
    """Suspected label errors among the images of one split of a `load_dataset` result (`info.files` and
    `info.labels` name them), scored on `model`'s pooled features: in a run, its model before training, whose
    pretrained backbone has seen none of these labels. Same method and result as `find_label_issues`.

    Raises:
        ValueError: for a source without files (arrays, TFDS, shards), images that no longer decode, or fewer
            than two classes with `folds` images.
    """
    from keras_transfer.data.dataset import ordered_images
    from keras_transfer.models import extract_features

    if info.files is None:
        raise ValueError(
            f"{info.source!r} has no image files to name; label errors are looked for in folders and tables."
        )
    start = time.perf_counter()
    files, labels = info.files[split], info.labels[split]
    batches = ordered_images(files, labels, image_size=info.image_size, batch_size=batch_size)
    features, seen = extract_features(model, batches)
    _check_decoded(seen, labels, info.source)
    seconds = {"features": round(time.perf_counter() - start, 1)}
    return _scored(features, labels, files, info.class_names, info.multi_label, folds, seed, seconds)


def _check_decoded(seen, labels, source):
    if len(seen) != len(labels) or not np.array_equal(seen, labels):
        raise ValueError(
            f"{len(labels) - len(seen)} images of {source!r} could not be decoded; remove them (load_dataset names "
            "them) and run again."
        )


def _scored(features, labels, files, class_names, multi_label, folds, seed, seconds):
    """The `LabelIssues` of pooled `features`: k-fold out-of-sample probabilities, then confident learning."""
    start = time.perf_counter()
    if multi_label:
        probabilities, fold, pairs = multi_label_issues(features, labels, folds, seed)
        suspected, left_out = pairs.any(axis=1), []
        rows = _label_rows(pairs, probabilities, labels, fold, files, class_names)
    else:
        probabilities, fold, left_out = out_of_sample_probabilities(features, labels, len(class_names), folds, seed)
        suspected = confident_learning(probabilities, labels)
        rows = _rows(suspected, probabilities, labels, fold, files, class_names)
    seconds["scoring"] = round(time.perf_counter() - start, 1)
    return LabelIssues(rows, class_names, probabilities, labels, files, suspected, left_out, seconds)


def out_of_sample_probabilities(features, labels, num_classes, folds=5, seed=0):
    """`(probabilities, fold, left_out)`: each image's softmax probabilities from the linear probe fitted on the
    other folds (stratified), the fold it was held out in, and the ids of the classes with fewer than
    `folds` images (their images get NaN rows and fold -1; their class is never suggested)."""
    from sklearn.model_selection import StratifiedKFold

    from keras_transfer.heads import fit_probe

    counts = np.bincount(labels, minlength=num_classes)
    left_out = [int(c) for c in np.flatnonzero((counts > 0) & (counts < folds))]
    scored = np.flatnonzero(~np.isin(labels, left_out))
    if len(np.unique(labels[scored])) < 2:
        raise ValueError(
            f"Finding label errors needs at least two classes with {folds} images or more (one per fold); the "
            f"classes have {counts.tolist()} images. Give more images, or fewer folds."
        )
    probabilities = np.full((len(labels), num_classes), np.nan, np.float64)
    fold = np.full(len(labels), -1, np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit, held) in enumerate(splitter.split(features[scored], labels[scored])):
        fit, held = scored[fit], scored[held]
        kernel, bias = fit_probe(features[fit], labels[fit], num_classes)
        logits = features[held] @ kernel + bias
        logits[:, left_out] = -np.inf
        logits -= logits.max(axis=1, keepdims=True)
        probabilities[held] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        fold[held] = k
    return probabilities, fold, left_out


def confident_learning(probabilities, labels):
    """The boolean mask of suspected label errors (cleanlab's default `filter_by="prune_by_noise_rate"`): per-class
    thresholds t_j (the mean probability of class j over the images labelled j); the confident joint C[i, j]
    (images labelled i whose probability of j is at least t_j, the likeliest such j), calibrated so that each row
    sums to the class's count; then for each i != j the C[i, j] images labelled i with the largest p_j - p_i,
    keeping only those whose likeliest class is not i. Rows of NaN (classes left out) are never flagged."""
    scored = ~np.isnan(probabilities[:, 0])
    p, y = probabilities[scored], labels[scored]
    k = p.shape[1]
    counts = np.bincount(y, minlength=k)
    present = counts > 0
    thresholds = np.array([p[y == j, j].mean() if present[j] else np.inf for j in range(k)])
    confident = p >= thresholds - 1e-6
    guess = np.where(confident, p, -1.0).argmax(axis=1)
    joint = np.zeros((k, k))
    np.add.at(joint, (y[confident.any(axis=1)], guess[confident.any(axis=1)]), 1)
    rows = joint.sum(axis=1, keepdims=True)
    joint = np.where(rows > 0, joint / np.maximum(rows, 1) * counts[:, None], 0)  # calibrated: rows sum to counts
    joint = np.round(joint).astype(np.int64)
    mask = np.zeros(len(y), bool)
    for i in np.flatnonzero(present):
        given = np.flatnonzero(y == i)
        for j in range(k):
            n = min(int(joint[i, j]), len(given) - 1)  # at least one image of each class is never flagged
            if i == j or n <= 0:
                continue
            margin = p[given, j] - p[given, i]
            mask[given[np.argsort(-margin, kind="stable")[:n]]] = True
    mask &= p.argmax(axis=1) != y
    full = np.zeros(len(labels), bool)
    full[np.flatnonzero(scored)] = mask
    return full


def multi_label_issues(features, labels, folds=5, seed=0):
    """Several labels per image (0/1 rows), as cleanlab's multi-label variant: each label a two-class problem
    (absent, present) with out-of-sample probabilities from the one-vs-rest probe fitted on the other folds, and
    confident learning per label. A label with fewer than `folds` images on either side is not judged.

    Returns:
        `(probabilities, fold, pairs)`: `(n, labels)` out-of-sample probabilities of each label, the fold each image
        was held out in, and the `(n, labels)` mask of suspected (image, label) pairs: a label present that should
        not be, or one missing.
    """
    from sklearn.model_selection import KFold

    from keras_transfer.heads import fit_probe

    labels = np.asarray(labels) > 0.5
    n, k = labels.shape
    probabilities, fold = np.full((n, k), np.nan), np.full(n, -1, np.int64)
    for f, (fit, held) in enumerate(KFold(n_splits=folds, shuffle=True, random_state=seed).split(features)):
        kernel, bias = fit_probe(features[fit], labels[fit].astype(np.float32), k, multi_label=True)
        probabilities[held] = 1 / (1 + np.exp(-(features[held] @ kernel + bias)))
        fold[held] = f
    pairs = np.zeros((n, k), bool)
    for j in range(k):
        if min(labels[:, j].sum(), (~labels[:, j]).sum()) >= folds:
            two = np.stack([1 - probabilities[:, j], probabilities[:, j]], axis=1)
            pairs[:, j] = confident_learning(two, labels[:, j].astype(np.int64))
    return probabilities, fold, pairs


def _label_rows(pairs, probabilities, labels, fold, files, class_names):
    """A row per suspected (image, label) pair: `given` "cat" (present) or "no cat" (absent), `suggested` the other."""
    rows = []
    for i, j in zip(*np.nonzero(pairs)):
        present, p = bool(labels[i, j] > 0.5), float(probabilities[i, j])
        given = p if present else 1 - p
        name = class_names[j]
        rows.append(
            {
                "path": files[i] if files is not None else f"#{i}",
                "given": name if present else f"no {name}",
                "suggested": f"no {name}" if present else name,
                "score": round(given, 4),
                "margin": round(1 - 2 * given, 4),
                "fold": int(fold[i]),
                "index": int(i),
            }
        )
    return sorted(rows, key=lambda r: (r["score"], -r["margin"]))


def _rows(suspected, probabilities, labels, fold, files, class_names):
    rows = []
    for i in np.flatnonzero(suspected):
        p, given = probabilities[i], int(labels[i])
        suggested = int(np.nanargmax(p))
        rows.append(
            {
                "path": files[i] if files is not None else f"#{i}",
                "given": class_names[given],
                "suggested": class_names[suggested],
                "score": round(float(p[given]), 4),
                "margin": round(float(p[suggested] - p[given]), 4),
                "fold": int(fold[i]),
                "index": int(i),
            }
        )
    return sorted(rows, key=lambda r: (r["score"], -r["margin"]))


def write_label_issues(issues, output_dir, *, thumbnail=128):
    """Writes `label_issues.csv` (`COLUMNS`, most suspicious first) and `label_issues.html` (each suspected image,
    embedded, with its given and suggested label and the probabilities) into `output_dir`. Returns both paths."""
    os.makedirs(output_dir, exist_ok=True)
    csv_path = run_file(output_dir, "label_issues")  # the name a run folder gives the same table
    write_text(csv_path, issues_csv(issues.rows))
    html_path = os.path.join(output_dir, "label_issues.html")
    write_text(html_path, _page(issues, thumbnail))
    return csv_path, html_path


def issues_csv(rows):
    """The text of a `label_issues.csv`: a header of `COLUMNS`, then `rows` (`LabelIssues.rows`) in their order."""
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def issue_card(rank, row, thumbnail=128, name=None, details=""):
    """One suspected image as HTML: its thumbnail, `name` (default: the file's name), the given label with its
    score and the suggested one; `details` (HTML) below. `row` as `LabelIssues.rows` or read from the CSV."""
    name = name or os.path.basename(row["path"])
    return (
        f'<figure class="issue" data-path="{html.escape(row["path"])}">{_thumbnail(row["path"], thumbnail)}'
        f"<figcaption><b>#{rank}</b> {html.escape(name)}<br>given "
        f'<span class="given">{html.escape(row["given"])}</span> ({float(row["score"]):.1%}), suggested '
        f'<span class="suggested">{html.escape(row["suggested"])}</span>{details}</figcaption></figure>'
    )


def issue_style(thumbnail=128):
    """The CSS of `issue_card`s."""
    return (
        f"figure.issue{{display:inline-block;width:{thumbnail + 40}px;margin:.4em;vertical-align:top;"
        f"font-size:12px}}figure.issue img{{width:{thumbnail}px;height:{thumbnail}px;object-fit:cover}}"
        ".given{color:#b00}.suggested{color:#070}figure.issue ul{padding-left:1.2em;margin:.2em 0}"
    )


def _page(issues, thumbnail):
    cards = []
    for rank, row in enumerate(issues.rows, 1):
        p = issues.probabilities[row["index"]]
        top = np.argsort(-np.nan_to_num(p, nan=-1.0))[:3]
        probs = "".join(f"<li>{html.escape(issues.class_names[c])}: {p[c]:.1%}</li>" for c in top)
        cards.append(issue_card(rank, row, thumbnail, details=f"<ul>{probs}</ul>"))
    style = f"body{{font-family:sans-serif;margin:1em}}{issue_style(thumbnail)}"
    heading = html.escape(str(issues).splitlines()[0])
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Suspected label errors</title><style>{style}"
        f"</style></head><body><h1>Suspected label errors</h1><p>{heading}. Most suspicious first: the score is "
        f"the out-of-sample probability of the given label.</p>{''.join(cards) or '<p>None found.</p>'}"
        "</body></html>\n"
    )


def _thumbnail(path, size):
    """The image at `path` as an embedded JPEG thumbnail (`<img>`), or a note when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size * 2, size * 2))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
    except (OSError, ValueError):
        return f"<div>(cannot show {html.escape(os.path.basename(path))})</div>"
    return f"<img alt='' src='data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _short(path, width=48):
    return path if len(path) <= width else "..." + path[-(width - 3) :]
