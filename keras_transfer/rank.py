"""Which backbone for my data: candidate backbones scored on the user's own training images, from one pass of pooled
features each, in a fraction of the time of fine-tuning one of them.

Scores, each higher-is-better, each computed on the same cached features (`rank_backbones`):
- `logme`: LogME (You et al., ICML 2021): the mean over classes (or labels) of the log marginal evidence of a
  Bayesian linear model from the features to the 0/1 class indicator, its two precisions found by a fixed-point
  iteration over one SVD of the features (thuml/LogME's fixed-point form).
- `nleep`: NLEEP (Li et al., CVPR 2021): the features reduced by PCA to 80% of their variance, a Gaussian mixture of
  5 components per class fitted to them, and LEEP's log expected empirical prediction over its soft assignments;
  the mean over `NLEEP_RESTARTS` mixtures from different seeds (with a few hundred images, one mixture's NLEEP
  moved by as much as the gap between two backbones from one seed to the next).
- `hscore`: H-score with shrinkage (Bao et al. 2019; Ibrahim et al. 2022): the trace of the inverse (Ledoit-Wolf
  shrunk) feature covariance times the covariance of the class means.
- `probe`: the k-fold accuracy of the package's linear probe (logistic regression, `heads.fit_probe`) on the same
  features (mean average precision over labels with several labels per image): a sanity column.

`score`, the column a ranking is sorted by, is NLEEP (the score whose first choice fine-tuned best on the benchmarks
in `docs/tools.md`), or the probe's where NLEEP does not apply (several labels per image). `close` marks the
candidates whose NLEEP is within two standard errors (over its mixtures) of the first's: on those benchmarks the
first three pretrained candidates were often that close, and the best fine-tuned one was not always first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import time

import numpy as np

from keras_transfer.files import atomic_path

logger = logging.getLogger(__name__)

SCORES = ("logme", "nleep", "hscore", "probe")
# The recommended score, and the one used where it does not apply (NLEEP needs one label per image): see the
# module's docstring and docs/tools.md for the evidence.
RECOMMENDED, FALLBACK = "nleep", "probe"
# Mixtures averaged per NLEEP: on flowers12's 240 training photos one mixture's NLEEP had a standard deviation of
# 0.03 over seeds, as large as the gap between EfficientNet-Lite0 and Lite2; the mean of 10 about 0.01.
NLEEP_RESTARTS = 10
# Images per batch of the feature pass: on 2 CPU cores, 200 photos through EfficientNet-Lite0 @224 took 5.1 s in
# batches of 32 and 3.3-3.6 s in batches of 64 (first passes; more images at once hold more memory).
FEATURE_BATCH = 64


def recommended(scores):
    """The name of the recommended score for one candidate's scores: `RECOMMENDED` where it is a number, else
    `FALLBACK`."""
    return RECOMMENDED if np.isfinite(scores[RECOMMENDED]) else FALLBACK


_CANDIDATE = re.compile(r"^(?P<backbone>.+?)(?:@(?P<size>\d+))?(?::(?P<weights>none|imagenet))?$")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One candidate: a backbone key, its image size (None: the backbone's default) and its weights."""

    backbone: str
    image_size: int | None
    weights: str | None

    @property
    def name(self):
        size = f"@{self.image_size}" if self.image_size else ""
        return f"{self.backbone}{size}{'' if self.weights else ':none'}"


def parse_candidate(text):
    """`NAME[@SIZE][:none]` as a `Candidate`: `efficientnet_lite0@160`, `efficientnet_lite2`, `resnet18:none`
    (random weights; backbones without ImageNet weights get them anyway), `keras_hub:DIR@224`.

    Raises:
        ValueError: for an unknown backbone or a size below the backbone's minimum.
    """
    from keras_transfer.models import backbone_spec, check_input_size
    from keras_transfer.weights import CHECKPOINT_PACKAGES

    match = _CANDIDATE.match(str(text))
    backbone, size = match["backbone"], match["size"] and int(match["size"])
    spec = backbone_spec(backbone)  # an unknown backbone fails here, naming the choices
    if size:
        check_input_size(backbone, (size, size))
    pretrained = spec.module is not None or backbone in CHECKPOINT_PACKAGES or ":" in backbone
    weights = None if match["weights"] == "none" or not pretrained else "imagenet"
    return Candidate(backbone, size, weights)


def logme(features, labels):
    """LogME of `features` `(n, d)` for integer `labels` `(n,)` or a 0/1 label matrix `(n, k)`: the mean per-target
    log evidence divided by n (higher: the features explain the labels with a simpler linear model)."""
    f = np.asarray(features, np.float64)
    targets = _indicators(labels)
    n, d = f.shape
    u, s, vh = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    evidences = []
    for y in targets.T:
        x2 = (u.T @ y) ** 2
        rest = float(y @ y - x2.sum())  # the part of y outside the features' span
        alpha, beta = 1.0, 1.0
        for _ in range(11):  # converges in a few steps (thuml/LogME)
            t = alpha / beta
            gamma = float((sigma / (sigma + t)).sum())
            m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
            res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + rest
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        evidence = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * sigma))
            - beta / 2 * res2
            - alpha / 2 * m2
            - n / 2 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def nleep(features, labels, seed=0, components_per_class=5, restarts=NLEEP_RESTARTS):
    """NLEEP for integer `labels`: LEEP over a Gaussian mixture (diagonal covariances) fitted to the PCA-reduced
    features (80% of the variance) in place of a source classifier's outputs; the mean over `restarts` mixtures
    drawn with seeds `seed`, `seed + 1`, ..."""
    return float(np.mean(nleep_mixtures(features, labels, seed, components_per_class, restarts)))


def nleep_mixtures(features, labels, seed=0, components_per_class=5, restarts=NLEEP_RESTARTS):
    """The NLEEP of each of `restarts` mixtures (see `nleep`, their mean), as an array."""
    from sklearn.decomposition import PCA

    labels = np.asarray(labels)
    reduced = PCA(n_components=0.8, svd_solver="full", random_state=seed).fit_transform(features)
    return np.array([_leep_of_mixture(reduced, labels, seed + i, components_per_class) for i in range(restarts)])


def _leep_of_mixture(reduced, labels, seed, components_per_class):
    from sklearn.mixture import GaussianMixture

    classes = int(labels.max()) + 1
    components = min(components_per_class * classes, len(labels) // 2)
    mixture = GaussianMixture(components, covariance_type="diag", random_state=seed, reg_covar=1e-4).fit(reduced)
    assignments = mixture.predict_proba(reduced)  # (n, components)
    joint = np.stack([assignments[labels == c].sum(axis=0) for c in range(classes)]) / len(labels)
    conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-12)  # P(y | component)
    expected = assignments @ conditional.T  # (n, classes)
    return float(np.mean(np.log(np.maximum(expected[np.arange(len(labels)), labels], 1e-12))))


def hscore(features, labels):
    """H-score with Ledoit-Wolf shrinkage for integer `labels`: tr(cov(f)^-1 cov(E[f | y]))."""
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, np.float64)
    f = f - f.mean(axis=0)
    labels = np.asarray(labels)
    covariance = LedoitWolf(assume_centered=True).fit(f).covariance_
    means = np.zeros_like(f)
    for c in np.unique(labels):
        means[labels == c] = f[labels == c].mean(axis=0)
    between = means.T @ means / len(f)
    return float(np.trace(np.linalg.solve(covariance, between)))


def probe_score(features, labels, folds=5, seed=0):
    """The k-fold accuracy of the linear probe on the features (integer labels), or the mean average precision of
    the one-vs-rest probes (a 0/1 label matrix), each image scored by the probe fitted without it."""
    from keras_transfer.label_issues import multi_label_issues, out_of_sample_probabilities

    labels = np.asarray(labels)
    if labels.ndim == 2:
        from sklearn.metrics import average_precision_score

        probabilities, fold, _ = multi_label_issues(features, labels, folds=folds, seed=seed)
        scored = fold >= 0
        columns = [j for j in range(labels.shape[1]) if 0 < labels[scored, j].sum() < scored.sum()]
        return float(np.mean([average_precision_score(labels[scored, j], probabilities[scored, j]) for j in columns]))
    counts = np.bincount(labels)
    if np.sum(counts >= folds) < 2:
        raise ValueError(
            f"The probe column's {folds}-fold needs two classes with {folds} training images or more; the classes "
            f"have {counts.tolist()}. Give more images (--labels-per-class, --max-images) or fewer --folds."
        )
    probabilities, fold, _ = out_of_sample_probabilities(features, labels, int(labels.max()) + 1, folds, seed)
    scored = fold >= 0
    return float(np.mean(probabilities[scored].argmax(axis=1) == labels[scored]))


def all_scores(features, labels, folds=5, seed=0):
    """`{score name: value}` for every score of `SCORES` on one candidate's features (NaN where a score does not
    apply: NLEEP and H-score need one label per image), and `nleep_se`: the standard error of NLEEP's mean over its
    mixtures (its own noise: the same images in another order moved it by as much)."""
    multi = np.asarray(labels).ndim == 2
    nleep_mean = nleep_se = float("nan")
    if not multi:
        mixtures = nleep_mixtures(features, labels, seed)
        nleep_mean, nleep_se = float(np.mean(mixtures)), float(np.std(mixtures, ddof=1) / np.sqrt(len(mixtures)))
    return {
        "logme": logme(features, labels),
        "nleep": nleep_mean,
        "hscore": float("nan") if multi else hscore(features, labels),
        "probe": probe_score(features, labels, folds, seed),
        "nleep_se": nleep_se,
    }


def mark_close(rows):
    """Sets `close` on each row of a ranking sorted best first: True for the first and for every candidate whose
    recommended score is within two standard errors of the first's (NLEEP's error over its mixtures; the probe's
    fallback has none, so only the first is close). The scores cannot tell those apart: fine-tune them too if you
    can."""
    first = rows[0]
    for row in rows:
        errors = np.hypot(first["nleep_se"], row["nleep_se"])
        within = row["score_name"] == "nleep" and first["score"] - row["score"] <= 2 * errors
        row["close"] = bool(row is first or within)
    return rows


def _indicators(labels):
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.float64)
    return (labels[:, None] == np.arange(int(labels.max()) + 1)[None, :]).astype(np.float64)


def rank_backbones(
    source,
    candidates,
    *,
    output_dir=None,
    labels_per_class=None,
    max_images=None,
    folds=5,
    batch_size=FEATURE_BATCH,
    seed=0,
    **split_options,
):
    """Scores candidate backbones on the training images of `source` and returns them best first.

    For each candidate, the pooled features of the training split (the split a run with the same `seed` and split
    options trains on) are computed once with the backbone's pretrained weights and cached in
    `output_dir/features/` (a rerun reuses them: resumable), then every score of `SCORES` is computed on them.

    Args:
        source: anything `load_dataset` reads.
        candidates: `NAME[@SIZE][:none]` strings (see `parse_candidate`) or `Candidate`s.
        output_dir: where `ranking.csv`, `ranking.json` and the cached features go; None keeps nothing.
        labels_per_class: keep at most this many training images per class (cheaper).
        max_images: keep at most this many training images in all (a sample drawn with `seed`; only those pass
            through the backbone).
        folds: folds of the probe column.
        batch_size: images per batch for the feature pass.
        seed: the split and sampling seed.
        **split_options: passed to `load_dataset` (`validation_split`, `test_split`, `classes`, `validation`,
            `test`).

    Returns:
        A list of dicts, best first by `score` (the recommended score: `recommended`, named in `score_name`):
            `candidate` (as given),
            `backbone`, `image_size`,
        `weights`, `score`, `seconds` (features and scores), each score of `SCORES`, and `images`.

    Raises:
        ValueError: for an unknown backbone, a size below its minimum, no candidates, or a source with one class;
            before any feature is computed.
    """
    parsed = [c if isinstance(c, Candidate) else parse_candidate(c) for c in candidates]
    if not parsed:
        raise ValueError("rank_backbones needs at least one candidate. Received: candidates=[]")
    if len({c.name for c in parsed}) != len(parsed):
        raise ValueError(f"Candidates repeat. Received: candidates={[c.name for c in parsed]}")
    rows = []
    for i, candidate in enumerate(parsed):
        logger.info("[%d/%d] %s", i + 1, len(parsed), candidate.name)
        with _data_lines(shown=i == 0):  # what the loader says of the source, once
            rows.append(
                _rank_one(
                    source, candidate, output_dir, labels_per_class, max_images, folds, batch_size, seed, split_options
                )
            )
        logger.info("  %s (%.0f s)", _scores_text(rows[-1]), rows[-1]["seconds"])
    rows.sort(key=lambda row: -row["score"])
    mark_close(rows)
    if output_dir is not None:
        write_ranking(rows, output_dir)
    return rows


@contextlib.contextmanager
def _data_lines(shown):
    data_logger = logging.getLogger("keras_transfer.data")
    level = data_logger.level
    if not shown:
        data_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        data_logger.setLevel(level)


def _rank_one(source, candidate, output_dir, labels_per_class, max_images, folds, batch_size, seed, split_options):
    start = time.perf_counter()
    features, labels = candidate_features(
        source, candidate, output_dir, labels_per_class, max_images, batch_size, seed, split_options
    )
    scores = all_scores(features, labels, folds, seed)
    return {
        "candidate": candidate.name,
        "backbone": candidate.backbone,
        "image_size": candidate.image_size or _default_size(candidate),
        "weights": candidate.weights or "none",
        "score": scores[recommended(scores)],
        "score_name": recommended(scores),
        "seconds": round(time.perf_counter() - start, 1),
        **scores,
        "images": int(len(labels)),
    }


def _default_size(candidate):
    from keras_transfer.models import default_input_size

    return default_input_size(candidate.backbone)[0]


def candidate_features(source, candidate, output_dir, labels_per_class, max_images, batch_size, seed, split_options):
    """`(features, labels)` of the candidate on the training split: read from `output_dir/features/<name>.npz`
    when a pass with the same settings wrote it, else computed and written there."""
    import inspect

    from keras_transfer.data import load_dataset

    defaults = {k: p.default for k, p in inspect.signature(load_dataset).parameters.items() if k in _SPLIT_OPTIONS}
    settings = {"source": str(source), "labels_per_class": labels_per_class, "max_images": max_images, "seed": seed}
    settings["order"] = "seeded"  # caches from before the seed was set before loading (another order) are not read
    settings.update(
        {k: str(v) for k, v in sorted({**defaults, **split_options}.items())}
    )  # equal splits, equal settings
    path = None
    if output_dir is not None:
        slug = re.sub(r"[^A-Za-z0-9_.@-]+", "_", candidate.name).strip("_")
        path = os.path.join(output_dir, "features", f"{slug}.npz")
        cached = _read_cache(path, settings)
        if cached is not None:
            return cached
    features, labels = _compute_features(
        source, candidate, labels_per_class, max_images, batch_size, seed, split_options
    )
    if path is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=features, labels=labels, settings=json.dumps(settings))
    return features, labels


def _read_cache(path, settings):
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as data:
            if json.loads(str(data["settings"])) == settings:
                return data["features"], data["labels"]
    except (OSError, ValueError, KeyError):
        logger.warning("Ignoring the damaged feature cache %s; computing the features again.", path)
    return None


def _compute_features(source, candidate, labels_per_class, max_images, batch_size, seed, split_options):
    import keras

    from keras_transfer.data import load_dataset
    from keras_transfer.models import build_model, extract_features

    size = candidate.image_size or _default_size(candidate)
    # The shuffle of the training split (whose first images are the `max_images` sample) takes TensorFlow's global
    # seed with its own: set first, so that every candidate gets the same images in the same order, whatever ran
    # before in the process (another candidate, a run, a notebook cell).
    keras.utils.set_random_seed(seed)
    train, _, _, info = load_dataset(
        source,
        image_size=size,
        batch_size=batch_size,
        labels_per_class=labels_per_class,
        seed=seed,
        cache=False,
        deterministic=True,
        **split_options,
    )
    if len(info.class_names) < 2:
        raise ValueError(f"Ranking backbones needs at least two classes. Received: classes={info.class_names}")
    keras.utils.set_random_seed(seed)  # the same random weights for a ':none' control on every rerun
    model = build_model(candidate.backbone, len(info.class_names), input_shape=size, weights=candidate.weights)
    if max_images:  # the training split comes shuffled by `seed`: its first images are a sample, the same each time
        train = train.unbatch().take(max_images).batch(batch_size)
    features, labels = extract_features(model, train)
    return features.astype(np.float32), labels


def _scores_text(row):
    return "  ".join(f"{name} {row[name]:.4f}" for name in SCORES)


_SPLIT_OPTIONS = (
    "validation_split",
    "test_split",
    "classes",
    "validation",
    "test",
    "test_per_class",
    "validation_per_class",
)
COLUMNS = (
    "rank",
    "candidate",
    "backbone",
    "image_size",
    "weights",
    "score",
    "score_name",
    "seconds",
    *SCORES,
    "nleep_se",
    "close",
    "images",
)


def ranking_table(rows):
    """The ranking as aligned text, best first; `close` says which candidates the score cannot tell from the
    first (`mark_close`)."""
    header = ("rank", "candidate", "size", "score", "close", "seconds", *SCORES, "images")
    lines = [header] + [
        (str(i), r["candidate"], str(r["image_size"]), f"{r['score']:.4f}", "yes" if r["close"] else "")
        + (f"{r['seconds']:.0f}",)
        + tuple(f"{r[s]:.4f}" for s in SCORES)
        + (str(r["images"]),)
        for i, r in enumerate(rows, 1)
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def write_ranking(rows, output_dir):
    """`output_dir/ranking.csv` (columns `COLUMNS`) and `output_dir/ranking.json` (with the recommended score's
    name), each written whole or not at all."""
    import csv
    import io

    os.makedirs(output_dir, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for i, row in enumerate(rows, 1):
        writer.writerow({"rank": i, **row})
    for name, text in (
        ("ranking.csv", buffer.getvalue()),
        ("ranking.json", json.dumps({"score": rows[0]["score_name"], "ranking": rows}, indent=2) + "\n"),
    ):
        with atomic_path(os.path.join(output_dir, name)) as tmp, open(tmp, "w") as f:
            f.write(text)
