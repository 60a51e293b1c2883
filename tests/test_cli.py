import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transfer import load_dataset
from keras_transfer.cli import main, parse_config


@pytest.mark.slow
def test_end_to_end_run_folder_report_and_export(colour_folder, tmp_path, capsys):
    run, export = tmp_path / "run", tmp_path / "export"
    code = main(
        [
            "--data",
            str(colour_folder),
            "--backbone",
            "mobilenet_v3_small",
            "--image-size",
            "64",
            "--weights",
            "none",
            "--head-epochs",
            "1",
            "--fine-tune-epochs",
            "1",
            "--batch-size",
            "4",
            "--test-split",
            "0.25",
            "--output",
            str(run),
            "--export",
            str(export),
            "--export-onnx",
        ]
    )
    assert code == 0
    for name in (
        "config.yaml",
        "history.csv",
        "report.json",
        "report.txt",
        "confusion.png",
        "model.keras",
        "checkpoints/best.keras",
        "model.onnx",
        "model.labels.txt",
    ):
        assert (run / name).exists(), name
    assert os.listdir(run / "logs")
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert "stage     epochs" in out and "\nhead " in out and "\ntune " in out and "test: " in out
    # One line per epoch with its stage, no framework warnings, the dataset described once.
    assert out.count("epoch 1/2  head") == 1 and out.count("epoch 2/2  tune") == 1, out
    assert "Warning" not in out + err and (out + err).count("3 classes, train") == 1, out + err

    # The report's numbers, recomputed from the saved model on the same test split.
    report = json.loads((run / "report.json").read_text())
    _, _, test, info = load_dataset(str(colour_folder), image_size=64, batch_size=4, test_split=0.25)
    model = keras.saving.load_model(run / "model.keras")
    probs, labels = [], []
    for x, y in test:
        probs.append(model.predict(x, verbose=0))
        labels.append(y.numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    assert report["num_examples"] == len(labels) == 9
    assert report["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert report["confusion"] == [
        [int(np.sum((labels == t) & (probs.argmax(1) == p))) for p in range(3)] for t in range(3)
    ]

    # The export loads with TensorFlow alone and agrees with the Keras model.
    loaded = tf.saved_model.load(str(export / "1"))
    x = np.random.default_rng(1).uniform(0, 255, (2, 70, 50, 3)).astype("float32")
    served = loaded.signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(served["probabilities"].numpy(), model.predict(x, verbose=0), atol=1e-5)
    assert (export / "1" / "labels.txt").read_text().split() == info.class_names
    assert json.loads((export / "1" / "metadata.json").read_text())["backbone"] == "mobilenet_v3_small"
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")  # ONNX: the model's size
    session = pytest.importorskip("onnxruntime").InferenceSession(str(run / "model.onnx"))
    np.testing.assert_allclose(session.run(None, {"images": x})[0], model.predict(x, verbose=0), atol=1e-4)


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--backbone", "resnet5"],
            r"argument --backbone: invalid backbone 'resnet5': expected one of .*hub:URL_OR_FOLDER",
        ),
        (["--unfreeze", "freeze"], r"argument --unfreeze: invalid policy 'freeze'"),
        (["--batch-size", "0"], r"argument --batch-size: invalid value 0"),
        (["--head-epochs", "x"], r"argument --head-epochs: invalid int value: 'x'"),
        (["--pooling", "gap"], r"argument --pooling: invalid choice: 'gap'"),
        (["--learning-rate", "0"], r"argument --learning-rate: invalid value 0.0: must be > 0"),
        (["--learning-rate", "-1"], r"argument --learning-rate: invalid value -1.0: must be > 0"),
        (["--validation-split", "1.5"], r"argument --validation-split: invalid value 1.5: must be in \[0, 1\)"),
        (["--learning-rate", "nan"], r"argument --learning-rate: invalid value nan: must be > 0"),
        (["--fine-tune-learning-rate", "inf"], r"argument --fine-tune-learning-rate: invalid value inf: must be > 0"),
        (["--dropout", "nan"], r"argument --dropout: invalid value nan: must be in \[0, 1\)"),
        (["--peer-timeout", "0"], r"argument --peer-timeout: invalid value 0"),
        (["--export", "{output}"], r"export must be a folder of its own, not the run folder or inside it"),
        (["--export", "{output}/export"], r"export must be a folder of its own"),
    ],
)
def test_bad_flags_exit_2_naming_flag_and_value(argv, message, capsys, tmp_path):
    argv = [a.format(output=tmp_path / "run") for a in argv]
    assert main(argv + ["--output", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()  # nothing written before the arguments are valid
    import re

    assert re.search(message, capsys.readouterr().err)


def test_library_errors_exit_2_with_the_message(tmp_path, capsys):
    code = main(["--data", str(tmp_path / "missing"), "--output", str(tmp_path / "run"), "--weights", "none"])
    assert code == 2
    assert "Dataset source" in capsys.readouterr().err


def test_config_file_sets_defaults_and_flags_override(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text(
        "backbone: vgg16\npooling: flatten\ndense_units: [1024]\nhead_epochs: 10\nunfreeze: from:block5\n"
    )
    _, run = parse_config(["--config", str(config), "--head-epochs", "3"])
    assert (run.backbone, run.pooling, run.dense_units, run.head_epochs, run.unfreeze) == (
        "vgg16",
        "flatten",
        [1024],
        3,
        "from:block5",
    )
    assert run.learning_rate == 1e-3  # untouched default from RunConfig
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: vgg16\nepoch: 3\n")
    with pytest.raises(SystemExit):
        parse_config(["--config", str(bad)])


def test_pretrained_weights_set_the_image_size_when_none_is_given(tmp_path):
    base = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.save_weights(str(tmp_path / "mine.weights.h5"))
    (tmp_path / "mine.json").write_text(json.dumps({"backbone": "mobilenet_v3_small", "image_size": [32, 32]}))
    run = tmp_path / "run"
    code = main(
        [
            "--data",
            "digits",
            "--classes",
            "0",
            "1",
            "--backbone",
            "mobilenet_v3_small",
            "--weights",
            str(tmp_path / "mine.weights.h5"),
            "--head-epochs",
            "0",
            "--fine-tune-epochs",
            "0",
            "--output",
            str(run),
        ]
    )
    assert code == 0
    model = keras.saving.load_model(run / "model.keras")
    assert model.get_layer("preprocessing").size == (32, 32)


@pytest.mark.slow
def test_compare_scratch_trains_both_on_the_same_split_and_reports_the_gain(colour_folder, tmp_path, capsys):
    keras.utils.set_random_seed(0)
    weights = tmp_path / "small.weights.h5"
    from keras_transfer import build_model

    build_model("small_cnn", 3, input_shape=32, weights=None).get_layer("backbone").save_weights(weights)
    run = tmp_path / "run"
    code = main(
        [
            "--data",
            str(colour_folder),
            "--backbone",
            "small_cnn",
            "--image-size",
            "32",
            "--weights",
            str(weights),
            "--head-epochs",
            "1",
            "--fine-tune-epochs",
            "1",
            "--batch-size",
            "4",
            "--test-split",
            "0.25",
            "--compare-scratch",
            "--output",
            str(run),
        ]
    )
    assert code == 0
    comparison = json.loads((run / "comparison.json").read_text())
    transfer = json.loads((run / "report.json").read_text())
    scratch = json.loads((run / "scratch" / "report.json").read_text())
    assert comparison["transfer_accuracy"] == transfer["accuracy"]
    assert comparison["scratch_accuracy"] == scratch["accuracy"]
    assert comparison["num_examples"] == transfer["num_examples"] == scratch["num_examples"] == 9
    assert comparison["gain"] == pytest.approx(transfer["accuracy"] - scratch["accuracy"])
    assert (run / "scratch" / "checkpoints" / "best.keras").exists()
    assert 0.0 <= comparison["linear_probe_accuracy"] <= 1.0
    out = capsys.readouterr().out
    assert "fine-tuned - scratch:" in out
    assert f"test images): test accuracy {comparison['linear_probe_accuracy']:.1%}" in out


def test_compare_scratch_needs_pretrained_weights(colour_folder, tmp_path, capsys):
    code = main(["--data", str(colour_folder), "--weights", "none", "--compare-scratch", "--output", str(tmp_path)])
    assert code == 2
    assert "--compare-scratch compares pretrained weights with random ones" in capsys.readouterr().err


def test_exit_codes_follow_one_rule_with_one_line_messages(tmp_path, capsys, monkeypatch):
    from keras_transfer import recipe

    def fail(config, verbose=False):
        raise RuntimeError("the disk went away\nsecond line")

    monkeypatch.setattr(recipe, "run", fail)
    assert main(["--output", str(tmp_path / "run")]) == 1  # a runtime failure
    err = capsys.readouterr().err
    assert err == "keras-transfer: error: the disk went away  (--verbose shows the traceback)\n"
    assert main(["--output", str(tmp_path / "run"), "--verbose"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setattr(recipe, "run", lambda config, verbose=False: (_ for _ in ()).throw(ValueError("bad value")))
    assert main(["--output", str(tmp_path / "run")]) == 2  # a usage error
    assert capsys.readouterr().err == "keras-transfer: error: bad value\n"


def test_an_os_failure_below_a_framework_message_is_in_the_one_line(tmp_path, capsys, monkeypatch):
    from keras_transfer import recipe

    def disk_full(config, verbose=False):  # as TensorFlow's file writer words a full disk
        raise RuntimeError(
            "Disable slist on flush dest failure failed (file write failed: time = 12:00, filename = 'x.h5')\n"
            "   file write failed: No space left on device (errno 28), file 'out/backup/head-epoch0.weights.h5'"
        )

    monkeypatch.setattr(recipe, "run", disk_full)
    assert main(["--output", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "head-epoch0.weights.h5" in err

    def caused(config, verbose=False):
        try:
            raise OSError(28, "No space left on device", "out/model.keras")
        except OSError as e:
            raise RuntimeError("Saving failed") from e

    monkeypatch.setattr(recipe, "run", caused)
    assert main(["--output", str(tmp_path / "run")]) == 1
    assert "Saving failed ([Errno 28] No space left on device: 'out/model.keras')" in capsys.readouterr().err


def test_ctrl_c_and_sigterm_end_with_one_line_saying_what_is_committed(tmp_path, capsys, monkeypatch):
    import signal

    from keras_transfer import recipe, runs

    def stopped(config, verbose=False):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` or a scheduler would
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(recipe, "run", stopped)
    assert main(["--output", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == "keras-transfer: interrupted.\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command
    (tmp_path / "run" / "backup").mkdir(parents=True)
    state = {"stage": "fine_tune", "epoch": 2, "weights": "w.h5", "history": {"0": {}, "1": {}, "2": {}}}
    (tmp_path / "run" / "backup" / "state.json").write_text(__import__("json").dumps(state))
    monkeypatch.setattr(
        recipe, "run", lambda config, verbose=False: (_ for _ in ()).throw(runs.interrupted(config.output))
    )
    assert main(["--output", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == (
        f"keras-transfer: stopped with 3 epochs committed in {tmp_path / 'run'}; the same command resumes after "
        "epoch 3.\n"
    )


def test_temporaries_of_killed_commands_are_removed_by_the_next(tmp_path, monkeypatch):
    import tempfile

    from keras_transfer import cli

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    left = tmp_path / "keras-transfer-999999999-abc"  # a process that no longer runs
    left.mkdir()
    (left / "__autograph_generated_filexyz.py").write_text("")
    mine = tmp_path / f"keras-transfer-{os.getpid()}-live"
    mine.mkdir()
    with cli.own_temporary_folder() as folder:
        assert not left.exists() and mine.exists()
        assert os.path.dirname(tempfile.mkstemp(prefix="__autograph_generated_file")[1]) == folder
    assert tempfile.tempdir == str(tmp_path)


def test_config_file_errors_are_one_line_exit_2_before_anything_is_written(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("backbone: vgg16\nepochs: [1, 2\n")
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("backbone: vgg16\nlearning_rate: fast\n")
    for path, message in (
        (broken, rf"Config file '{broken}' is not valid YAML \(line 3, column 1\)"),
        (wrong_type, r"learning_rate must be a number\. Received: learning_rate: 'fast'"),
    ):
        assert main(["--config", str(path), "--output", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_old_flags_and_keys_are_errors(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("head: flatten\n")
    assert main(["--config", str(old), "--output", str(tmp_path / "run")]) == 2
    assert "Unknown keys in config file" in capsys.readouterr().err
    assert main(["--head", "max", "--output", str(tmp_path / "run")]) == 2
    assert "unrecognized arguments: --head" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_help_lists_the_choices_and_each_default_once():
    from keras_transfer.cli import build_parser

    actions = [a for a in build_parser()._actions if a.option_strings and a.help and "--help" not in a.option_strings]
    for action in actions:
        assert action.help.count("(default:") <= 1 and "(default: None)" not in action.help, action.help
    text = build_parser().format_help()
    for choice in ("efficientnet_lite0", "stages:K", "mirrored", "mixed_bfloat16", "rmsprop", "flatten"):
        assert choice in text, choice


def test_json_output_keeps_the_library_lines_on_standard_error(capsys):
    # A first --imagenet predict converts the weights and logs so; with --json standard output stays one JSON.
    import argparse
    import logging

    from keras_transfer.cli import run_command

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")

    def work(args):
        logging.getLogger("keras_transfer.weights").info("Converting the weights (once)")
        print(json.dumps({"json": args.json}))

    assert run_command("prog", parser, ["--json"], work) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"json": True} and "Converting the weights" in err
    assert run_command("prog", parser, [], work) == 0
    assert "Converting the weights" in capsys.readouterr().out


def test_the_story_says_when_early_stopping_ended_the_run_and_which_epoch_the_model_kept():
    from types import SimpleNamespace

    from keras_transfer.recipe import kept_weights_line

    rows = {
        0: {"val_loss": 0.9},
        1: {"val_loss": 0.5},
        2: {"val_loss": 0.4},
        3: {"val_loss": 0.6},
        4: {"val_loss": 0.7},
    }
    stopped = SimpleNamespace(best=0.4, best_weights=[0], stopped_epoch=4, patience=2, monitor="val_loss")
    assert kept_weights_line(stopped, rows, 11) == (
        "Early stopping: stopped after epoch 5 of 11, 2 epochs without a lower validation loss; the model has the "
        "weights of epoch 3 (validation loss 0.4000, the lowest)."
    )
    ran_out = SimpleNamespace(best=0.4, best_weights=[0], stopped_epoch=0, patience=3, monitor="val_loss")
    assert "the weights of epoch 3 (" in kept_weights_line(ran_out, rows, 5) and "not of epoch 5" in (
        kept_weights_line(ran_out, rows, 5)
    )
    last_best = {**rows, 5: {"val_loss": 0.3}}
    assert (
        kept_weights_line(
            SimpleNamespace(best=0.3, best_weights=[0], stopped_epoch=0, monitor="val_loss"), last_best, 6
        )
        is None
    )
    # with label smoothing it watches the plain cross-entropy, and says so
    smoothed = {e: {"val_loss": 0.1 * e, "val_cross_entropy": row["val_loss"]} for e, row in rows.items()}
    stopped.monitor = "val_cross_entropy"
    assert kept_weights_line(stopped, smoothed, 11) == (
        "Early stopping: stopped after epoch 5 of 11, 2 epochs without a lower validation cross-entropy; the model "
        "has the weights of epoch 3 (validation cross-entropy 0.4000, the lowest)."
    )
    assert kept_weights_line(None, rows, 5) is None  # no validation split, or early stopping off
