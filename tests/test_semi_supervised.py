import csv
import json
import os

import numpy as np
import pytest

from keras_transfer.cli import main
from keras_transfer.semi_supervised import pseudo_label_check, pseudo_labels


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n)
    centres = np.eye(3, 8) * 6
    return centres[labels] + rng.normal(0, 1, (len(labels), 8)), labels


def test_pseudo_labels_are_class_balanced_confident_and_right_on_separable_features():
    labelled, labels = _blobs(3, seed=0)
    unlabelled, truth = _blobs(40, seed=1)
    unlabelled[-5:] = 0  # five images in the middle of nowhere: no class should claim them
    pseudo, confidence = pseudo_labels(labelled, labels, unlabelled, 3, per_class=10, threshold=0.5, rounds=2)
    chosen = pseudo >= 0
    assert np.bincount(pseudo[chosen], minlength=3).tolist() == [10, 10, 10]  # the quota of each class
    assert (pseudo[chosen] == truth[chosen]).all() and (confidence[chosen] >= 0.5).all()
    assert not chosen[-5:].any()
    clear = np.arange(len(pseudo)) < len(pseudo) - 5
    for c in range(3):  # each class's chosen images are the most confident of those in it
        left = clear & ~chosen & (truth == c)
        assert confidence[pseudo == c].min() >= confidence[left].max() - 1e-9
    with pytest.raises(ValueError, match=r"0 <= threshold < 1, per_class >= 1"):
        pseudo_labels(labelled, labels, unlabelled, 3, threshold=1.0)


def test_the_check_keeps_pseudo_labels_that_help_on_validation_and_refuses_wrong_ones():
    labelled, labels = _blobs(1, seed=0)
    unlabelled, truth = _blobs(40, seed=1)
    validation = _blobs(20, seed=2)
    right = pseudo_label_check(labelled, labels, unlabelled, truth, validation, 3)
    assert right["used"] and right["with"] >= right["without"]
    assert right["images"] == 60 and right["chosen"] == 120
    wrong = pseudo_label_check(labelled, labels, unlabelled, (truth + 1) % 3, validation, 3)
    assert not wrong["used"] and wrong["with"] < 0.5 < wrong["without"]
    one_hot = (validation[0], np.eye(3)[validation[1]])  # the labels as a one-hot source yields them
    assert pseudo_label_check(labelled, labels, unlabelled, (truth + 1) % 3, one_hot, 3) == wrong


def _command(folder, run, *method):
    """A tiny run of the command on `folder`, 5 labels per class and the rest unlabelled, used by `method`."""
    args = ["--data", str(folder), "--backbone", "vgg16", "--weights", "none", "--image-size", "32"]
    args += ["--batch-size", "4", "--head-epochs", "1", "--fine-tune-epochs", "1", "--labels-per-class", "5"]
    return args + ["--unlabelled", "rest", *method, "--output", str(run)]


def test_the_command_trains_on_pseudo_labelled_images_and_shows_them(colour_folder, tmp_path, capsys):
    run = tmp_path / "run"
    args = _command(colour_folder, run, "--pseudo-labels-per-class", "2")
    assert main(args) == 0
    printed = capsys.readouterr().out
    with open(run / "pseudo_labels.csv") as f:
        rows = list(csv.DictReader(f))
    chosen = [r for r in rows if r["pseudo_label"]]
    assert rows and list(rows[0]) == ["index", "path", "pseudo_label", "confidence", "true_label"]
    assert all(r["true_label"] == r["path"].split("/")[-2] for r in rows)  # "rest" knows the true labels
    assert 0 < len(chosen) <= 6 and all(float(r["confidence"]) >= 0.5 for r in chosen)
    assert f"Training on 15 labelled and {len(chosen)} pseudo-labelled images" in printed
    with open(run / "pseudo_labels.json") as f:
        check = json.load(f)
    assert check["used"] and check["chosen"] == len(chosen) and check["with"] >= check["without"]
    assert f"the probe with the {len(chosen)} chosen scored {check['with']:.1%} on the {check['images']}" in printed
    assert printed.count("Suspected label errors: ") == 2 and "the 15 training images" in printed  # before
    assert printed.count("Pseudo-labelled: ") == 1 and printed.count("unlabelled images (") == 2
    with open(run / "splits.csv") as f:
        splits = {}
        for row in csv.DictReader(f):
            splits.setdefault(row["split"], []).append(row["path"])
    assert {r["path"] for r in chosen} <= set(splits["train"]) and len(splits["train"]) == 15 + len(chosen)
    assert not {r["path"] for r in chosen} & set(splits["unlabelled"])  # each image in one split
    page = (run / "report.html").read_text()
    assert f"<h2>Pseudo-labels</h2><p>{len(chosen)} of the {len(rows)} unlabelled images" in page
    # a rerun (as after a kill) reads the same choice back instead of choosing again
    (run / "complete.json").unlink()
    before = (run / "pseudo_labels.csv").stat().st_mtime_ns
    assert main(args) == 0
    assert "Pseudo-labels (" not in capsys.readouterr().out and (run / "pseudo_labels.csv").stat().st_mtime_ns == before


def test_pseudo_labels_the_validation_check_refuses_are_not_trained_on(colour_folder, tmp_path, capsys, monkeypatch):
    from keras_transfer import semi_supervised

    refused = {"without": 0.75, "with": 0.5, "images": 12, "chosen": 6, "used": False}
    monkeypatch.setattr(semi_supervised, "pseudo_label_check", lambda *args: refused)
    run = tmp_path / "run"
    assert main(_command(colour_folder, run, "--pseudo-labels-per-class", "2")) == 0
    printed = capsys.readouterr().out
    said = "the probe with the 6 chosen scored 50.0% on the 12 validation images, without them 75.0%: not used"
    assert said in printed
    assert "Training on 15 labelled and 0 pseudo-labelled images" in printed
    assert "Pseudo-labelled: none, the probe with the 6 chosen scored 50.0%" in printed  # under the closing table
    with open(run / "pseudo_labels.csv") as f:
        assert not [r for r in csv.DictReader(f) if r["pseudo_label"]]
    with open(run / "splits.csv") as f:
        assert sum(row["split"] == "train" for row in csv.DictReader(f)) == 15
    page = (run / "report.html").read_text()
    assert "Checked on the validation split: the probe with the 6 chosen scored 50.0%" in page


def _fixmatch_fit(threshold, weight):
    """The weights of a tiny softmax model after one FixMatch step on fixed images, from fixed initial weights."""
    import keras
    import tensorflow as tf

    from keras_transfer.semi_supervised import fixmatch_data, fixmatch_step

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(keras.layers.Flatten()(inputs / 255.0))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    train = tf.data.Dataset.from_tensor_slices((rng.uniform(0, 255, (4, 8, 8, 3)), np.array([0, 1, 2, 0]))).batch(4)
    unlabelled = tf.data.Dataset.from_tensor_slices(rng.uniform(0, 255, (16, 8, 8, 3)).astype("float32")).batch(5)
    unlabelled = unlabelled.filter(lambda x: True)  # its size unknown, as load_dataset's can be
    data = fixmatch_data(train, unlabelled, ratio=2)
    assert [x.shape[0] for x in next(iter(data))[0]] == [4, 8]  # twice the labelled batch, whatever the source's
    assert int(data.cardinality()) == 3  # an epoch: one pass over the 16 unlabelled images (up to 20), 8 a step
    model.train_step = fixmatch_step(model, threshold=threshold, weight=weight)
    history = model.fit(data, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all() and "accuracy" in history.history
    assert history.history["confident"][-1] == (1.0 if threshold == 0 else 0.0)  # the share above the threshold
    return [w.numpy() for w in model.weights]


def test_fixmatch_learns_from_the_unlabelled_images_it_is_confident_about_and_only_from_those():
    alone = _fixmatch_fit(threshold=0.0, weight=0.0)  # the labelled loss only
    assert any(not np.allclose(a, b) for a, b in zip(alone, _fixmatch_fit(threshold=0.0, weight=1.0)))
    # at a threshold no prediction reaches, the unlabelled images change nothing
    assert all(np.allclose(a, b) for a, b in zip(alone, _fixmatch_fit(threshold=0.999999, weight=1.0)))


def test_the_command_trains_with_fixmatch_in_stage_2(colour_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_command(colour_folder, run, "--semi-supervised", "fixmatch")) == 0
    printed = capsys.readouterr().out
    assert "FixMatch: 2 unlabelled images per labelled one in each batch, threshold 0.95" in printed
    assert "Pseudo-labels (" not in printed and not (run / "pseudo_labels.csv").exists()
    header, *rows = (run / "history.csv").read_text().splitlines()
    column = header.split(",").index("confident")  # stage 2's share of unlabelled images above the threshold
    assert rows[0].split(",")[column] == "" and 0 <= float(rows[-1].split(",")[column]) <= 1
    assert '"method": "fixmatch"' in (run / "run.json").read_text()
    page = (run / "report.html").read_text()
    last = f"{float(rows[-1].split(',')[column]):.1%}"
    unlabelled = json.loads((run / "data.json").read_text())["sizes"]["unlabelled"]
    assert f"<h2>FixMatch</h2><p>Stage 2 also trained on {unlabelled} unlabelled images" in page and unlabelled > 0
    assert f">{last}</td>" in page  # the last epoch's share


MIRRORED_FIXMATCH = """
import json, sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from keras_transfer.semi_supervised import fixmatch_data, fixmatch_step

rng = np.random.default_rng(0)
x, y = rng.uniform(0, 255, (8, 8, 8, 3)).astype("float32"), np.arange(8) % 3
u = rng.uniform(0, 255, (32, 8, 8, 3)).astype("float32")
results = {}
strategies = {"one": tf.distribute.get_strategy(), "two": tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])}
for name, strategy in strategies.items():
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((8, 8, 3))
        flat = keras.layers.Flatten()(inputs / 255.0)
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="predictions")(flat))
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    data = fixmatch_data(train, tf.data.Dataset.from_tensor_slices(u).batch(8))
    model.evaluate(train, verbose=0)  # as fine_tune does: the compiled loss built from a labelled batch
    model.train_step = fixmatch_step(model, threshold=float(sys.argv[1]))
    history = model.fit(data, epochs=2, verbose=0, shuffle=False)
    results[name] = {"replicas": strategy.num_replicas_in_sync, "loss": history.history["loss"],
                     "weights": [w.tolist() for w in model.get_layer("predictions").get_weights()]}
json.dump(results, sys.stdout)
"""


@pytest.mark.parametrize("threshold", [0.999999, 0.0])
def test_fixmatch_trains_under_a_mirrored_strategy_as_on_one_device(tmp_path, threshold):
    import subprocess
    import sys

    script = tmp_path / "mirrored_fixmatch.py"
    script.write_text(MIRRORED_FIXMATCH)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, str(script), str(threshold)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["two"]["replicas"] == 2 and np.isfinite(results["two"]["loss"]).all()
    one, two = (np.concatenate([np.ravel(w) for w in results[k]["weights"]]) for k in ("one", "two"))
    if threshold > 0.9:  # no unlabelled image counts: the labelled loss alone, all-reduced over the two replicas
        np.testing.assert_allclose(results["two"]["loss"], results["one"]["loss"], rtol=1e-4)
        np.testing.assert_allclose(two, one, atol=1e-4)
    else:  # every unlabelled image counts, strongly augmented at random: it trains, differently per device layout
        assert not np.allclose(two, one, atol=1e-6) and np.abs(two).max() < 1e3


def test_fine_tune_refuses_unlabelled_images_it_cannot_use_before_training():
    import keras_transfer as kt

    train, _, _, info = kt.load_dataset("digits", image_size=32, batch_size=8, labels_per_class=3, unlabelled="rest")
    model = kt.build_model("small_cnn", info.num_classes, input_shape=32, weights=None)
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match=r"unlabelled must be a tf.data.Dataset .* Received: unlabelled=ndarray"):
        kt.fine_tune(model, train, unlabelled=np.zeros((4, 32, 32, 3)), verbose=0)
    pair, _, _, two = kt.load_dataset(
        "digits", image_size=32, batch_size=8, classes=[0, 1], labels_per_class=3, unlabelled="rest"
    )
    binary = kt.build_model("small_cnn", 1, input_shape=32, weights=None, activation="sigmoid")
    with pytest.raises(ValueError, match=r"need a softmax head .* activation 'sigmoid'"):
        kt.fine_tune(binary, pair, unlabelled=two.unlabelled, verbose=0)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))
