"""`evaluate`: loss, accuracy, top-k, per-class precision / recall / F1, confusion matrix, written as files; for
several labels per image, per-label precision / recall / F1 / average precision at per-label thresholds, mAP,
subset accuracy and Hamming loss (`tune_thresholds` picks the thresholds on validation images)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from keras_transfer.files import atomic_path, write_text
from keras_transfer.heads import check_thresholds, fit_probe
from keras_transfer.models import extract_features, is_multi_label
from keras_transfer.report import save_examples, write_html
from keras_transfer.runs import run_file

logger = logging.getLogger(__name__)

TTA = (None, "flip")  # test-time augmentations `evaluate` offers


@dataclasses.dataclass
class EvaluationReport:
    """Metrics of a classifier on one dataset; `str(report)` is a table a person can read."""

    loss: float
    accuracy: float
    top_k: dict  # k -> top-k accuracy, for k in (3, 5) below the number of classes
    class_names: list
    per_class: dict  # class name -> {"precision", "recall", "f1", "support"}
    macro: dict
    weighted: dict
    confusion: list  # confusion[true][predicted]
    num_examples: int
    absent: list = dataclasses.field(default_factory=list)  # classes without images here: not in the macro average
    balanced_accuracy: float = 0.0  # the mean recall of the classes present (macro recall): imbalance-proof
    tta: str | None = None  # test-time augmentation the probabilities were averaged over

    headline_name = "accuracy"

    @property
    def headline(self):
        return self.accuracy

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        width = max(12, *(len(n) for n in self.class_names))
        lines = [
            f"{self.num_examples} examples{_tta_text(self.tta)}: loss {self.loss:.4f}, accuracy {self.accuracy:.2%}, "
            f"balanced accuracy {self.balanced_accuracy:.2%}, macro F1 {self.macro['f1']:.4f}"
            + "".join(f", top-{k} {v:.2%}" for k, v in self.top_k.items()),
            "",
            f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}",
        ]
        rows = list(self.per_class.items()) + [("macro avg", self.macro), ("weighted avg", self.weighted)]
        for name, m in rows:
            lines.append(
                f"{name:<{width}} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} {m['support']:>8d}"
            )
        if self.absent:
            lines.append(f"not in this split, so not in the macro average: {', '.join(self.absent)}")
        return "\n".join(lines)


@dataclasses.dataclass
class MultiLabelReport:
    """Metrics of a multi-label classifier (several labels per image) on one dataset, at per-label thresholds;
    `str(report)` is a table a person can read. `headline` is the mean average precision (threshold-free)."""

    loss: float  # mean binary cross-entropy over images and labels
    mean_average_precision: float  # macro mean of the per-label average precision (scikit-learn's), present labels
    subset_accuracy: float  # images with every label right
    hamming_loss: float  # wrong (image, label) pairs
    thresholds: list
    class_names: list
    per_class: dict  # label -> {"precision", "recall", "f1", "support", "average_precision"}
    macro: dict
    micro: dict
    num_examples: int
    absent: list = dataclasses.field(default_factory=list)  # labels without images here: not in the averages
    everywhere: list = dataclasses.field(default_factory=list)  # labels on every image here: not in mAP
    multi_label: bool = True
    tta: str | None = None  # test-time augmentation the probabilities were averaged over

    headline_name = "mAP"

    @property
    def headline(self):
        return self.mean_average_precision

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        width = max(12, *(len(n) for n in self.class_names))
        lines = [
            f"{self.num_examples} examples{_tta_text(self.tta)}, {len(self.class_names)} labels: mAP "
            f"{self.mean_average_precision:.4f}, "
            f"macro F1 {self.macro['f1']:.4f}, micro F1 {self.micro['f1']:.4f}, subset accuracy "
            f"{self.subset_accuracy:.2%}, Hamming loss {self.hamming_loss:.4f}, loss {self.loss:.4f}",
            "",
            f"{'label':<{width}} {'threshold':>9} {'precision':>9} {'recall':>9} {'f1':>9} {'AP':>9} {'support':>8}",
        ]
        for (name, m), t in zip(self.per_class.items(), self.thresholds):
            lines.append(
                f"{name:<{width}} {t:>9.2f} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} "
                f"{m['average_precision']:>9.4f} {m['support']:>8d}"
            )
        for name, m in (("macro avg", self.macro), ("micro avg", self.micro)):
            lines.append(
                f"{name:<{width}} {'':>9} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} {'':>9} "
                f"{m['support']:>8d}"
            )
        if self.absent:
            lines.append(f"not in this split, so not in the averages: {', '.join(self.absent)}")
        if self.everywhere:
            lines.append(f"on every image of this split, so not in mAP: {', '.join(self.everywhere)}")
        return "\n".join(lines)


def _tta_text(tta):
    return f" (test-time augmentation: {tta}, the probabilities of each image and its mirror averaged)" if tta else ""


def evaluate(model, dataset, class_names=None, *, output_dir=None, thresholds=None, tta=None):
    """Evaluates a classifier and, with `output_dir`, writes `report.json`, `report.txt`, `confusion.png` (one
    label per image) or `pr_curves.png` (several), `predictions.npz`, `examples/` and `report.html` (see
    `keras_transfer.report`).

    Args:
        model: a Keras classifier with softmax outputs (or one sigmoid unit for binary problems, or one sigmoid
            unit per label for several labels per image).
        dataset: a `tf.data.Dataset` of `(images, labels)` batches: integer labels, or 0/1 rows of one column per
            label (several labels per image, as `load_dataset` gives them; the model then needs sigmoid outputs).
        class_names: names for the classes; defaults to "0", "1", ...
        output_dir: folder to write the report files into (created if missing). The page's thumbnails come from a
            second pass over `dataset`, so give one that repeats its order (as `load_dataset`'s evaluation splits do).
        thresholds: several labels per image only: a label is predicted when its probability reaches its
            threshold; one number or one per label (default 0.5; `tune_thresholds` picks them on validation).
        tta: None, or `"flip"`: test-time augmentation, each image's probabilities averaged with those of its
            left-right mirror (the report says so).

    Returns:
        An `EvaluationReport`, or a `MultiLabelReport` for several labels per image.

    Raises:
        ValueError: if the dataset is empty, `class_names` or `thresholds` do not match the model's outputs, or
            the labels do not fit the model's head.
    """
    probs, labels = predictions(model, dataset, tta=tta)
    num_classes = probs.shape[1]
    class_names = [str(i) for i in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names but the model predicts {num_classes} classes. "
            f"Received: class_names={class_names!r}"
        )
    if _several_labels(model, labels):
        if labels.ndim != 2:
            raise ValueError(
                f"The model has {num_classes} sigmoid outputs (several labels per image) but the labels are one "
                "integer per image: evaluate it on 0/1 label rows."
            )
        report = _multilabel_report(probs, labels, class_names, check_thresholds(thresholds, num_classes))
    elif thresholds is not None:
        raise ValueError("thresholds apply to several labels per image only. Received: thresholds for integer labels")
    elif labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"Labels must be in 0..{num_classes - 1}; found {labels.min()}..{labels.max()}.")
    else:
        report = _report(probs, labels, class_names)
    report.tta = tta
    if output_dir:
        write_report(report, output_dir, probs, labels)
        save_examples(model, dataset, probs, labels, output_dir, getattr(report, "thresholds", None))
        write_html(output_dir)
    return report


def _several_labels(model, labels):
    """Whether `model` predicts several labels per image: its head decides (one sigmoid per label); for a model
    that `build_model` did not make, its labels (0/1 rows)."""
    try:
        return is_multi_label(model)
    except ValueError:  # no `predictions` layer
        return labels.ndim == 2


def predictions(model, dataset, *, tta=None):
    """`(probabilities, labels)` of `model` over `dataset`, as float64 `(n, classes)` and the labels as they come:
    `(n,)` integers, or `(n, labels)` 0/1 for several labels per image (checked against the model's outputs). One
    sigmoid unit (binary) gives two columns, P(class 0) and P(class 1). `tta="flip"` averages each image's
    probabilities with its mirror's."""
    if tta not in TTA:
        raise ValueError(f"tta must be one of {', '.join(map(str, TTA))}. Received: tta={tta!r}")
    if dataset is None:
        raise ValueError(
            "No dataset to evaluate (None): load_dataset returns None for a split it was not asked for; "
            "pass test_split= or validation_split= above 0."
        )
    probs, labels = [], []
    for images, y in dataset:  # predict_on_batch: Keras's graph function, traced once (eager calls held ~1 GB more)
        probs.append(np.asarray(model.predict_on_batch(images), dtype=np.float64))
        if tta == "flip":
            mirrored = np.asarray(model.predict_on_batch(np.asarray(images)[:, :, ::-1]), dtype=np.float64)
            probs[-1] = (probs[-1] + mirrored) / 2
        y = np.asarray(y)
        labels.append(y.astype(np.float64) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1).astype(np.int64))
    if not probs:
        raise ValueError("The dataset to evaluate is empty.")
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    if labels.ndim == 2 and labels.shape[1] != probs.shape[1]:
        raise ValueError(f"The labels have {labels.shape[1]} columns but the model predicts {probs.shape[1]} classes.")
    if labels.ndim == 2 and not is_multi_label(model):
        raise ValueError(
            "The labels hold several labels per image but the model's head is softmax (one label per image): "
            "build it with activation='sigmoid'."
        )
    if probs.shape[1] == 1:  # one sigmoid unit: P(class 1)
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    return probs, labels


def tune_thresholds(model, dataset, *, default=0.5):
    """Per-label thresholds for a multi-label model: on `dataset` (validation images, not the test split), each
    label's threshold is the probability cut with the highest F1 (the midpoint to the next lower probability, so
    it generalises a little beyond the images seen); a label without positive images there keeps `default`.

    Returns:
        A list of one float per label.

    Raises:
        ValueError: if the dataset's labels are not several labels per image.
    """
    from sklearn.metrics import precision_recall_curve

    probs, labels = predictions(model, dataset)
    if labels.ndim != 2:
        raise ValueError("tune_thresholds needs several labels per image (0/1 rows); the dataset has integer labels.")
    thresholds = []
    for j in range(labels.shape[1]):
        if not labels[:, j].any():
            thresholds.append(float(default))
            continue
        precision, recall, cuts = precision_recall_curve(labels[:, j], probs[:, j])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        best = int(np.argmax(f1))
        lower = probs[:, j][probs[:, j] < cuts[best]]
        thresholds.append(float((cuts[best] + lower.max()) / 2 if len(lower) else cuts[best]))
    return thresholds


def linear_probe(model, train, dataset):
    """Accuracy on `dataset` of a logistic regression fitted on `train` over the model's pooled backbone features:
    the baseline a fine-tuning recipe has to beat (call it before fine-tuning to probe the pretrained features).

    The probe is `heads.fit_probe`: scikit-learn's `LogisticRegression(C=10)` on features divided by their mean
    L2 norm, the same probe `fine_tune(head_init="probe")` starts from.

    Args:
        model: a model from `build_model`.
        train: `(images, labels)` batches to fit on.
        dataset: `(images, labels)` batches to score on.

    Returns:
        The accuracy as a float in [0, 1]; for several labels per image (0/1 label rows), the mean average
        precision of one-vs-rest logistic regressions.

    Raises:
        ValueError: if `train` holds fewer than two classes.
    """
    x_train, y_train = extract_features(model, train)
    x_test, y_test = extract_features(model, dataset)
    if y_train.ndim == 2 and y_train.shape[1] > 1:
        kernel, bias = fit_probe(x_train, y_train, y_train.shape[1], multi_label=True)
        return mean_average_precision(x_test @ kernel + bias, y_test)
    y_train, y_test = y_train.reshape(-1), y_test.reshape(-1)
    kernel, bias = fit_probe(x_train, y_train, int(max(y_train.max(), y_test.max())) + 1)
    return float(np.mean(np.argmax(x_test @ kernel + bias, axis=1) == y_test))


def mean_average_precision(scores, labels):
    """The macro mean of scikit-learn's per-label average precision, over labels with positive and negative
    images (a label on every image has an average precision of 1 whatever the scores: it would only lift the mean)."""
    from sklearn.metrics import average_precision_score

    positives = np.asarray(labels).sum(axis=0)
    present = np.flatnonzero((positives > 0) & (positives < len(labels)))
    if not len(present):
        return 0.0
    return float(average_precision_score(np.asarray(labels)[:, present], np.asarray(scores)[:, present]))


def _multilabel_report(probs, labels, class_names, thresholds):
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support

    predicted = (probs >= thresholds).astype(int)
    truth = labels.astype(int)
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    loss = float(-np.mean(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped)))
    p, r, f, s = precision_recall_fscore_support(truth, predicted, zero_division=0)
    present = np.flatnonzero(s > 0)
    per_class = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
            "average_precision": float(average_precision_score(truth[:, i], probs[:, i])) if s[i] else 0.0,
        }
        for i, name in enumerate(class_names)
    }

    def average(kind):
        ap, ar, af, _ = precision_recall_fscore_support(
            truth[:, present], predicted[:, present], average=kind, zero_division=0
        )
        return {"precision": float(ap), "recall": float(ar), "f1": float(af), "support": int(s.sum())}

    return MultiLabelReport(
        loss=loss,
        mean_average_precision=mean_average_precision(probs, truth) if len(present) else 0.0,
        subset_accuracy=float(np.mean(np.all(predicted == truth, axis=1))),
        hamming_loss=float(np.mean(predicted != truth)),
        thresholds=[float(t) for t in thresholds],
        class_names=list(class_names),
        per_class=per_class,
        macro=average("macro"),
        micro=average("micro"),
        num_examples=len(truth),
        absent=[name for i, name in enumerate(class_names) if s[i] == 0],
        everywhere=[name for i, name in enumerate(class_names) if s[i] == len(truth)],
    )


def _report(probs, labels, class_names):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    n = len(class_names)
    predicted = probs.argmax(axis=1)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))
    ranked = np.argsort(-probs, axis=1)
    top_k = {k: float(np.mean(np.any(ranked[:, :k] == labels[:, None], axis=1))) for k in (3, 5) if k < n}
    p, r, f, s = precision_recall_fscore_support(labels, predicted, labels=range(n), zero_division=0)
    per_class = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(class_names)
    }

    present = [i for i in range(n) if s[i] > 0]  # a class without images here has no recall to average

    def average(kind):
        ap, ar, af, _ = precision_recall_fscore_support(
            labels, predicted, labels=present, average=kind, zero_division=0
        )
        return {"precision": float(ap), "recall": float(ar), "f1": float(af), "support": len(labels)}

    macro = average("macro")
    return EvaluationReport(
        loss=loss,
        accuracy=float(np.mean(predicted == labels)),
        balanced_accuracy=macro["recall"],
        top_k=top_k,
        class_names=list(class_names),
        per_class=per_class,
        macro=macro,
        weighted=average("weighted"),
        confusion=confusion_matrix(labels, predicted, labels=range(n)).tolist(),
        num_examples=len(labels),
        absent=[name for i, name in enumerate(class_names) if s[i] == 0],
    )


def write_report(report, output_dir, probs=None, labels=None):
    """Writes `report.json`, `report.txt` and `confusion.png` (or, for several labels per image, `pr_curves.png`
    from `probs` and `labels`) into `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    write_text(run_file(output_dir, "report"), json.dumps(report.to_dict(), indent=2))
    write_text(run_file(output_dir, "report_text"), str(report) + "\n")
    if isinstance(report, MultiLabelReport):
        if probs is not None:
            with atomic_path(run_file(output_dir, "pr_curves")) as tmp:
                plot_pr_curves(report, probs, labels, tmp)
    else:
        with atomic_path(run_file(output_dir, "confusion")) as tmp:
            plot_confusion(report, tmp)
    logger.info("Evaluation report written to %s", output_dir)


def plot_pr_curves(report, probs, labels, path):
    """Saves each label's precision-recall curve (with its operating point at the report's threshold) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for j, name in enumerate(report.class_names):
        if not labels[:, j].any():
            continue
        precision, recall, _ = precision_recall_curve(labels[:, j], probs[:, j])
        m = report.per_class[name]
        (line,) = ax.plot(recall, precision, label=f"{name} (AP {m['average_precision']:.2f})", linewidth=1)
        ax.plot([m["recall"]], [m["precision"]], "o", color=line.get_color(), markersize=4)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"mAP {report.mean_average_precision:.3f} on {report.num_examples} images (dots: thresholds)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(report, path):
    """Saves the confusion matrix as a PNG heat map with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(report.confusion)
    n = len(report.class_names)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * n, 1.5 + 0.6 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), report.class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), report.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {report.accuracy:.1%} on {report.num_examples} images")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > threshold else "black",
                fontsize=8,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
