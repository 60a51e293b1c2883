"""The run folder as a transaction: one run per folder, a lock, export versions that never collide, and every
epoch committed whatever instant a kill lands (a SIGKILL swept over the writes of a short CLI run)."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import SUBPROCESS_ENV

import keras_transfer as kt
from keras_transfer import runs
from keras_transfer.cli import main

SMALL_RUN = [
    "--backbone",
    "small_cnn",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--validation-split",
    "0.25",
    "--test-split",
    "0.25",
    "--head-epochs",
    "2",
    "--fine-tune-epochs",
    "2",
    "--unfreeze",
    "all",
]

SWEEP = r"""
import json, os, signal, sys
from keras_transfer.terminal import quiet_tensorflow
quiet_tensorflow()
import keras_transfer.cli, keras_transfer.recipe  # TensorFlow loads once, here; each run is a forked child
import kill_points

argv, log, plan = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])

def run(kill_at=0, log=None):
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        kill_points.install(kill_at, log)
        os._exit(keras_transfer.cli.main(argv))
    return os.waitpid(pid, 0)[1]

if plan is None:  # the clean run: its writes, counted
    sys.exit(os.waitstatus_to_exitcode(run(log=log)))
for k in plan:  # each kill, then a rerun to the end; the test checks the folder after each pair
    killed, finished = run(kill_at=k), run()
    print(json.dumps({"k": k, "killed": os.waitstatus_to_exitcode(killed), "rc": os.waitstatus_to_exitcode(finished)}),
          flush=True)
    sys.stdin.readline()  # the test checks the folder and moves it aside before the next pair
"""


def _check_finished(run_dir, epochs):
    """After a kill and a rerun: every epoch once, best.json agreeing with history, nothing temporary left."""
    history = runs.read_history(run_dir)
    assert sorted(history) == list(range(epochs)), history
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    losses = {e: row["val_loss"] for e, row in history.items()}
    assert best["epoch"] == min(losses, key=losses.get) and best["value"] == pytest.approx(losses[best["epoch"]])
    left = [
        str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if re.search(r"\.tmp-|best-epoch|\.reserved", p.name)
    ]
    assert not left, left
    assert sorted(os.listdir(run_dir / "backup")) == ["state.json", "tune-epoch3.weights.h5"]
    assert (run_dir / "complete.json").exists() and not (run_dir / "run.lock").exists()
    assert (run_dir / "report.json").exists() and (run_dir / "model.keras").stat().st_size > 0
    export = run_dir.parent / "export"
    if export.exists():  # one version, however often the run was killed and rerun; then moved aside for the next
        assert os.listdir(export) == ["1"] and (export / "1" / "saved_model.pb").exists()
        shutil.rmtree(export)


KILL_POINTS = [  # (a write, named by a regular expression over "kind path", and which of its occurrences)
    (r"replace .*/checkpoints/best-epoch0\.keras$", 1),  # a candidate checkpoint written, not committed
    (r"replace .*/backup/head-epoch1\.weights\.h5$", 1),  # a mid-stage epoch's backup written, not committed
    (r"replace .*/backup/state\.json$", 2),  # that epoch committed, nothing of it applied
    (r"replace .*/history\.csv$", 2),  # its history applied, its best checkpoint and record not yet
    (r"replace .*/stage1\.weights\.h5$", 1),  # the stage switch
    (r"replace .*/model\.keras$", 1),  # trained and saved, not evaluated
    (r"close .*/examples/[a-z]+_\d+\.png$", 1),  # an example image, written in place
    (r"replace .*/complete\.json$", 1),  # the last write
]


def _kill_points(lines):
    """Where to kill: `KILL_POINTS`, one point of each recovery the run folder has (a kill and its rerun cost
    about 20 s on the build machine, so the suite takes 8). KT_KILL_SWEEP=all kills after every write number of
    the clean run instead (about 113 points, 49 minutes)."""
    if os.environ.get("KT_KILL_SWEEP") == "all":
        return list(range(1, len(lines) + 1))
    for pattern, occurrence in KILL_POINTS:  # each is a write this run makes
        assert sum(bool(re.search(pattern, line.split(" ", 1)[1])) for line in lines) >= occurrence, pattern
    return [list(point) for point in KILL_POINTS]


@pytest.mark.slow
def test_a_kill_after_any_write_loses_nothing_once_rerun(tmp_path, colour_folder):
    """SIGKILL right after the k-th write of a 2+2-epoch CLI run (every rename and every file closed after
    writing are counted), at the points `_kill_points` picks, each followed by a rerun; then the folder must
    hold the finished run exactly: every epoch once, best.json agreeing with history, nothing temporary."""
    (tmp_path / "sweep.py").write_text(SWEEP)
    env = {
        **SUBPROCESS_ENV,
        "PYTHONPATH": os.pathsep.join([SUBPROCESS_ENV["PYTHONPATH"], os.path.dirname(__file__)]),
        "TMPDIR": str(tmp_path / "tmp"),
    }
    os.makedirs(env["TMPDIR"])
    run_dir = tmp_path / "run"
    argv = ["--data", str(colour_folder), *SMALL_RUN, "--output", str(run_dir)]
    log = tmp_path / "writes.log"
    clean = subprocess.run(
        [sys.executable, tmp_path / "sweep.py", json.dumps(argv), str(log), "null"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    _check_finished(run_dir, 4)
    lines = log.read_text().splitlines()
    plan = _kill_points(lines)
    assert len(lines) > 60, lines  # the run's writes were seen, reports included
    os.rename(run_dir, tmp_path / "clean")
    with open(tmp_path / "sweep.err", "w") as errors:  # a file: a pipe nobody reads would fill and block the runs
        sweep = subprocess.Popen(
            [sys.executable, tmp_path / "sweep.py", json.dumps(argv), "", json.dumps(plan)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        try:
            for k in plan:
                result = json.loads(sweep.stdout.readline())
                failure = (result, (tmp_path / "sweep.err").read_text()[-3000:])
                # Swept by number, the last few writes may not come: a run can write an example image fewer.
                killed = -9 if not isinstance(k, int) or k < len(lines) - 20 else result["killed"]
                assert result == {"k": k, "killed": killed, "rc": 0}, failure
                _check_finished(run_dir, 4)
                os.rename(run_dir, tmp_path / f"after-{plan.index(k)}")
                sweep.stdin.write("\n")
                sweep.stdin.flush()
            assert sweep.wait(timeout=60) == 0
        finally:
            sweep.kill()
    assert not [n for n in os.listdir(env["TMPDIR"]) if n.startswith(("keras_transfer_", "tmp"))]


def _fit_settings(tmp_path, **changes):
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    train, val, _, _ = kt.load_dataset((x, np.arange(8) % 2), image_size=32, batch_size=4, validation_split=0.25)
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
    settings = dict(head_epochs=1, fine_tune_epochs=1, unfreeze="all", run_dir=tmp_path / "run", verbose=0)
    return model, train, val, {**settings, **changes}


def test_fine_tune_refuses_a_run_folder_of_another_run(tmp_path):
    model, train, val, settings = _fit_settings(tmp_path)
    kt.fine_tune(model, train, val, **settings)
    assert kt.fine_tune(model, train, val, **settings).epoch == []  # the same call again: nothing left to train
    model, train, val, settings = _fit_settings(tmp_path, learning_rate=0.01)
    with pytest.raises(ValueError, match=r"holds another run: learning_rate 0.001 → 0.01\. Pass another run_dir"):
        kt.fine_tune(model, train, val, **settings)
    assert sorted(runs.read_history(tmp_path / "run")) == [0, 1]  # nothing of the refused call was written


def _cli(tmp_path, colour_folder, *extra):
    out_file = tmp_path / "out.txt"
    argv = ["--data", str(colour_folder), *SMALL_RUN, "--output", str(tmp_path / "run"), *extra]
    with open(out_file, "w") as out, __import__("contextlib").redirect_stdout(out):
        code = main(argv)
    return code, out_file.read_text()


@pytest.mark.slow
def test_the_cli_resumes_refuses_or_overwrites_a_used_run_folder(tmp_path, colour_folder, capsys):
    export = str(tmp_path / "export")
    assert _cli(tmp_path, colour_folder)[0] == 0  # finished without an export
    code, out = _cli(tmp_path, colour_folder, "--export", export)  # the same run, asked to export: exports it
    assert code == 0 and "is complete (these settings and data); nothing to train" in out
    assert f"SavedModel: {export}/1 (exported now" in out and sorted(os.listdir(export)) == ["1"]
    names = (tmp_path / "export" / "1" / "labels.txt").read_text().split()
    assert names == sorted(os.listdir(colour_folder))  # the class names, not ids
    code, out = _cli(tmp_path, colour_folder, "--export", export)
    assert code == 0 and f"SavedModel: {export}/1\n" in out
    assert sorted(os.listdir(export)) == ["1"]  # no second export
    (tmp_path / "run" / "complete.json").unlink()  # as if killed after the export, before the run was marked done
    code, out = _cli(tmp_path, colour_folder, "--export", export)
    assert code == 0 and f"SavedModel: {export}/1" in out and sorted(os.listdir(export)) == ["1"]  # found by run id
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    code, _ = _cli(tmp_path, colour_folder, "--learning-rate", "0.01", "--dropout", "0.5")
    err = capsys.readouterr().err
    assert code == 2 and "dropout 0.2 → 0.5; settings.learning_rate 0.001 → 0.01" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before  # nothing written
    code, out = _cli(tmp_path, colour_folder, "--learning-rate", "0.01", "--overwrite", "--export", export)
    assert code == 0 and sorted(os.listdir(export)) == ["1", "2"]
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["run"]["settings"]["learning_rate"] == 0.01


def test_ctrl_c_mid_run_says_what_is_committed_and_the_same_command_resumes(
    tmp_path, colour_folder, capsys, monkeypatch
):
    commit = runs.EpochCommit.on_epoch_end

    def commit_then_ctrl_c(self, epoch, logs=None):
        commit(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.EpochCommit, "on_epoch_end", commit_then_ctrl_c)
    code, _ = _cli(tmp_path, colour_folder)
    err = capsys.readouterr().err
    committed = f"stopped with 1 epoch committed in {tmp_path / 'run'}; the same command resumes after epoch 1."
    assert code == 130 and err.endswith(f"keras-transfer: {committed}\n")
    assert "Traceback" not in err
    monkeypatch.setattr(runs.EpochCommit, "on_epoch_end", commit)
    code, out = _cli(tmp_path, colour_folder)
    assert code == 0 and "Resuming after epoch 1" in out
    assert len(runs.read_history(tmp_path / "run")) == 4


def test_a_damaged_commit_record_or_backup_is_named_and_never_read_as_less(tmp_path, colour_folder):
    state = tmp_path / "backup" / "state.json"
    state.parent.mkdir()
    state.write_text('{"stage": "head", "epo')  # cut short
    with pytest.raises(runs.DamagedRun, match=r"commit record .*state.json is damaged"):
        runs.read_state(tmp_path)
    model = kt.build_model("small_cnn", 3, input_shape=32, weights=None)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.save_weights(tmp_path / "backup" / "head-epoch0.weights.h5")
    whole = (tmp_path / "backup" / "head-epoch0.weights.h5").read_bytes()
    (tmp_path / "backup" / "head-epoch0.weights.h5").write_bytes(whole[: len(whole) // 2])
    state.write_text(json.dumps({"stage": "head", "epoch": 0, "weights": "head-epoch0.weights.h5", "history": {}}))
    with pytest.raises(runs.DamagedRun, match=r"committed backup .*head-epoch0.weights.h5 cannot be read \(.+\)"):
        runs.resume(tmp_path, model, "head")


def test_overwrite_never_empties_a_folder_that_is_not_a_run_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"also holds \['notes.txt'\], which no run writes"):
        runs.empty_run_folder(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_second_process_is_refused_while_a_run_holds_the_folder(tmp_path):
    with runs.locked(tmp_path):
        with runs.locked(tmp_path):  # the same process may enter again (the CLI, then fine_tune)
            pass
        other = subprocess.run(
            [sys.executable, "-c", f"from keras_transfer import runs\nwith runs.locked({str(tmp_path)!r}): pass"],
            env=SUBPROCESS_ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 1 and f"is in use by process {os.getpid()}" in other.stderr
    assert not (tmp_path / "run.lock").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over_and_said_so(tmp_path, caplog):
    (tmp_path / "run.lock").write_text("999999999\n")  # no such process, and no one holds the lock
    with runs.locked(tmp_path):
        assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"
    assert "from process 999999999, which no longer runs" in caplog.text


def test_concurrent_exports_into_one_folder_get_different_versions(tmp_path):
    script = (
        "import sys, keras_transfer as kt\n"
        "model = kt.build_model('small_cnn', 2, input_shape=32, weights=None)\n"
        "print(kt.export_saved_model(model, sys.argv[1]))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)],
            env=SUBPROCESS_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    assert sorted(out.strip()[-1] for out, _ in outputs) == ["1", "2", "3"]
    assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]
    assert all((tmp_path / v / "saved_model.pb").exists() for v in "123")


def test_a_version_folder_is_never_replaced(tmp_path):
    from keras_transfer.files import new_version

    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_text("serving")
    with pytest.raises(FileExistsError), new_version(tmp_path, 1):
        pass
    with new_version(tmp_path) as (version, folder):
        assert version == 2 and sorted(os.listdir(tmp_path)) == [".reserved-2", "1"]  # reserved, not yet visible
        (tmp_path / folder / "saved_model.pb").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["1", "2"] and (tmp_path / "1" / "saved_model.pb").read_text() == "serving"


@pytest.mark.parametrize(
    "flags, env, message",
    [
        (["--unfreeze", "stages:0"], {}, r"Backbone 'small_cnn' has 4 stages \(block1_, .*K must be in 1\.\.4"),
        (
            ["--unfreeze", "from:no_such_layer"],
            {},
            r"No backbone layer name starts with 'no_such_layer'.*include: block1",
        ),
        (["--image-size", "4096"], {}, r"Too large for this machine: training 'small_cnn' at 4096x4096 .* GB"),
        (["--backbone", "inception_v3"], {}, r"'inception_v3' needs inputs of at least 75x75 pixels"),
        (["--strategy", "multi_worker"], {"TF_CONFIG": "{garbage"}, r"TF_CONFIG is not valid JSON"),
        (["--export", "EXPORT_UNDER_A_FILE"], {}, r"Cannot write into .*Choose a writable --export"),
    ],
)
def test_bad_arguments_are_refused_before_a_file_is_written(
    tmp_path, colour_folder, capsys, monkeypatch, flags, env, message
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "a_file").write_text("")
    flags = [str(tmp_path / "a_file" / "export") if f == "EXPORT_UNDER_A_FILE" else f for f in flags]
    code, _ = _cli(tmp_path, colour_folder, *flags)
    err = capsys.readouterr().err
    assert code in (1, 2) and re.search(message, err), err
    assert not os.path.exists(tmp_path / "run") or os.listdir(tmp_path / "run") == []


def test_a_broken_keras_file_is_named_as_not_a_keras_archive(tmp_path):
    from keras_transfer.models import load_model

    for name, content in (("empty.keras", b""), ("cut.keras", b"PK\x03\x04 truncated")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name}' is not a valid Keras archive \(\d+ bytes"):
            load_model(tmp_path / name)
    with pytest.raises(ValueError, match=r"No model file at"):
        load_model(tmp_path / "missing.keras")


def test_classes_too_small_for_a_split_are_warned_about_and_left_out_of_macro_averages(tmp_path, caplog):
    from PIL import Image

    for name, n in (("big", 8), ("tiny", 1)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 30 * i + (name == "tiny"), np.uint8)).save(tmp_path / name / f"{i}.png")
    _, val, test, info = kt.load_dataset(str(tmp_path), image_size=32, validation_split=0.25, test_split=0.25)
    assert info.counts["train"]["tiny"] == 1 and info.counts["test"]["tiny"] == 0
    assert "Class 'tiny' has 1 image (train 1): none in the validation split" in caplog.text
    assert "Class 'tiny' has 1 image (train 1): none in the test split, so it is not tested there" in caplog.text
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
    report = kt.evaluate(model, test, info.class_names)
    assert report.absent == ["tiny"] and report.per_class["tiny"]["support"] == 0
    assert report.macro["recall"] == pytest.approx(report.per_class["big"]["recall"])  # over the present class only
    assert "not in this split, so not in the macro average: tiny" in str(report)
