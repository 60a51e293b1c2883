"""The run folder: its layout (one table of paths), the callbacks that commit each epoch, and the readers.

Every file a run folder holds is named in `FILES` and nowhere else; the modules that write or read one ask
`run_file(run_dir, key)` for its path.
"""

from __future__ import annotations

import csv
import json
import os

import keras
import numpy as np

from keras_transfer.files import atomic_path, write_text

FILES = {  # key -> path inside a run folder ("/" separates folders)
    "config": "config.yaml",
    "data": "data.json",
    "history": "history.csv",
    "stage1": "stage1.weights.h5",
    "best": "checkpoints/best.keras",
    "best_record": "checkpoints/best.json",
    "backup": "backup",
    "logs": "logs",
    "features": "features",
    "model": "model.keras",
    "onnx": "model.onnx",
    "report": "report.json",
    "report_html": "report.html",
    "report_text": "report.txt",
    "confusion": "confusion.png",
    "predictions": "predictions.npz",
    "examples": "examples",
    "examples_index": "examples/examples.json",
    "comparison": "comparison.json",
    "timings": "timings.json",
    "scratch": "scratch",
}
TRAINING_FILES = ("stage1", "best", "best_record", "history", "logs", "backup", "features")  # what fine_tune writes


def run_file(run_dir, key):
    """The path of the run folder's file `key` (a key of `FILES`)."""
    return os.path.join(run_dir, *FILES[key].split("/"))


def run_paths(run_dir):
    """key -> path of what `fine_tune` writes into `run_dir` (created with its folders); None without a run_dir."""
    if not run_dir:
        return None
    for folder in ("checkpoints", "logs", "backup"):
        os.makedirs(os.path.join(run_dir, folder), exist_ok=True)
    return {key: run_file(run_dir, key) for key in TRAINING_FILES}


def run_callbacks(model, paths, has_val):
    """The callbacks that commit each epoch to the run folder: best checkpoint, history, TensorBoard logs."""
    if not paths:
        return []
    return [
        _BestCheckpoint(model, paths["best"], paths["best_record"], monitor="val_loss" if has_val else "loss"),
        _HistoryFile(paths["history"]),
        keras.callbacks.TensorBoard(paths["logs"]),
    ]


def backup_callback(paths, stage):
    """A stage's `BackupAndRestore` in `backup/<stage>`, kept after training ends, so rerunning a finished run
    trains nothing more; none without a run folder."""
    if not paths:
        return []
    return [keras.callbacks.BackupAndRestore(os.path.join(paths["backup"], stage), delete_checkpoint=False)]


class _BestCheckpoint(keras.callbacks.Callback):
    """`checkpoints/best.keras`: the full model (also while stage 1 fits the head on cached features) at its best
    `monitor` so far, across both stages and resumed runs (the best value is kept in `best.json` beside it),
    written atomically."""

    def __init__(self, full_model, path, record, monitor):
        super().__init__()
        self.full_model, self.path, self.record, self.monitor = full_model, path, record, monitor

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        best = _read_json(self.record).get("value", np.inf)
        if value < best:
            with atomic_path(self.path) as tmp:
                self.full_model.save(tmp)
            write_text(self.record, json.dumps({"monitor": self.monitor, "value": float(value), "epoch": epoch}))


class _HistoryFile(keras.callbacks.Callback):
    """`history.csv`, one row per epoch, rewritten atomically at every epoch end: an epoch trained again after a
    resume replaces its row, so each epoch appears exactly once and a kill never leaves half a line."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        rows = _read_history_file(self.path)
        rows[epoch] = {k: float(v) for k, v in (logs or {}).items()}
        keys = sorted({k for row in rows.values() for k in row})
        lines = [",".join(["epoch", *keys])]
        lines += [",".join([str(e), *(str(rows[e].get(k, "")) for k in keys)]) for e in sorted(rows)]
        write_text(self.path, "\n".join(lines) + "\n")


def read_history(run_dir):
    """epoch -> {metric: value} from a run folder's `history.csv` (empty when there is none)."""
    return _read_history_file(run_file(run_dir, "history"))


def _read_history_file(path):
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {int(row.pop("epoch")): {k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)}


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
