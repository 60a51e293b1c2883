"""`evaluate`: loss, accuracy, top-k, per-class precision / recall / F1, confusion matrix, written as files."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from keras_transfer.files import atomic_path, write_text
from keras_transfer.heads import fit_probe
from keras_transfer.models import extract_features
from keras_transfer.report import save_examples, write_html
from keras_transfer.runs import run_file

logger = logging.getLogger(__name__)


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

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        width = max(12, *(len(n) for n in self.class_names))
        lines = [
            f"{self.num_examples} examples: loss {self.loss:.4f}, accuracy {self.accuracy:.2%}"
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


def evaluate(model, dataset, class_names=None, *, output_dir=None):
    """Evaluates a classifier and, with `output_dir`, writes `report.json`, `report.txt`, `confusion.png`,
    `predictions.npz`, `examples/` and `report.html` (see `keras_transfer.report`).

    Args:
        model: a Keras classifier with softmax outputs (or one sigmoid unit for binary problems).
        dataset: a `tf.data.Dataset` of `(images, integer labels)` batches.
        class_names: names for the classes; defaults to "0", "1", ...
        output_dir: folder to write the report files into (created if missing). The page's thumbnails come from a
            second pass over `dataset`, so give one that repeats its order (as `load_dataset`'s evaluation splits do).

    Returns:
        An `EvaluationReport`.

    Raises:
        ValueError: if the dataset is empty or `class_names` does not match the model's outputs.
    """
    if dataset is None:
        raise ValueError(
            "No dataset to evaluate (None): load_dataset returns None for a split it was not asked for; "
            "pass test_split= or validation_split= above 0."
        )
    probs, labels = [], []
    for images, y in dataset:  # predict_on_batch: Keras's graph function, traced once (eager calls held ~1 GB more)
        probs.append(np.asarray(model.predict_on_batch(images), dtype=np.float64))
        labels.append(np.asarray(y).reshape(-1).astype(np.int64))
    if not probs:
        raise ValueError("The dataset to evaluate is empty.")
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    if probs.shape[1] == 1:  # one sigmoid unit: P(class 1)
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    num_classes = probs.shape[1]
    class_names = [str(i) for i in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names but the model predicts {num_classes} classes. "
            f"Received: class_names={class_names!r}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"Labels must be in 0..{num_classes - 1}; found {labels.min()}..{labels.max()}.")
    report = _report(probs, labels, class_names)
    if output_dir:
        write_report(report, output_dir)
        save_examples(model, dataset, probs, labels, output_dir)
        write_html(output_dir)
    return report


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
        The accuracy as a float in [0, 1].

    Raises:
        ValueError: if `train` holds fewer than two classes.
    """
    x_train, y_train = extract_features(model, train)
    x_test, y_test = extract_features(model, dataset)
    y_train, y_test = y_train.reshape(-1), y_test.reshape(-1)
    kernel, bias = fit_probe(x_train, y_train, int(max(y_train.max(), y_test.max())) + 1)
    return float(np.mean(np.argmax(x_test @ kernel + bias, axis=1) == y_test))


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

    return EvaluationReport(
        loss=loss,
        accuracy=float(np.mean(predicted == labels)),
        top_k=top_k,
        class_names=list(class_names),
        per_class=per_class,
        macro=average("macro"),
        weighted=average("weighted"),
        confusion=confusion_matrix(labels, predicted, labels=range(n)).tolist(),
        num_examples=len(labels),
        absent=[name for i, name in enumerate(class_names) if s[i] == 0],
    )


def write_report(report, output_dir):
    """Writes `report.json`, `report.txt` and `confusion.png` into `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    write_text(run_file(output_dir, "report"), json.dumps(report.to_dict(), indent=2))
    write_text(run_file(output_dir, "report_text"), str(report) + "\n")
    with atomic_path(run_file(output_dir, "confusion")) as tmp:
        plot_confusion(report, tmp)
    logger.info("Evaluation report written to %s", output_dir)


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
