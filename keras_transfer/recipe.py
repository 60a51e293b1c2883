"""The whole recipe behind `keras-transfer`, as library calls on a `RunConfig`: load, build, (probe), fine-tune,
save, evaluate, export, and optionally the same model trained from scratch for comparison.

`run` prints the story a person reads in the terminal (the dataset, one line per epoch, a final table); the
library functions it calls only log.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.config import RunConfig, check_ranges, load_config
from keras_transfer.data import check_shards, load_dataset, source_from
from keras_transfer.data.pipeline import watch_service
from keras_transfer.data.shards import is_shards
from keras_transfer.data.sources import SOURCE_OPTIONS
from keras_transfer.data.tables import TABLE_OPTIONS
from keras_transfer.distribute import (
    cluster_addresses,
    finish_together,
    from_chief,
    get_strategy,
    is_multi_worker,
    set_mixed_precision,
    worker_rank,
)
from keras_transfer.evaluation import evaluate, linear_probe, tune_thresholds
from keras_transfer.export import benchmark_exports, export_onnx, export_saved_model, format_exports
from keras_transfer.export.layout import version_file
from keras_transfer.files import atomic_path, versions, write_text
from keras_transfer.images import image_size
from keras_transfer.label_issues import FOLDS, issues_csv, split_label_issues
from keras_transfer.lr_find import find_learning_rate, plot_findings
from keras_transfer.memory import check_memory
from keras_transfer.models import (
    build_model,
    check_input_size,
    default_input_size,
    input_size,
    load_model,
    model_view,
)
from keras_transfer.objectives import watched
from keras_transfer.policies import check_policy, place_policy
from keras_transfer.report import write_html
from keras_transfer.runs import (
    claim,
    empty_run_folder,
    interrupted,
    locked,
    mark_complete,
    read_complete,
    read_history,
    read_run_json,
    run_file,
    write_splits,
)
from keras_transfer.semi_supervised import (
    ROUNDS,
    THRESHOLD,
    pseudo_check_line,
    pseudo_label_images,
    pseudo_labels_csv,
    pseudo_summary,
    read_pseudo_labels,
)
from keras_transfer.terminal import error_line
from keras_transfer.training import TrainingOptions, fine_tune

logger = logging.getLogger(__name__)

NOT_IDENTITY = (
    "output",
    "export",
    "export_onnx",
    "export_bench",
    "label_issues",
    "overwrite",
    "data_service",
    "peer_timeout",
)  # settings not changing the result
WAYS_OUT = "Choose another --output, or pass --overwrite to start this one afresh."


def run(config, verbose=False):
    """Runs one fine-tuning job as configured; writes the run folder `config.output`. Returns 0.

    The folder belongs to this run (`runs.claim`): the same settings and data resume a killed run or, when the run
    is complete, do nothing; others are refused (`--overwrite` empties the folder first).

    Raises:
        ValueError: for settings that do not fit together, data that cannot be used, or a run folder that holds
            another run (before anything is written).
        OSError: when data, weights or the output folder cannot be read or written.
        RuntimeError: when another process is running into the same folder.
        runs.Interrupted: (a KeyboardInterrupt) on Ctrl-C, saying how many epochs are committed.
    """
    resolved = resolve(config)
    workers, rank = worker_rank() if config.strategy in ("auto", "multi_worker") else (1, 0)
    if workers > 1 and config.compare_scratch:
        raise ValueError(
            "--compare-scratch trains a second model after the run, on one machine: run it without TF_CONFIG "
            f"(here {workers} workers). Received: compare_scratch=True"
        )
    if workers > 1 and config.unlabelled is not None:
        raise ValueError(
            "--unlabelled chooses pseudo-labels on one machine: run it without TF_CONFIG (here "
            f"{workers} workers). Received: unlabelled={config.unlabelled!r}"
        )
    if rank == 0:  # under several workers only the chief (worker 0) writes the run and export folders
        _check_writable(config)
    keras.utils.set_random_seed(config.seed)
    # the strategy first: several workers must configure TensorFlow's collectives before its runtime starts
    strategy = get_strategy(config.strategy, config.peer_timeout)
    policy = set_mixed_precision(config.mixed_precision)
    if not is_multi_worker(strategy):
        workers = 1
    try:
        if rank > 0:
            with _prefixed(f"[worker {rank}] "), _peers_named(strategy, None):
                _follow(config, resolved, strategy)
                finish_together(strategy)  # until the chief has written the run
                return 0
        with _peers_named(strategy, config.output):
            with locked(config.output):
                _claimed_run(config, resolved, policy, strategy, verbose, workers)
            finish_together(strategy)
            return 0
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM under the command
        raise interrupted(config.output) from None


def _claimed_run(config, resolved, policy, strategy, verbose, workers=1):
    """`run` once the folder's lock is held: the folder claimed, the data loaded, then trained (or resumed)."""
    cluster = {"workers": workers} if workers > 1 else {}  # a rerun on another number of workers is refused
    if not config.overwrite:
        claim(config.output, "run", {"settings": _settings(config), **cluster}, WAYS_OUT, record=False)
    data = _load(config, resolved.size, strategy)
    with strategy.scope():
        model = _build(config, data["info"], resolved)
    _check_model(config, model)
    identity = {"settings": _settings(config), "data": _data_identity(data["info"]), **cluster}
    if config.overwrite:
        empty_run_folder(config.output)
    claim(config.output, "run", identity, WAYS_OUT)
    complete = read_complete(config.output)
    if is_multi_worker(strategy):
        from_chief(strategy, [bool(complete)])  # the other workers stop too, or train with the chief
    if complete:
        return _already_complete(config, data["info"], _run_id(config, identity))
    _write_config(config, data)
    return _run(config, resolved, model, data, strategy, policy, _run_id(config, identity), verbose)


def _follow(config, resolved, strategy):
    """`run` on a worker other than the chief: the same data and model, the training steps in step with the
    chief, and nothing written: the chief's run folder is the run's (its state decides what to resume)."""
    data = _load(config, resolved.size, strategy)
    with strategy.scope():
        model = _build(config, data["info"], resolved)
    _check_model(config, model)
    if from_chief(strategy, [False])[0]:
        logger.info(f"The run in worker 0's {config.output} is complete; nothing to train.")
        return 0
    _train(resolved, config, model, data, strategy, None)  # nothing written: the run folder is the chief's
    _say_weights(model)
    logger.info(f"Training done; worker 0 evaluates and exports the model into its {config.output}.")
    return 0


def _say_weights(model):
    """Under several workers: a digest of the trained weights, which every worker prints the same."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    logger.info(f"Trained weights: sha256 {digest.hexdigest()[:16]} (the same on every worker)")


@contextlib.contextmanager
def _prefixed(prefix):
    """Every log line of the block starts with `prefix` (a worker that is not the chief says which it is)."""

    def add(record):
        if not str(record.msg).startswith(prefix):  # a record passes each handler
            record.msg = prefix + str(record.msg)
        return True

    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(add)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(add)


@contextlib.contextmanager
def _peers_named(strategy, output):
    """Under several workers, TensorFlow's error when another worker stops (killed, its machine gone, its run
    refused) becomes one that says so and how to resume: the same command on every worker."""
    try:
        yield
    except (
        tf.errors.UnavailableError,
        tf.errors.CancelledError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.InternalError,
    ) as e:
        if not is_multi_worker(strategy):
            raise
        committed = f" {interrupted(output)}" if output else ""
        raise RuntimeError(
            f"{_stopped_peers(e)}.{committed} Start every worker again with the same command: they resume from "
            "worker 0's last committed epoch."
        ) from e


def _stopped_peers(error):
    """Which other workers TensorFlow's `error` names (the task that reset its connection, or that stopped sending
    heartbeats), by name and address."""
    tasks = cluster_addresses()
    me = tasks[worker_rank()[1]][0]
    found = re.findall(r"/job:(worker|chief)(?:/replica:\d+)?/task:(\d+)", str(error))
    names = dict.fromkeys("chief" if job == "chief" else f"worker {index}" for job, index in found)
    named = [f"{name} ({dict(tasks).get(name, '?')})" for name in names if name != me]
    if named:
        return f"{', '.join(named)} stopped or stopped answering"
    return f"another worker stopped or stopped answering ({error_line(error)})"


def _run(config, resolved, model, data, strategy, policy, run_id, verbose):
    timings, probe, exported = _Timings(config.output), None, None
    with timings.step("label issues"):
        issues = _label_issues(config, model, data, strategy)
    if config.unlabelled is not None and config.semi_supervised == "pseudo-label":
        with timings.step("pseudo-labels"):
            data = _pseudo_labelled(config, resolved, model, data, strategy)
    if config.compare_scratch:
        with timings.step("linear probe"):
            probe = _probe(model, data)
    with timings.step("training"):
        stopper = _train(resolved, config, model, data, strategy, config.output, verbose=verbose)
    if is_multi_worker(strategy):
        _say_weights(model)
    with atomic_path(run_file(config.output, "model"), work_dir=True) as tmp:
        model.save(tmp)
    if is_multi_worker(strategy):  # the rest is the chief's alone: its model read back outside the strategy
        model = load_model(run_file(config.output, "model"))
    data["thresholds"], data["tta"] = _thresholds(model, data), config.tta
    with timings.step("evaluation"):
        report = _evaluate(model, data, config.output)
    metrics = {report.headline_name: report.headline, "split": data["split"]} if report else {}
    if config.export:
        with timings.step("export"):
            exported = _export(config, model, data["info"].class_names, metrics, data["thresholds"], run_id)
    logger.info(f"\nRun folder: {config.output}  (dtype policy {policy}, {strategy.num_replicas_in_sync} replica(s))")
    _closing_lines(config, data, report, issues, stopper)
    if exported:
        logger.info(f"\nSavedModel: {exported}")
    if config.export_onnx:
        onnx_path = export_onnx(
            model, run_file(config.output, "onnx"), class_names=data["info"].class_names, thresholds=data["thresholds"]
        )
        logger.info(f"ONNX: {onnx_path}")
    if config.export_bench and report:
        with timings.step("export benchmark"):
            _bench_exports(model, data, config.output)
    if config.compare_scratch and report:
        with timings.step("scratch comparison"):
            _compare_scratch(config, resolved, report, probe, data, strategy, verbose)
    if report:
        logger.info(f"Report: {write_html(config.output)}")
    mark_complete(config.output, {"export": exported, **metrics})
    return 0


def _label_issues(config, model, data, strategy):
    """Suspected label errors among the training images, from `model` before training (its pretrained features),
    written to the run folder's `label_issues.csv`: `(count, path, training images)`, or None where none were
    looked for (said why, unless turned off or the source has no files to name)."""
    info, path = data["info"], run_file(config.output, "label_issues")
    if not config.label_issues or info.files is None:
        return None
    if os.path.isfile(path):  # found before a kill; the run folder's identity says they are of these images
        with open(path, newline="") as f:
            return sum(1 for _ in csv.DictReader(f)), path, info.sizes["train"]
    enough = [n for n in info.counts["train"].values() if n >= FOLDS]
    if is_multi_worker(strategy) or len(enough) < 2:
        why = "under several workers" if len(enough) >= 2 else f"fewer than {FOLDS} training images in two classes"
        logger.info(f"Suspected label errors: not looked for ({why}; `keras-transfer label-issues` finds them)")
        return None
    issues = split_label_issues(model, info, batch_size=config.batch_size, seed=config.seed)
    write_text(path, issues_csv(issues.rows))
    found = (len(issues.rows), path, info.sizes["train"])
    logger.info(
        f"{_issues_line(found)} ({FOLDS}-fold probe on the backbone's features before training, confident "
        f"learning; {sum(issues.seconds.values()):.1f} s)"
    )
    return found


def _pseudo_labelled(config, resolved, model, data, strategy):
    """`data` again with the unlabelled images the method chose, under their pseudo-labels, in the training split
    (`semi_supervised`); the choice is written to `pseudo_labels.csv`, which a resumed run reads back."""
    info, path = data["info"], run_file(config.output, "pseudo_labels")
    pseudo = read_pseudo_labels(path, info)
    if pseudo is None:
        pseudo, confidence, check, seconds = pseudo_label_images(
            model, data["train"], info, validation=data["val"], per_class=config.pseudo_labels_per_class
        )
        chosen = pseudo_summary(pseudo, info.labels["unlabelled"], info.class_names)
        if check is not None:
            write_text(run_file(config.output, "pseudo_check"), json.dumps(check, indent=1))
            chosen = pseudo_check_line(check) if not check["used"] else f"{chosen}; {pseudo_check_line(check)}"
        write_text(path, pseudo_labels_csv(pseudo, confidence, info))
        logger.info(
            f"Pseudo-labels ({config.semi_supervised}: {ROUNDS} rounds of a linear probe on the backbone's features, "
            f"at most {config.pseudo_labels_per_class} per class, probability >= {THRESHOLD}; {seconds:.1f} s): "
            f"{chosen}"
        )
    data_logger = logging.getLogger("keras_transfer.data")
    level, data_logger.level = data_logger.level, logging.ERROR  # its warnings were printed at the first load
    try:
        again = _load(config, resolved.size, strategy, pseudo_labels=pseudo)
    finally:
        data_logger.setLevel(level)
    check = read_run_json(config.output, "pseudo_check")
    refused = check and not check["used"]
    again["pseudo"] = (
        f"none, {pseudo_check_line(check)}"
        if refused
        else pseudo_summary(pseudo, info.labels["unlabelled"], info.class_names)
    )
    logger.info(f"Training on {info.sizes['train']} labelled and {int(np.sum(pseudo >= 0))} pseudo-labelled images")
    if again["info"].files is not None:
        files = dict(again["info"].files)
        files["unlabelled"] = [f for f, p in zip(files["unlabelled"], pseudo) if p < 0]  # the rest: unused
        write_splits(config.output, files)
    return again


def _closing_lines(config, data, report, issues, stopper):
    """Under the per-epoch lines: the history table, what early stopping kept, the test report, the label issues
    and the pseudo-labels."""
    rows = read_history(config.output)
    print_history(rows, config.head_epochs)
    kept = kept_weights_line(stopper, rows, config.head_epochs + config.fine_tune_epochs)
    if kept:
        logger.info(kept)
    if report:
        logger.info(f"\n{data['split']}: {report}")
    if issues is not None:
        hint = f"; to train without them: --exclude-issues {issues[1]}" if issues[0] else ""
        logger.info(f"\n{_issues_line(issues)}{hint}")
    if "pseudo" in data:
        logger.info(f"Pseudo-labelled: {data['pseudo']}")


def _issues_line(found):
    count, path, total = found
    if not count:
        return f"Suspected label errors: none among the {total} training images ({path} lists none)"
    return f"Suspected label errors: {count} of the {total} training images, in {path}"


def _thresholds(model, data):
    """A multi-label run's per-label thresholds: tuned on the validation split (highest F1 per label), else 0.5."""
    if not data["info"].multi_label:
        return None
    if data["val"] is None:
        logger.info("Thresholds: 0.5 for every label (no validation split to tune them on)")
        return None
    thresholds = tune_thresholds(model, data["val"])
    names = data["info"].class_names
    logger.info(
        "Thresholds tuned on the validation split (highest F1 per label): "
        + ", ".join(f"{n} {t:.2f}" for n, t in zip(names, thresholds))
    )
    return thresholds


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A run's settings resolved once, before data loads, in the values the library takes."""

    size: tuple  # (height, width) the images load at and the model is built at
    weights: object  # "imagenet", None or a weights file
    augment: bool  # in-model augmentation ("auto" resolved: on for image files)
    options: TrainingOptions  # fine_tune's less common settings, checked
    stages: dict  # fine_tune's epochs, policy (checked against the backbone's table row) and rates


def resolve(config, scratch=False):
    """`config` resolved and checked before any data loads or file is written: the image size as a pair (the
    backbone's default, or the size a `pretrain` weights file was trained at), the policy, the training options.
    `scratch`: the same architecture trained from random weights, every layer, for both stages' epochs.

    Raises:
        ValueError: for a setting out of its range, or settings that do not fit the backbone or each other.
    """
    check_ranges(config)
    if config.compare_scratch and config.weights is None:
        raise ValueError(
            "--compare-scratch compares pretrained weights with random ones; give --weights imagenet "
            f"or a weights file. Received: weights={config.weights!r}"
        )
    size = image_size(config.image_size) if config.image_size else default_input_size(config.backbone, config.weights)
    check_input_size(config.backbone, size)
    check_policy(config.unfreeze, config.backbone)
    options = TrainingOptions(
        optimizer=config.optimizer,
        label_smoothing=config.label_smoothing,
        train_batchnorm=config.train_batchnorm or scratch,
        cache_features="auto" if scratch else config.cache_features,
        jit_compile=config.xla,
        head_init=None if scratch else config.head_init,
        class_weight=config.class_weight,
        layer_decay=1.0 if scratch else config.layer_decay,
    )
    epochs = config.head_epochs + config.fine_tune_epochs
    stages = dict(
        head_epochs=0 if scratch else config.head_epochs,
        fine_tune_epochs=epochs if scratch else config.fine_tune_epochs,
        unfreeze="all" if scratch else config.unfreeze,
        learning_rate=config.learning_rate,
        fine_tune_learning_rate=config.learning_rate if scratch else config.fine_tune_learning_rate,
    )
    weights = None if scratch else config.weights
    augment = _image_files(config.data) if config.augment == "auto" else bool(config.augment)
    return Resolved(size, weights, augment, options, stages)


def _image_files(data):
    """Whether `data` names image files (a folder, a CSV table, shards of them): photos, which the default
    augmentation suits; arrays, the offline sets and TFDS names are left as they are (a flipped digit is another
    digit)."""
    return os.path.exists(str(data)) and str(data) not in ("digits", "fashion_mnist")


def _check_writable(config):
    """Creates the output (and export) folders and writes a probe file into each, so that an unwritable folder
    fails before any work; an export folder is never the run folder or inside it (`--overwrite` empties that)."""
    if config.export:
        export, output = (os.path.realpath(f) for f in (config.export, config.output))
        if export == output or export.startswith(output + os.sep):
            raise ValueError(
                f"export must be a folder of its own, not the run folder or inside it (--overwrite empties the run "
                f"folder). Received: export={config.export!r}, output={config.output!r}"
            )
    for folder, flag in ((config.export, "--export"), (config.output, "--output")):
        if folder:
            check_folder(folder, flag)


def check_folder(folder, flag):
    """Creates `folder` if needed and writes a probe file into it, so an unwritable folder fails before work."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".tmp-{os.getpid()}-writable")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise OSError(f"Cannot write into {folder!r}: {e.strerror or e}. Choose a writable {flag}.") from e


def _check_model(config, model):
    """What needs the built model: the policy placed over its layer names (nothing changed), and the training
    memory at this size."""
    place_policy(model_view(model), config.unfreeze)  # raises for a layer name the backbone lacks
    check_memory(model, config.batch_size)


def _settings(config):
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IDENTITY}


def _data_identity(info):
    return {"source": info.source, "class_names": info.class_names, "counts": info.counts}


def _run_id(config, identity):
    """One run's id: its folder and identity; written into its export so a rerun finds what it exported."""
    text = json.dumps([os.path.abspath(config.output), identity], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_rates(config, plot_path, steps=100):
    """`keras-transfer lr-find`: the learning-rate range test (`lr_find.find_learning_rate`) for stage 1 (the
    head) and stage 2 (`config.unfreeze`) on the run's data and model; prints both suggestions of each, saves the
    plot. Writes nothing else. Returns 0."""
    resolved = resolve(config)
    keras.utils.set_random_seed(config.seed)
    data = _load(config, resolved.size, get_strategy("default"))
    model = _build(config, data["info"], resolved)
    findings = [
        find_learning_rate(model, data["train"], unfreeze=policy, steps=steps, optimizer=config.optimizer)
        for policy in ("frozen", config.unfreeze)
    ]
    plot_findings(findings, plot_path)
    logger.info(f"\nLearning-rate range test, {steps} steps each ({config.optimizer}; plot: {plot_path}):")
    for flag, finding in zip(("--learning-rate", "--fine-tune-learning-rate"), findings):
        logger.info(
            f"  {flag:<27} {finding.suggestion:.1e} (valley)   {finding.steepest:.1e} (steepest descent)"
            f"   policy {finding.policy!r}{', the loss diverged before the end' if finding.stopped_early else ''}"
        )
    return 0


def export_bench(run_dir, repeats=5):
    """`keras-transfer export-bench RUN_DIR`: `export.benchmark_exports` for a finished run's `model.keras` on the
    run's evaluation split (calibrating int8 on its training split), into `<run>/exports/`; the report page gains
    the table. Returns 0.

    Raises:
        ValueError: for a folder without a finished run's `config.yaml` and `model.keras`.
    """
    paths = [run_file(run_dir, "config"), run_file(run_dir, "model")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{run_dir!r} holds no finished run: {', '.join(missing)} missing. Received: {run_dir!r}")
    config = RunConfig(**load_config(paths[0]))
    model = load_model(paths[1])
    data = _load(config, input_size(model), get_strategy("default"))
    if data["evaluated"] is None:
        raise ValueError(f"The run in {run_dir!r} has no test or validation split to measure the exports on")
    _bench_exports(model, data, run_dir, repeats)
    logger.info(f"Report: {write_html(run_dir)}")
    return 0


def _bench_exports(model, data, run_dir, repeats=5):
    images = data["info"].sizes[data["split"]]
    logger.info(f"\nExport benchmark: every format, scored on the {images} {data['split']} images")
    rows = benchmark_exports(
        model,
        data["evaluated"],
        representative_data=data["train"],
        output_dir=run_file(run_dir, "exports"),
        repeats=repeats,
    )
    logger.info("%s", format_exports(rows))
    return rows


def _already_complete(config, info, run_id):
    """A finished run: says so; with `--export` and no export yet, exports its model (once, as a run does)."""
    done = read_complete(config.output)
    logger.info(f"The run in {config.output} is complete (these settings and data); nothing to train.")
    print_history(read_history(config.output), config.head_epochs)
    if config.export and not done.get("export"):
        model = load_model(run_file(config.output, "model"))
        metrics = {k: v for k, v in done.items() if k != "export"}
        thresholds = read_run_json(config.output, "report").get("thresholds") if info.multi_label else None
        done["export"] = _export(config, model, info.class_names, metrics, thresholds, run_id)
        mark_complete(config.output, done)
        logger.info(f"\nSavedModel: {done['export']} (exported now, from {run_file(config.output, 'model')})")
    elif done.get("export"):
        logger.info(f"\nSavedModel: {done['export']}")
    logger.info(f"To run it again: {WAYS_OUT[0].lower() + WAYS_OUT[1:]}")
    return 0


class _Timings:
    """`with timings.step("name"):` adds the block's seconds to `timings.json` in the run folder."""

    def __init__(self, folder):
        self.path, self.seconds = run_file(folder, "timings"), {}

    @contextlib.contextmanager
    def step(self, name):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        write_text(self.path, json.dumps(self.seconds, indent=2))


def _load(config, size, strategy, pseudo_labels=None):
    """The datasets, the split evaluated at the end (test, else validation) and the DatasetInfo, printed
    (`pseudo_labels`: as `load_dataset` takes them)."""
    source = source_from(config.data, **{name: getattr(config, name) for name in SOURCE_OPTIONS})
    table = {name: getattr(config, name) for name in TABLE_OPTIONS}  # a given split's CSV reads as --data's
    given = {split: getattr(config, split) for split in ("validation", "test")}
    given = {k: source_from(v, **table) if v and os.path.isfile(v) else v for k, v in given.items()}
    train, val, test, info = load_dataset(
        source,
        validation=given["validation"],
        test=given["test"],
        image_size=size,
        batch_size=config.batch_size * strategy.num_replicas_in_sync,
        validation_split=config.validation_split,
        test_split=config.test_split,
        seed=config.seed,
        classes=config.classes,
        labels_per_class=config.labels_per_class,
        test_per_class=config.test_per_class,
        validation_per_class=config.validation_per_class,
        exclude_issues=config.exclude_issues,
        relabel_issues=config.relabel_issues,
        unlabelled=config.unlabelled,
        pseudo_labels=pseudo_labels,
    )
    if pseudo_labels is None:
        logger.info("%s", info)
    if config.compare_scratch and test is None and val is None:
        raise ValueError(
            "--compare-scratch needs images to compare on: give --test-split or --validation-split "
            "above 0 (or a data folder with test/ or validation/)."
        )
    evaluated, split = (test, "test") if test is not None else (val, "validation")
    return {"train": train, "val": val, "evaluated": evaluated, "split": split, "info": info}


def _write_config(config, data):
    info = data["info"]
    facts = {
        "source": info.source,
        "class_names": info.class_names,
        "image_size": list(info.image_size),
        "counts": info.counts,
        "sizes": info.sizes,
        "multi_label": info.multi_label,
        "evaluated": data["split"],
        "skipped": [list(map(str, s)) for s in info.skipped],
        "outliers": [list(map(str, s)) for s in info.outliers],
    }
    try:
        os.makedirs(config.output, exist_ok=True)
        write_text(run_file(config.output, "config"), config.to_yaml())
        write_text(run_file(config.output, "data"), json.dumps(facts, indent=1))
        if info.files is not None:
            write_splits(config.output, info.files)
    except OSError as e:
        raise OSError(
            f"Cannot write the run folder {config.output!r}: {e.strerror or e}. Choose a writable --output."
        ) from e


def _build(config, info, resolved):
    return build_model(
        config.backbone,
        info.num_classes,
        activation="sigmoid" if info.multi_label else "softmax",
        input_shape=resolved.size,
        weights=resolved.weights,
        pooling=config.pooling,
        dense_units=tuple(config.dense_units),
        dropout=config.dropout,
        augment=resolved.augment,
    )


def _probe(model, data):
    """Linear-probe accuracy on the pretrained features, before fine-tuning changes them."""
    probe = linear_probe(model, data["train"], data["evaluated"])
    metric = "mAP" if data["info"].multi_label else "accuracy"
    logger.info(
        f"Linear probe on the pretrained features (one pass over the training and {data['split']} images): "
        f"{data['split']} {metric} {probe:.1%}"
    )
    return probe


def _evaluate(model, data, output_dir):
    if data["evaluated"] is None:
        return None
    logger.info(f"Evaluating on the {data['info'].sizes[data['split']]} {data['split']} images")
    return evaluate(
        model,
        data["evaluated"],
        data["info"].class_names,
        output_dir=output_dir,
        thresholds=data["thresholds"],
        tta=data["tta"],
    )


def _export(config, model, class_names, metrics, thresholds, run_id):
    """The run's SavedModel version; a rerun after a kill finds the version it already wrote (by its run id)."""
    for version in reversed(versions(config.export)):
        metadata = version_file(os.path.join(config.export, str(version)), "metadata")
        with contextlib.suppress(OSError, ValueError), open(metadata) as f:
            if json.load(f).get("run_id") == run_id:
                return os.path.join(config.export, str(version))
    return export_saved_model(
        model,
        config.export,
        class_names=class_names,
        metadata={"backbone": config.backbone, "metrics": metrics, "run_id": run_id},
        thresholds=thresholds,
    )


def _compare_scratch(config, resolved, transfer, probe, data, strategy, verbose):
    """Trains the same architecture from random weights on the same batches; prints and saves the comparison with
    the fine-tuned model and the linear probe."""
    run_dir = run_file(config.output, "scratch")
    epochs = config.head_epochs + config.fine_tune_epochs
    logger.info(f"\n--compare-scratch: {config.backbone} from random weights, all layers, {epochs} epochs -> {run_dir}")
    scratch_settings = dataclasses.replace(resolve(config, scratch=True), size=resolved.size)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = _build(config, data["info"], scratch_settings)
    _train(scratch_settings, config, model, data, strategy, run_dir, verbose=verbose)
    scratch = _evaluate(model, data, run_dir)  # the same split, thresholds and TTA as the fine-tuned model
    rows = {
        f"{config.backbone} ({config.weights}), fine-tuned": transfer.headline,
        f"linear probe on the {config.weights} features": probe,
        f"{config.backbone} from scratch": scratch.headline,
    }
    metric = transfer.headline_name
    logger.info(f"\n{data['split']} {metric} on {transfer.num_examples} images:")
    for name, value in rows.items():
        logger.info(f"  {name:<60} {value:6.1%}")
    gain = transfer.headline - scratch.headline
    over_probe = transfer.headline - probe
    logger.info(f"  fine-tuned - scratch: {100 * gain:+.1f} points; fine-tuned - probe: {100 * over_probe:+.1f}")
    key = "accuracy" if metric == "accuracy" else "map"
    comparison = {
        "split": data["split"],
        "num_examples": transfer.num_examples,
        "metric": metric,
        f"transfer_{key}": transfer.headline,
        f"scratch_{key}": scratch.headline,
        f"linear_probe_{key}": probe,
        "gain": gain,
        "weights": config.weights,
    }
    write_text(run_file(config.output, "comparison"), json.dumps(comparison, indent=2))


def print_history(rows, stage1_epochs):
    """The last epoch of each stage, as a table, from the run folder's history (`runs.read_history`: every epoch,
    those of earlier, killed calls too); the per-epoch lines were printed while training."""
    keys = sorted({k for row in rows.values() for k in row if k != "learning_rate"})
    logger.info(f"{'stage':<6} {'epochs':>9} " + " ".join(f"{k:>12}" for k in keys))
    for stage, epochs in (
        ("head", [e for e in sorted(rows) if e < stage1_epochs]),
        ("tune", [e for e in sorted(rows) if e >= stage1_epochs]),
    ):
        if epochs:
            span = f"{epochs[0] + 1}-{epochs[-1] + 1}"
            logger.info(
                f"{stage:<6} {span:>9} "
                + " ".join(f"{rows[epochs[-1]][k]:>12.4f}" if k in rows[epochs[-1]] else " " * 12 for k in keys)
            )


def kept_weights_line(stopper, rows, total_epochs):
    """What early stopping did to the model, in a line under the history table (None: nothing to say, the model has
    its last epoch's weights): the epoch it stopped at, and the earlier epoch whose weights the model kept (the
    lowest validation loss; `stopper.best`, found in the run's history `rows`)."""
    key = stopper.monitor if stopper is not None else "val_loss"
    scored = [e for e in rows if key in rows[e]]
    if stopper is None or stopper.best_weights is None or not scored:
        return None
    what = "validation loss" if key == "val_loss" else "validation cross-entropy"
    best, last = min(scored, key=lambda e: abs(rows[e][key] - stopper.best)), max(rows)
    kept = f"the model has the weights of epoch {best + 1} ({what} {rows[best][key]:.4f}, the lowest)"
    if stopper.stopped_epoch > 0:
        return (
            f"Early stopping: stopped after epoch {last + 1} of {total_epochs}, {stopper.patience} epochs without a "
            f"lower {what}; {kept}."
        )
    return None if best == last else f"Early stopping kept the best epoch: {kept}, not of epoch {last + 1}."


def _train(resolved, config, model, data, strategy, run_dir, verbose=False):
    """fine_tune with the run's resolved settings, into `run_dir` (None: no folder, a worker other than the
    chief); returns its early-stopping callback (None without one)."""
    callbacks = []
    if config.early_stopping and data["val"] is not None:  # on the validation loss only: never on the training loss
        monitor = watched(config.label_smoothing)  # the plain cross-entropy when the loss is smoothed
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=monitor, patience=config.early_stopping, restore_best_weights=True)
        )
    watch = watch_service(config.data_service, config.peer_timeout, _lost(run_dir)) if config.data_service else None
    with watch or contextlib.nullcontext(), _damaged_shards_named(config.data):
        fine_tune(
            model,
            data["train"],
            data["val"],
            options=resolved.options,
            callbacks=callbacks,
            run_dir=run_dir,
            strategy=strategy,
            verbose="auto" if verbose else "lines",
            unlabelled=data["info"].unlabelled if config.semi_supervised == "fixmatch" else None,
            **resolved.stages,
        )
    return callbacks[0] if callbacks else None


@contextlib.contextmanager
def _damaged_shards_named(source):
    """TensorFlow's "corrupted record at N" while reading shards becomes the shard's name (`check_shards` finds it)."""
    try:
        yield
    except tf.errors.DataLossError:
        if isinstance(source, (str, os.PathLike)) and is_shards(source):
            check_shards(source)  # raises a ValueError naming the damaged shard
        raise


def _lost(run_dir):
    """What a run does when a peer it waits on stops answering: it says so and what is committed, and ends the
    process (exit code 1): the training loop waits inside TensorFlow, out of Python's reach, and every committed
    epoch is on disk, as after any kill."""

    def end(message):
        logger.error("keras-transfer: error: %s; %s", message, interrupted(run_dir) if run_dir else "stopped")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(1)

    return end
