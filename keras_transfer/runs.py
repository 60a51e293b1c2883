"""The run folder: its layout (one table of paths), its identity and lock, the commit of each epoch, resume, and
the readers that reports use.

Every file a run folder holds is named in `FILES` and nowhere else; the modules that write or read one ask
`run_file(run_dir, key)` for its path.

Each epoch is committed like a database transaction (write ahead, then commit, then apply): the epoch's backup
(weights and optimizer state) and, when it is the best so far, a candidate checkpoint are written under new names;
then `backup/state.json` is replaced in one rename, the commit point, holding the epoch, every history row and the
best record; then `history.csv`, `checkpoints/best.keras` and `checkpoints/best.json` are brought in line with it.
A kill before the commit loses only the epoch in progress (its files are removed on resume); a kill after it is
finished on resume (`apply_state`). So whatever instant a kill lands, the rerun ends with every epoch exactly once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import tempfile

import keras
import numpy as np

from keras_transfer.files import (
    atomic_path,
    exclusive,
    process_alive,
    remove_path,
    remove_stale_temporaries,
    replace,
    write_text,
)
from keras_transfer.terminal import error_line

logger = logging.getLogger(__name__)

FILES = {  # key -> path inside a run folder ("/" separates folders; {fields} are filled by run_file)
    "identity": "run.json",
    "lock": "run.lock",
    "complete": "complete.json",
    "config": "config.yaml",
    "data": "data.json",
    "history": "history.csv",
    "stage1": "stage1.weights.h5",
    "best": "checkpoints/best.keras",
    "best_record": "checkpoints/best.json",
    "best_candidate": "checkpoints/best-epoch{epoch}.keras",
    "backup": "backup",
    "state": "backup/state.json",
    "backup_weights": "backup/{stage}-epoch{epoch}.weights.h5",
    "logs": "logs",
    "features": "features",
    "model": "model.keras",
    "onnx": "model.onnx",
    "report": "report.json",
    "report_html": "report.html",
    "report_text": "report.txt",
    "confusion": "confusion.png",
    "pr_curves": "pr_curves.png",
    "predictions": "predictions.npz",
    "examples": "examples",
    "examples_index": "examples/examples.json",
    "comparison": "comparison.json",
    "timings": "timings.json",
    "splits": "splits.csv",
    "label_issues": "label_issues.csv",  # suspected label errors among the training images
    "pseudo_labels": "pseudo_labels.csv",  # the unlabelled images' pseudo-labels (--unlabelled)
    "pseudo_check": "pseudo_labels.json",  # the validation check that kept or refused them
    "scratch": "scratch",
    "exports": "exports",  # benchmark_exports' files, in a run
    "exports_table": "exports.json",  # its table, in the folder it writes to
}
_FOLDERS = ("checkpoints", "backup", "logs")


def run_file(run_dir, key, **fields):
    """The path of the run folder's file `key` (a key of `FILES`; `fields` fill its `{...}` parts)."""
    return os.path.join(run_dir, *FILES[key].format(**fields).split("/"))


# --- identity -------------------------------------------------------------------------------------------------


class RunFolderMismatch(ValueError):
    """The run folder holds another run (other settings or other data)."""


def claim(run_dir, section, identity, ways_out, *, record=True):
    """Records `identity` (a JSON-able dict of what changes the result) under `section` of the folder's `run.json`,
    or checks it against the one recorded there by an earlier call. With `record=False` it only checks the keys
    of `identity` and writes nothing (a check before the rest of the identity is known).

    Raises:
        RunFolderMismatch: naming each value that differs (`learning_rate 0.001 -> 0.01`) and `ways_out`.
    """
    path = run_file(run_dir, "identity")
    recorded = _read_json(path)
    identity = json.loads(json.dumps(identity, default=str))  # as it reads back
    if section in recorded:
        old = recorded[section] if record else {k: recorded[section].get(k, "(unset)") for k in identity}
        differ = _differences(old, identity)
        if differ:
            shown = "; ".join(differ[:6]) + (f"; and {len(differ) - 6} more" if len(differ) > 6 else "")
            raise RunFolderMismatch(f"The run folder {os.fspath(run_dir)!r} holds another run: {shown}. {ways_out}")
        return
    if section == "run" and not recorded and _holds_a_run(run_dir):
        raise RunFolderMismatch(
            f"The run folder {os.fspath(run_dir)!r} holds files of a run whose settings were not recorded "
            f"(no {FILES['identity']}). {ways_out}"
        )
    if record:
        os.makedirs(run_dir, exist_ok=True)
        write_text(path, json.dumps({**recorded, section: identity}, indent=1, sort_keys=True))


def _differences(old, new, prefix=""):
    keys = sorted(set(old) | set(new)) if isinstance(old, dict) and isinstance(new, dict) else None
    if keys is None:
        return [] if old == new else [f"{prefix or 'value'} {_short(old)} → {_short(new)}"]
    found = []
    for key in keys:
        found += _differences(
            old.get(key, "(unset)"), new.get(key, "(unset)"), f"{prefix}{key}" if not prefix else f"{prefix}.{key}"
        )
    return found


def _short(value):
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _holds_a_run(run_dir):
    return any(os.path.exists(run_file(run_dir, key)) for key in ("config", "history", "state", "model"))


def empty_run_folder(run_dir):
    """Removes everything in a run folder but its lock (for `--overwrite`). Refuses a folder that holds other
    files than a run's, so a mistyped `--output` never empties a folder of yours."""
    if not os.path.isdir(run_dir):
        return
    ours = {FILES[key].split("/")[0] for key in FILES}
    names = [n for n in os.listdir(run_dir) if n != FILES["lock"]]
    strangers = sorted(n for n in names if n not in ours and not n.startswith(".tmp-"))
    if strangers:
        raise ValueError(
            f"--overwrite empties a run folder, but {os.fspath(run_dir)!r} also holds {strangers[:5]}, which no "
            "run writes. Choose another --output."
        )
    for name in names:
        remove_path(os.path.join(run_dir, name))


def mark_complete(run_dir, facts):
    """Records that the run finished (the last write of a run: `complete.json`)."""
    write_text(run_file(run_dir, "complete"), json.dumps(facts, indent=1, default=str))


def read_complete(run_dir):
    """What `mark_complete` recorded, or None for a run that has not finished."""
    return _read_json(run_file(run_dir, "complete")) or None


def run_model(path):
    """`(model file, run folder)` for a run folder or a `.keras` file inside one (`model.keras`,
    `checkpoints/best.keras`); `(path, None)` for a file outside a run folder."""
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(run_file(path, "model")):
        return run_file(path, "model"), path
    for folder in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        if os.path.isfile(run_file(folder or ".", "data")):
            return path, folder or "."
    return path, None


def run_labels(run_dir):
    """`(class_names, thresholds)` a run recorded: its classes (`data.json`) and, for several labels per image,
    the thresholds tuned for its report (`report.json`; None where it has none)."""
    data = read_run_json(run_dir, "data")
    thresholds = read_run_json(run_dir, "report").get("thresholds") if data.get("multi_label") else None
    return data.get("class_names"), thresholds


def write_splits(run_dir, files):
    """`splits.csv`: every image's path and the split it went to (`files`: split -> paths, in each split's order,
    as `DatasetInfo.files`)."""
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "split"])
    writer.writerows((path, split) for split, paths in files.items() for path in paths)
    write_text(run_file(run_dir, "splits"), rows.getvalue())


def read_splits(run_dir):
    """split -> the paths `write_splits` recorded, in order; {} when the run has no `splits.csv`."""
    found = {}
    with contextlib.suppress(OSError), open(run_file(run_dir, "splits"), newline="") as f:
        for row in csv.DictReader(f):
            found.setdefault(row["split"], []).append(row["path"])
    return found


def read_run_json(run_dir, key):
    """A JSON file of the run folder (`"report"`, `"data"`, ...) as a dict; {} when it is missing or unreadable."""
    return _read_json(run_file(run_dir, key))


# --- lock -----------------------------------------------------------------------------------------------------


def locked(run_dir):
    """Holds the run folder's lock (`run.lock`, `files.exclusive`) while the block runs.

    Raises:
        RuntimeError: when another live process holds the lock, naming its pid.
    """
    return exclusive(run_dir, run_file(run_dir, "lock"), "run folder")


# --- the commit of each epoch -----------------------------------------------------------------------------------


def prepare_folder(run_dir):
    """Creates the training folders and finishes or removes what a killed run left (see `apply_state`)."""
    for folder in _FOLDERS:
        os.makedirs(os.path.join(run_dir, folder), exist_ok=True)
    apply_state(run_dir, read_state(run_dir))
    remove_features(run_dir)
    remove_stale_temporaries(run_dir)


def read_state(run_dir):
    """The last committed epoch's record (`backup/state.json`), or None before the first commit.

    Raises:
        DamagedRun: when the file is there but not a whole record (never read as "nothing committed": that would
            silently drop the committed epochs).
    """
    path = run_file(run_dir, "state") if run_dir else None
    if not path or not os.path.exists(path):
        return None
    state = _read_json(path)
    if not {"stage", "epoch", "weights", "history"} <= set(state):
        raise DamagedRun(
            f"The run's commit record {path} is damaged (not the JSON record of a committed epoch), so the epochs "
            f"committed in {run_dir!r} cannot be resumed. Restore the file, or pass --overwrite to start afresh."
        )
    return state


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; its message says what was committed and how to go on."""


def interrupted(run_dir):
    """The `Interrupted` of a run stopped now: how many epochs its folder holds committed, and that the same
    command resumes after them."""
    try:
        state = read_state(run_dir)
    except DamagedRun:
        state = None
    if not state:
        return Interrupted(f"stopped before an epoch was committed in {run_dir}; the same command starts it again.")
    n = len(state["history"])
    return Interrupted(
        f"stopped with {n} epoch{'s' if n != 1 else ''} committed in {run_dir}; the same command resumes after "
        f"epoch {n}."
    )


class DamagedRun(RuntimeError):
    """A committed file of a run folder cannot be read: the run refuses to go on from less than was committed."""


def apply_state(run_dir, state):
    """Brings the run folder in line with the committed `state`: `history.csv`, the best checkpoint and its
    record; removes backups and candidate checkpoints that are not the committed ones, and temporaries of dead
    processes. Safe to repeat (a kill during it is finished by the next call)."""
    keep = {"backup": {os.path.basename(run_file(run_dir, "state"))}, "checkpoints": set()}
    if state:
        history = _history_text(state["history"])
        if _read_text(run_file(run_dir, "history")) != history:
            write_text(run_file(run_dir, "history"), history)
        keep["backup"].add(state["weights"])
        best = state.get("best")
        if best:
            candidate = run_file(run_dir, "best_candidate", epoch=best["epoch"])
            if os.path.exists(candidate):
                replace(candidate, run_file(run_dir, "best"))
            if _read_json(run_file(run_dir, "best_record")) != best:
                write_text(run_file(run_dir, "best_record"), json.dumps(best))
    keep["checkpoints"] |= {os.path.basename(run_file(run_dir, key)) for key in ("best", "best_record")}
    for folder, names in keep.items():
        folder = os.path.join(run_dir, folder)
        remove_stale_temporaries(folder)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            if name not in names and not name.startswith(".tmp-"):
                remove_path(os.path.join(folder, name))


class EpochCommit(keras.callbacks.Callback):
    """Commits each epoch of `stage` to the run folder (see the module's docstring): the fitted model's weights
    and optimizer state, the history row, and `full_model` as the best checkpoint when `monitor` improved."""

    def __init__(self, run_dir, full_model, stage, monitor):
        super().__init__()
        self.run_dir, self.full_model, self.stage, self.monitor = run_dir, full_model, stage, monitor

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        state = read_state(self.run_dir) or {"history": {}, "best": None}
        weights = os.path.basename(run_file(self.run_dir, "backup_weights", stage=self.stage, epoch=epoch))
        with atomic_path(os.path.join(self.run_dir, FILES["backup"], weights)) as tmp:
            self.model.save_weights(tmp)
        best, value = state["best"], logs.get(self.monitor)
        if value is not None and np.isfinite(value) and (best is None or value < best["value"]):
            with atomic_path(run_file(self.run_dir, "best_candidate", epoch=epoch), work_dir=True) as tmp:
                self.full_model.save(tmp)
            best = {"monitor": self.monitor, "value": value, "epoch": epoch}
        history = {e: row for e, row in state["history"].items() if int(e) < epoch}
        state = {"stage": self.stage, "epoch": epoch, "weights": weights, "history": {**history, str(epoch): logs}}
        write_text(run_file(self.run_dir, "state"), json.dumps({**state, "best": best}))  # the commit point
        apply_state(self.run_dir, {**state, "best": best})


def resume(run_dir, model, stage):
    """Loads the committed backup of `stage` into `model` (weights and optimizer state); returns the last epoch
    committed in that stage, or None when the stage has none."""
    state = read_state(run_dir)
    if not state or state["stage"] != stage:
        return None
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded
    path = os.path.join(run_dir, FILES["backup"], state["weights"])
    try:
        model.load_weights(path)
    except Exception as e:  # h5py's OSError, Keras's ValueError: the file's own words, its name added
        raise DamagedRun(
            f"The committed backup {path} cannot be read ({error_line(e)}), so the run cannot resume after epoch "
            f"{state['epoch'] + 1}. Restore the file, or pass --overwrite to start afresh."
        ) from e
    logger.info("Resuming after epoch %d (committed in %s)", state["epoch"] + 1, run_dir)
    return state["epoch"]


def run_callbacks(run_dir):
    """The run folder's TensorBoard logs; none without a run folder."""
    return [keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"))] if run_dir else []


# --- feature caches ---------------------------------------------------------------------------------------------

_FEATURES_PREFIX = "keras_transfer_features_"


def feature_cache(run_dir):
    """A new folder for stage 1's on-disk feature cache: `features/` in the run folder, else one in the temporary
    folder named with this process's pid (so a later run removes it when this process was killed)."""
    if run_dir:
        path = run_file(run_dir, "features")
        remove_features(run_dir)
        os.makedirs(path)
        return path
    remove_features(None)
    return tempfile.mkdtemp(prefix=f"{_FEATURES_PREFIX}{os.getpid()}_")


def remove_features(run_dir, path=None):
    """Removes the run folder's feature cache (or `path`); without either, the caches of dead processes."""
    if path or run_dir:
        remove_path(path or run_file(run_dir, "features"))
        return
    folder = tempfile.gettempdir()
    for name in os.listdir(folder):
        match = re.match(rf"{_FEATURES_PREFIX}(\d+)_", name)
        if match and not process_alive(int(match.group(1))):
            remove_path(os.path.join(folder, name))


# --- readers ----------------------------------------------------------------------------------------------------


def read_history(run_dir):
    """epoch -> {metric: value} from a run folder's `history.csv` (empty when there is none)."""
    path = run_file(run_dir, "history")
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {int(row.pop("epoch")): {k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)}


def _history_text(rows):
    rows = {int(e): row for e, row in rows.items()}
    keys = sorted({k for row in rows.values() for k in row})
    lines = [",".join(["epoch", *keys])]
    lines += [",".join([str(e), *(str(rows[e].get(k, "")) for k in keys)]) for e in sorted(rows)]
    return "\n".join(lines) + "\n"


def _read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
