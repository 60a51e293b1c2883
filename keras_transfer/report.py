"""`report.html`: one self-contained page per run folder (inline PNGs, no JavaScript) that a person opens after a
fine-tune: settings, data, curves, per-class metrics, confusion matrix, the worst mistakes as thumbnails with
Grad-CAM, calibration, transfer vs scratch, timings and versions.

`evaluate(..., output_dir=...)` writes what the page needs beside `report.json` (`predictions.npz`, `examples/`)
and the page; `keras-transfer report RUN_DIR` rebuilds the page from the folder alone.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import json
import logging
import os
import platform

import numpy as np

from keras_transfer.files import write_text
from keras_transfer.label_issues import FOLDS, issue_card, issue_style
from keras_transfer.models import backbone_and_head_layers
from keras_transfer.runs import read_history, read_run_json, read_splits, run_file
from keras_transfer.semi_supervised import pseudo_check_line
from keras_transfer.version import __version__

logger = logging.getLogger(__name__)

ISSUES = 24  # suspected label errors shown (all are in label_issues.csv)
EXAMPLES = 8  # most confident mistakes, and least confident correct predictions, shown
GRADCAM = 4  # mistakes shown with a class-activation map
BINS = 10  # reliability diagram


# --- written by evaluate --------------------------------------------------------------------------------------


def save_examples(model, dataset, probs, labels, output_dir, thresholds=None):
    """Writes `predictions.npz` and `examples/` (thumbnails, Grad-CAM overlays, `examples.json`) into `output_dir`;
    for several labels per image (0/1 `labels`, predicted at `thresholds`), the most confident false positives and
    false negatives instead.

    The images are read in a second pass over `dataset`; when that pass does not give the same labels in the same
    order (a shuffled dataset), the thumbnails are left out and the page says so.
    """
    np.savez(run_file(output_dir, "predictions"), probabilities=probs, labels=labels)
    if labels.ndim == 2:
        return _save_multilabel_examples(dataset, probs, labels, thresholds, output_dir)
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:EXAMPLES]
    right = np.flatnonzero(predicted == labels)
    right = right[np.argsort(confidence[right], kind="stable")][:EXAMPLES]
    images = _images_at(dataset, set(wrong) | set(right), labels)
    os.makedirs(run_file(output_dir, "examples"), exist_ok=True)
    examples = []
    for kind, indices in (("mistake", wrong), ("unsure", right)):
        for i in (i for i in indices if i in images):
            examples.append(
                {
                    "kind": kind,
                    "index": int(i),
                    "true": int(labels[i]),
                    "predicted": int(predicted[i]),
                    "probability": float(confidence[i]),
                    "image": f"examples/{kind}_{i}.png",
                }
            )
            _save_png(images[i], os.path.join(output_dir, examples[-1]["image"]))
    cams = [e for e in examples if e["kind"] == "mistake"][:GRADCAM]
    maps = (
        gradcam(model, np.stack([images[e["index"]] for e in cams]), [e["predicted"] for e in cams]) if cams else None
    )
    for example, heat in zip(cams, maps if maps is not None else []):
        example["gradcam"] = f"examples/gradcam_{example['index']}.png"
        _save_png(_overlay(images[example["index"]], heat), os.path.join(output_dir, example["gradcam"]))
    note = None if images or not (len(wrong) or len(right)) else "the dataset did not repeat its order: no thumbnails"
    write_text(run_file(output_dir, "examples_index"), json.dumps({"examples": examples, "note": note}))


def _save_multilabel_examples(dataset, probs, labels, thresholds, output_dir):
    """The `EXAMPLES` most confident false positives (a label predicted that is not there) and false negatives (a
    label there that is not predicted), as thumbnails with their true and predicted label sets."""
    predicted = probs >= np.asarray(thresholds if thresholds is not None else 0.5)
    truth = labels > 0.5
    # each image's worst mistake of each kind: the highest probability of a wrong label, the lowest of a true one
    false_positive = np.where(predicted & ~truth, probs, -1.0).max(axis=1)
    false_negative = np.where(~predicted & truth, probs, 2.0).min(axis=1)
    chosen = {
        "false positive": np.argsort(-false_positive, kind="stable")[: int(np.sum(false_positive >= 0))][:EXAMPLES],
        "false negative": np.argsort(false_negative, kind="stable")[: int(np.sum(false_negative <= 1))][:EXAMPLES],
    }
    images = _images_at(dataset, {int(i) for rows in chosen.values() for i in rows}, labels)
    os.makedirs(run_file(output_dir, "examples"), exist_ok=True)
    examples = []
    for kind, rows in chosen.items():
        for i in (int(i) for i in rows if int(i) in images):
            score = false_positive[i] if kind == "false positive" else false_negative[i]
            examples.append(
                {
                    "kind": kind,
                    "index": i,
                    "true": np.flatnonzero(truth[i]).tolist(),
                    "predicted": np.flatnonzero(predicted[i]).tolist(),
                    "probability": float(score),
                    "image": f"examples/{kind.replace(' ', '_')}_{i}.png",
                }
            )
            _save_png(images[i], os.path.join(output_dir, examples[-1]["image"]))
    note = None if images or not any(len(r) for r in chosen.values()) else "the dataset did not repeat its order"
    write_text(run_file(output_dir, "examples_index"), json.dumps({"examples": examples, "note": note}))


def _images_at(dataset, wanted, labels):
    """index -> uint8 image for the `wanted` indices, or {} when a second pass gives other labels."""
    found, offset = {}, 0
    for images, y in dataset:
        if offset > max(wanted, default=-1):
            break  # the rest holds nothing to show
        y = np.asarray(y).reshape(len(labels[offset : offset + len(y)]), *labels.shape[1:])
        if not np.array_equal(y, labels[offset : offset + len(y)]):
            return {}
        for i in (i for i in wanted if offset <= i < offset + len(y)):
            found[i] = np.clip(np.asarray(images[i - offset]), 0, 255).astype(np.uint8)
        offset += len(y)
    return found


def gradcam(model, images, class_ids):
    """Grad-CAM (Selvaraju et al. 2017) on the backbone's output feature map: per image, the map of where the
    evidence for `class_ids` lies, in [0, 1] at the feature map's resolution; None when the backbone gives no
    spatial map (e.g. a hub module's vectors)."""
    import tensorflow as tf

    split = backbone_and_head_layers(model)
    if split is None:
        return None
    to_map, head = split
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        for layer in to_map:
            x = layer(x, training=False)
        tape.watch(x)
        scores = x
        for layer in head:
            scores = layer(scores, training=False)
        chosen = tf.gather(scores, tf.constant(class_ids), axis=1, batch_dims=1)
    weights = tf.reduce_mean(tape.gradient(chosen, x), axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * x, axis=-1)).numpy()
    return cams / np.maximum(cams.max(axis=(1, 2), keepdims=True), 1e-12)


def _overlay(image, heat):
    import matplotlib

    heat = np.asarray(matplotlib.colormaps["jet"](_resize_map(heat, image.shape[:2]))[..., :3] * 255)
    return (0.55 * image + 0.45 * heat).astype(np.uint8)


def _resize_map(heat, size):
    from PIL import Image

    return np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize(size[::-1], Image.BILINEAR)) / 255.0


def _save_png(array, path):
    from PIL import Image

    Image.fromarray(array).save(path)


# --- the page -------------------------------------------------------------------------------------------------


def write_html(run_dir):
    """(Re)builds `run_dir/report.html` from the files in the run folder; returns its path.

    Raises:
        ValueError: when `run_dir` has no `report.json` (nothing was evaluated there).
    """
    if not os.path.isfile(run_file(run_dir, "report")):
        raise ValueError(
            f"{run_dir!r} has no report.json: evaluate a model with output_dir={run_dir!r}, or give a "
            f"run folder of keras-transfer. Received: run_dir={run_dir!r}"
        )
    files = _read_run(run_dir)
    sections = [  # the answer first (metrics, comparison, mistakes), the 30-row settings table last
        _metrics(files),
        _comparison(files),
        _exports(files),
        _examples(run_dir, files),
        _label_issues(run_dir, files),
        _pseudo_labels(run_dir),
        _fixmatch(files),
        _curves(files),
        _data(files),
        _calibration(files),
        _timings(files),
        _settings(files),
        _versions(),
    ]
    title = f"keras_transfer report: {html.escape(os.path.basename(os.path.abspath(run_dir)))}"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )
    path = run_file(run_dir, "report_html")
    write_text(path, page)
    logger.debug("Wrote %s", path)  # evaluate and the CLI say where the report is
    return path


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}figure{display:inline-block;margin:.3em;width:150px;
font-size:12px;vertical-align:top}figure img{width:150px;image-rendering:pixelated}img.plot{max-width:100%}
.note{color:#666}""" + issue_style(96)


def _read_run(run_dir):
    def load(key, default=None):
        path = run_file(run_dir, key)
        if not os.path.isfile(path):
            return default
        if path.endswith(".json"):
            with open(path) as f:
                return json.load(f)
        if path.endswith(".yaml"):
            import yaml

            with open(path) as f:
                return yaml.safe_load(f)
        return dict(np.load(path))

    confusion, curves = run_file(run_dir, "confusion"), run_file(run_dir, "pr_curves")
    exports = run_file(run_file(run_dir, "exports"), "exports_table")
    with contextlib.suppress(OSError, ValueError), open(exports) as f:
        exports = json.load(f)
    return {
        "exports": exports if isinstance(exports, list) else None,
        "pr_curves": curves if os.path.isfile(curves) else None,
        "report": load("report"),
        "config": load("config", {}),
        "data": load("data"),
        "history": read_history(run_dir),
        "predictions": load("predictions"),
        "examples": load("examples_index"),
        "comparison": load("comparison"),
        "timings": load("timings"),
        "confusion": confusion if os.path.isfile(confusion) else None,
    }


def _table(header, rows):
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    return f"<table><tr>{head}</tr>" + "".join(f"<tr>{''.join(rows_)}</tr>" for rows_ in rows) + "</table>"


def _cell(value, **data):
    attrs = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in data.items())
    if isinstance(value, float):
        return f'<td class="num"{attrs}>{value:.4f}</td>'
    return f"<td{' class=num' if isinstance(value, int) else ''}{attrs}>{html.escape(str(value))}</td>"


def _png(fig_or_path):
    if isinstance(fig_or_path, str):
        with open(fig_or_path, "rb") as f:
            data = f.read()
    else:
        buf = io.BytesIO()
        fig_or_path.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig_or_path)
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _settings(files):
    config = files["config"] or {}
    if not config:
        return "<h2>Settings</h2><p class=note>No config.yaml here (a folder written by evaluate alone).</p>"
    rows = [[_cell(k), _cell(f"{v:g}" if isinstance(v, float) else v)] for k, v in config.items()]
    return "<h2>Settings</h2>" + _table(["setting", "value"], rows)


def _data(files):
    data = files["data"]
    if not data:
        return None
    splits = [s for s, c in data["counts"].items() if c]
    rows = [
        [_cell(name)] + [_cell(int(data["counts"][s].get(name, 0)), split=s, cls=name) for s in splits]
        for name in data["class_names"]
    ]
    text = f"<h2>Data</h2><p>{html.escape(str(data['source']))}, images at {data['image_size']}"
    if data.get("multi_label"):  # counts are of the images carrying each label
        sizes = ", ".join(f"{s} {n}" for s, n in (data.get("sizes") or {}).items() if n)
        text += f"; several labels per image: the images carrying each label ({sizes} images)"
    text += "</p>" + _table(["label" if data.get("multi_label") else "class"] + splits, rows)
    skipped = data.get("skipped") or []
    text += f"<p>{len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped</p>"
    if skipped:
        text += _table(["file", "reason"], [[_cell(path), _cell(reason)] for path, reason in skipped[:200]])
    outliers = data.get("outliers") or []
    if outliers:
        text += f"<h3>Images to look at ({len(outliers)}: kept, but unlikely photos of the task)</h3>"
        text += _table(["file", "why"], [[_cell(path), _cell(reason)] for path, reason in outliers[:200]])
    return text


def _curves(files):
    history = files["history"]
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = sorted(history)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    second = "accuracy" if any("accuracy" in row for row in history.values()) else "auc"  # multi-label: AUC
    for ax, metric in zip(axes, ("loss", second)):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            points = [(e + 1, history[e][key]) for e in epochs if key in history[e]]
            if points:
                ax.plot(*zip(*points), style, markersize=3, label=key)
        switch = (files["config"] or {}).get("head_epochs")
        if switch and epochs[-1] + 1 > switch:
            ax.axvline(switch + 0.5, color="gray", linestyle=":", label="stage 2 starts")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return f'<h2>Training</h2><img class="plot" alt="training curves" src="{_png(fig)}">'


def _tta_note(report):
    tta = report.get("tta")
    return f" (test-time augmentation: {html.escape(tta)}, each image averaged with its mirror)" if tta else ""


def _multilabel_metrics(files):
    report = files["report"]
    text = (
        f"<h2>Test metrics</h2><p>{report['num_examples']} images{_tta_note(report)}, {len(report['class_names'])} "
        "labels: mAP "
        f'<span id="map">{report["mean_average_precision"]:.4f}</span>, macro F1 {report["macro"]["f1"]:.4f}, '
        f"micro F1 {report['micro']['f1']:.4f}, subset accuracy {report['subset_accuracy']:.2%}, Hamming loss "
        f"{report['hamming_loss']:.4f}</p>"
    )
    keys = ("precision", "recall", "f1", "average_precision", "support")
    rows = [
        [_cell(name), _cell(float(t))]
        + [_cell(float(m[k]) if k != "support" else int(m[k]), cls=name, metric=k) for k in keys]
        for (name, m), t in zip(report["per_class"].items(), report["thresholds"])
    ]
    text += _table(["label", "threshold", "precision", "recall", "F1", "AP", "support"], rows)
    if files["pr_curves"]:
        text += f'<h3>Precision-recall curves</h3><img class="plot" alt="PR curves" src="{_png(files["pr_curves"])}">'
    return text


def _metrics(files):
    report = files["report"]
    if report.get("multi_label"):
        return _multilabel_metrics(files)
    top = "".join(f", top-{k} {v:.2%}" for k, v in report["top_k"].items())
    text = (
        f"<h2>Test metrics</h2><p>{report['num_examples']} images{_tta_note(report)}: accuracy "
        f'<span id="accuracy">{report["accuracy"]:.4f}</span>, balanced accuracy '
        f'<span id="balanced-accuracy">{report.get("balanced_accuracy", float("nan")):.4f}</span>, macro F1 '
        f"{report['macro']['f1']:.4f}, loss {report['loss']:.4f}{top}</p>"
    )
    rows = [
        [_cell(name)]
        + [
            _cell(float(m[k]) if k != "support" else int(m[k]), cls=name, metric=k)
            for k in ("precision", "recall", "f1", "support")
        ]
        for name, m in report["per_class"].items()
    ]
    text += _table(["class", "precision", "recall", "F1", "support"], rows)
    if files["confusion"]:
        return (
            text
            + f'<h3>Confusion matrix</h3><img class="plot" alt="confusion matrix" src="{_png(files["confusion"])}">'
        )
    matrix, names = np.array(report["confusion"]), report["class_names"]
    rows = [[_cell(f"true {t}")] + [_cell(int(matrix[i, j])) for j in range(len(names))] for i, t in enumerate(names)]
    return text + "<h3>Confusion matrix</h3>" + _table([""] + [f"predicted {p}" for p in names], rows)


def _example_names(run_dir):
    """index in the evaluated split -> the image's file, relative to the data folder (`#index` where the run
    recorded no files: arrays, TFDS)."""
    data = read_run_json(run_dir, "data")
    paths = read_splits(run_dir).get(data.get("evaluated"), [])
    root = os.path.abspath(str(data.get("source", "")))

    def name(i):
        if i >= len(paths):
            return f"#{i}"
        path = os.path.abspath(paths[i])
        return os.path.relpath(path, root) if path.startswith(root + os.sep) else paths[i]

    return name


def _examples(run_dir, files):
    found = files["examples"]
    if not found:
        return None
    names, named = files["report"]["class_names"], _example_names(run_dir)
    if files["report"].get("multi_label"):
        return _multilabel_examples(run_dir, found, names, named)
    text = "<h2>Mistakes and doubts</h2>"
    if found.get("note"):
        text += f"<p class=note>{html.escape(found['note'])}</p>"
    for kind, title in (("mistake", "Most confident mistakes"), ("unsure", "Least confident correct predictions")):
        shown = [e for e in found["examples"] if e["kind"] == kind]
        text += f"<h3>{title} ({len(shown)})</h3>"
        for e in shown:
            caption = (
                f"{named(e['index'])}: true {names[e['true']]}, predicted {names[e['predicted']]} "
                f"({e['probability']:.1%})"
            )
            text += (
                f'<figure class="example" data-kind="{kind}" data-index="{e["index"]}" data-true="{e["true"]}" '
                f'data-predicted="{e["predicted"]}"><img alt="example {e["index"]}" '
                f'src="{_png(os.path.join(run_dir, e["image"]))}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    cams = [e for e in found["examples"] if "gradcam" in e]
    if cams:
        text += "<h3>Where the model looked (Grad-CAM on the backbone's last feature map, predicted class)</h3>"
        text += "".join(
            f'<figure><img alt="Grad-CAM {e["index"]}" src="{_png(os.path.join(run_dir, e["gradcam"]))}">'
            f"<figcaption>{html.escape(named(e['index']))}: {html.escape(names[e['predicted']])}</figcaption></figure>"
            for e in cams
        )
    return text


def _label_issues(run_dir, files):
    """The training images whose label looks wrong (the run's `label_issues.csv`), most suspicious first."""
    path = run_file(run_dir, "label_issues")
    with contextlib.suppress(OSError), open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        total = (files["data"] or {}).get("sizes", {}).get("train", "?")
        text = (
            f"<h2>Suspected label errors ({len(rows)})</h2><p class=note>{len(rows)} of the {total} training images "
            f"carry a label that a linear probe on the pretrained features, fitted on the other {FOLDS - 1} of "
            f"{FOLDS} folds, finds unlikely (confident learning); the score is that probe's probability of the "
            "given label, most suspicious first. All of them are in label_issues.csv; to train without them, run "
            f"again with --exclude-issues {html.escape(path)} (or --relabel-issues to take the suggestions).</p>"
        )
        root = os.path.abspath(str(files["data"].get("source", ""))) if files["data"] else ""
        relative = lambda p: os.path.relpath(p, root) if root and os.path.abspath(p).startswith(root + os.sep) else p
        text += "".join(issue_card(i, row, 96, name=relative(row["path"])) for i, row in enumerate(rows[:ISSUES], 1))
        if len(rows) > ISSUES:
            text += f"<p class=note>... and {len(rows) - ISSUES} more in label_issues.csv.</p>"
        return text
    return None


def _pseudo_labels(run_dir):
    """The unlabelled images the run trained on under pseudo-labels (its `pseudo_labels.csv`), per class."""
    with contextlib.suppress(OSError), open(run_file(run_dir, "pseudo_labels"), newline="") as f:
        rows = list(csv.DictReader(f))
        chosen = [r for r in rows if r["pseudo_label"]]
        names = sorted({r["pseudo_label"] for r in chosen})
        known = [r for r in chosen if r["true_label"]]
        table = []
        for name in names:
            mine = [r for r in chosen if r["pseudo_label"] == name]
            right = [r for r in mine if r["true_label"]]
            share = f"{sum(r['true_label'] == name for r in right) / len(right):.1%}" if right else "unknown"
            table.append([_cell(name), _cell(len(mine), cls=name), _cell(share)])
        text = (
            f"<h2>Pseudo-labels</h2><p>{len(chosen)} of the {len(rows)} unlabelled images were trained on under a "
            "pseudo-label (pseudo_labels.csv has every unlabelled image, its pseudo-label and the probe's "
            "probability)"
        )
        if known:
            text += f"; {sum(r['pseudo_label'] == r['true_label'] for r in known) / len(known):.1%} of them right"
            text += " (the source knows their true labels)"
        check = read_run_json(run_dir, "pseudo_check")
        if check:
            text += f". Checked on the validation split: {html.escape(pseudo_check_line(check))}"
        return text + ".</p>" + _table(["class", "pseudo-labelled", "right"], table)
    return None


def _fixmatch(files):
    """What FixMatch did in stage 2: how many unlabelled images, and per epoch the share of them whose class the
    model was sure enough of to train on (the history's `confident`)."""
    from keras_transfer.semi_supervised import FIXMATCH_RATIO, FIXMATCH_THRESHOLD

    if (files["config"] or {}).get("semi_supervised") != "fixmatch":
        return None
    history = files["history"] or {}
    shares = [
        [_cell(e + 1), _cell(f"{history[e]['confident']:.1%}")] for e in sorted(history) if "confident" in history[e]
    ]
    unlabelled = ((files["data"] or {}).get("sizes") or {}).get("unlabelled")
    return (
        f"<h2>FixMatch</h2><p>Stage 2 also trained on {unlabelled if unlabelled is not None else 'the'} unlabelled "
        f"images, {FIXMATCH_RATIO} per labelled image in each batch: each one, strongly augmented, was taught the "
        f"model's class for it where that class's probability was {FIXMATCH_THRESHOLD} or more. The share of them "
        "above that threshold, by epoch (the epoch's last batch):</p>" + _table(["epoch", "confident"], shares)
    )


def _multilabel_examples(run_dir, found, names, named):
    text = "<h2>Mistakes</h2>"
    if found.get("note"):
        text += f"<p class=note>{html.escape(found['note'])}</p>"
    label_set = lambda ids: ", ".join(names[i] for i in ids) or "none"
    for kind, title in (
        ("false positive", "Most confident false positives (a label predicted that is not there)"),
        ("false negative", "Most confident false negatives (a label there that is not predicted)"),
    ):
        shown = [e for e in found["examples"] if e["kind"] == kind]
        text += f"<h3>{title} ({len(shown)})</h3>"
        for e in shown:
            caption = f"{named(e['index'])}: true {label_set(e['true'])}; predicted {label_set(e['predicted'])}"
            text += (
                f'<figure class="example" data-kind="{kind}" data-index="{e["index"]}"><img alt="example '
                f'{e["index"]}" src="{_png(os.path.join(run_dir, e["image"]))}">'
                f"<figcaption>{html.escape(caption)} ({e['probability']:.1%})</figcaption></figure>"
            )
    return text


def calibration(probs, labels, bins=BINS):
    """(expected calibration error, rows of (bin low, bin high, count, mean confidence, accuracy)) over the top-1
    confidence in `bins` equal-width bins."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            rows.append(
                (b / bins, (b + 1) / bins, int(mask.sum()), float(confidence[mask].mean()), float(correct[mask].mean()))
            )
            ece += mask.mean() * abs(rows[-1][3] - rows[-1][4])
    return float(ece), rows


def _calibration(files):
    predictions = files["predictions"]
    if predictions is None or predictions["labels"].ndim == 2:  # top-1 calibration: one label per image
        return None
    import matplotlib.pyplot as plt

    ece, rows = calibration(predictions["probabilities"], predictions["labels"])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfectly calibrated")
    ax.bar(
        [(lo + hi) / 2 for lo, hi, *_ in rows],
        [r[4] for r in rows],
        width=1 / BINS,
        alpha=0.7,
        edgecolor="k",
        label="accuracy in bin",
    )
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    table = _table(
        ["confidence", "images", "mean confidence", "accuracy"],
        [[_cell(f"{lo:.1f}-{hi:.1f}"), _cell(n), _cell(c), _cell(a)] for lo, hi, n, c, a in rows],
    )
    confident = [r for r in rows if r[0] >= 0.9 - 1e-9]
    line = (
        f" Predictions made with 90-100% confidence: {confident[0][4]:.1%} correct ({confident[0][2]} images)."
        if confident
        else ""
    )
    return (
        f'<h2>Calibration</h2><p>Expected calibration error <span id="ece">{ece:.4f}</span>: the gap between '
        f"confidence and accuracy, averaged over the bins weighted by their images.{line}</p>"
        f'<img class="plot" alt="reliability diagram" src="{_png(fig)}">' + table
    )


def _comparison(files):
    comparison = files["comparison"]
    if not comparison:
        return None
    rows = [[_cell(k), _cell(v)] for k, v in comparison.items() if not isinstance(v, (dict, list))]
    return "<h2>Transfer vs scratch</h2>" + _table(["", ""], rows)


def _exports(files):
    """The export benchmark's table (`export.benchmark_exports`), when the run has one."""
    rows = files["exports"]
    if not rows:
        return None
    header = ["format", "bytes", "score", "agreement with Keras", "max probability difference", "latency ms"]
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([_cell(r["format"]), f'<td colspan="6">not measured: {html.escape(r["error"])}</td>'])
            continue
        score = f"{r['metric']} {r['accuracy']:.2%}"
        numbers = [r["agreement"], r["max_difference"], r["latency_ms"], r["images_per_second"]]
        cells.append([_cell(r["format"]), _cell(int(r["bytes"])), _cell(score), *map(_cell, map(float, numbers))])
    note = '<p class="note">Each file scored on the evaluated images; speed measured on the machine that ran it.</p>'
    return "<h2>Exports</h2>" + _table([*header, "images/s"], cells) + note


def _timings(files):
    timings = files["timings"]
    if not timings:
        return None
    return "<h2>Timings</h2>" + _table(
        ["step", "seconds"], [[_cell(k), _cell(f"{float(v):.1f}")] for k, v in timings.items()]
    )


def _versions():
    import keras
    import tensorflow as tf

    versions = {
        "keras_transfer": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    return "<h2>Versions</h2>" + _table(["package", "version"], [[_cell(k), _cell(v)] for k, v in versions.items()])
