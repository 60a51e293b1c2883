"""Tables (CSV files, DataFrames) as sources, and several labels per image end to end: loading and splits,
training, evaluation and thresholds, export, the CLI."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.metrics import average_precision_score, f1_score, hamming_loss

import keras_transfer as kt
from keras_transfer import cli
from keras_transfer.data import Table, source_from
from keras_transfer.evaluation import linear_probe, tune_thresholds
from keras_transfer.export import export_onnx, export_tflite, export_thresholds, tflite_metadata, tflite_predictor

COLOURS = ("blue", "green", "red")  # sorted: the label ids


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """36 PNGs whose colour channels carry their labels (a subset of red, green, blue, never none), and
    `tags.csv`: `file` (relative), `tags` (space-separated), `single` (one label), `split`."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tagged")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(36):
        present = [c for c in COLOURS if rng.random() < 0.5] or [COLOURS[i % 3]]
        pixels = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
        for c in present:
            pixels[..., ("red", "green", "blue").index(c)] += 180
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        split = "test" if i % 6 == 0 else "val" if i % 6 == 1 else "train"
        rows.append({"file": f"img/{i}.png", "tags": " ".join(present), "single": present[0], "split": split})
    pd.DataFrame(rows).to_csv(root / "tags.csv", index=False)
    return root


def _labels(dataset):
    return np.concatenate([np.asarray(y) for _, y in dataset])


def test_a_csv_of_names_loads_like_a_folder_and_lists_the_rows_it_left_out(tagged, tmp_path):
    table = pd.read_csv(tagged / "tags.csv")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    extra = [
        {"file": "img/nope.png", "single": "red"},
        {"file": str(tmp_path / "broken.png"), "single": "red"},  # absolute paths stay as they are
        {"file": "img/3.png", "single": table["single"][3]},  # row 5's image again
        {"file": "img/4.png", "single": ""},
    ]
    pd.concat([table, pd.DataFrame(extra)]).to_csv(tagged / "more.csv", index=False)
    train, val, test, info = kt.load_dataset(
        Table(tagged / "more.csv", label_column="single"),
        image_size=24,
        batch_size=4,
        validation_split=0.25,
        seed=1,
        test_split=0.0,
    )
    reasons = {reason for _, reason in info.skipped}
    assert reasons == {
        "row 38: file missing",
        "row 39: truncated PNG (no IEND chunk)",
        "row 40: duplicate of row 5 (the same file)",
        "row 41: empty label",
    }
    assert info.class_names == sorted(set(table["single"])) and not info.multi_label
    for split, ds in (("train", train), ("validation", val)):
        labels = _labels(ds)
        assert {name: int(np.sum(labels == i)) for i, name in enumerate(info.class_names)} == info.counts[split]
        assert len(labels) == info.sizes[split]
    assert test is None and info.sizes["train"] + info.sizes["validation"] == 36


def test_a_dataframe_with_integer_labels_a_root_and_a_split_column(tagged):
    table = pd.read_csv(tagged / "tags.csv")
    table["class_id"] = [10 * (1 + COLOURS.index(s)) for s in table["single"]]
    source = Table(table, root=tagged, path_column="file", label_column="class_id", split_column="split")
    train, val, test, info = kt.load_dataset(source, image_size=24)
    assert info.source == "dataframe"
    assert info.class_names == ["10", "20", "30"] and info.label_map == {10: 0, 20: 1, 30: 2}
    assert info.sizes == {"train": 24, "validation": 6, "test": 6}  # as the column says
    assert sorted(_labels(test).tolist()) == sorted(COLOURS.index(s) for s in table["single"][table["split"] == "test"])


@pytest.mark.parametrize(
    "change, options, message",
    [
        (None, {"label_column": "nope"}, "has no column 'nope'; its columns: file, tags, single, split"),
        (
            None,
            {"path_column": None, "label_column": "single", "split_column": "single"},
            "Row 0, column 'single': split 'green' is not one of train",
        ),
        (
            lambda t: t.assign(single=["1"] + list(t["single"][1:])),
            {"label_column": "single"},
            "both numbers and names",
        ),
        (None, {"label_column": "tags", "label_delimiter": ","}, "the cells hold ' ': pass label_delimiter=' '"),
        (lambda t: t.assign(red=["yes"] + [0] * 35, blue=0), {"label_columns": ["red", "blue"]}, "'yes' is not 0 or 1"),
        (lambda t: t.rename(columns={"file": "where"}), {"label_column": "single"}, "No image path column"),
        (lambda t: t.iloc[:0], {"label_column": "single"}, "has no rows"),
    ],
)
def test_bad_tables_are_refused_naming_the_row_the_column_or_the_value(tagged, change, options, message):
    table = pd.read_csv(tagged / "tags.csv")
    table = change(table) if change else table
    with pytest.raises(ValueError, match=re.escape(message)):
        kt.load_dataset(Table(table, root=tagged, **options))


def test_a_table_is_checked_as_a_whole_before_anything_trains(tagged, caplog):
    table = pd.read_csv(tagged / "tags.csv")
    lines = (tagged / "tags.csv").read_text().splitlines()
    for bad, message in (
        (lines[:3] + ["img/2.png"] + lines[4:], "Line 4 of the table .* has 1 cells where the header has 4"),
        (lines[:3] + [lines[3] + ",extra"] + lines[4:], "Line 4 of the table .* has 5 cells where the header has 4"),
    ):
        (tagged / "bad.csv").write_text("\n".join(bad) + "\n")
        with pytest.raises(ValueError, match=message):
            kt.load_dataset(Table(tagged / "bad.csv", label_column="single"))
    (tagged / "fine.csv").write_text("\n".join(line + "," for line in lines) + "\n")  # empty trailing cells are fine
    assert kt.load_dataset(Table(tagged / "fine.csv", label_column="single"), image_size=16)[3].sizes["train"]
    one = table.assign(single="red")
    with pytest.raises(ValueError, match=r"names 1 class in its usable rows \(red\); a classifier needs at least two"):
        kt.load_dataset(Table(one, root=tagged, label_column="single"))
    cased = table.assign(single=[s.capitalize() if i % 4 == 0 else s for i, s in enumerate(table["single"])])
    missing = pd.DataFrame([{"file": "img/none.png", "single": "purple"}])  # a class only a left-out row names
    with caplog.at_level("WARNING", logger="keras_transfer"):
        *_, info = kt.load_dataset(
            Table(pd.concat([cased, missing]), root=tagged, label_column="single"), image_size=16
        )
    assert "classes differ only by case or spaces: 'Blue' / 'blue'" in caplog.text
    assert (
        "purple" not in info.class_names
        and "Classes named only by rows left out are not classes: purple" in caplog.text
    )


def test_a_label_on_every_image_is_warned_about_and_left_out_of_the_averages(tagged, caplog):
    from keras_transfer.evaluation import mean_average_precision
    from keras_transfer.objectives import InformativeAUC

    table = pd.read_csv(tagged / "tags.csv")
    table["tags"] = table["tags"] + " photo"
    with caplog.at_level("WARNING", logger="keras_transfer"):
        *_, info = kt.load_dataset(Table(table, root=tagged, label_column="tags", label_delimiter=" "), image_size=16)
    assert (
        "Label 'photo' on every training image" in caplog.text and "left out of the AUC and mAP averages" in caplog.text
    )
    labels = np.array([[1, 0, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], np.float32)  # label 0 on every image
    scores = np.array([[0.1, 0.2, 0.9], [0.2, 0.8, 0.3], [0.3, 0.1, 0.2], [0.4, 0.7, 0.8]], np.float32)
    assert mean_average_precision(scores, labels) == 1.0  # labels 1 and 2 ranked perfectly; label 0 not counted
    auc = InformativeAUC(multi_label=True, num_labels=3)
    auc.update_state(labels, scores)
    assert float(auc.result()) == pytest.approx(1.0)  # Keras's AUC: (0 + 1 + 1) / 3


def test_a_csv_that_is_not_utf8_and_table_options_on_a_folder(tagged, tmp_path, colour_folder):
    (tmp_path / "latin.csv").write_bytes("file,label\nimg/0.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not UTF-8 text: byte b'\\xe9' on line 2"):
        kt.load_dataset(tmp_path / "latin.csv")
    with pytest.raises(ValueError, match="label_delimiter only apply to a table source"):
        source_from(colour_folder, label_delimiter=" ")


def test_several_labels_per_image_give_k_hot_batches_and_iterative_splits(tagged):
    train, val, test, info = kt.load_dataset(
        Table(tagged / "tags.csv", label_column="tags", label_delimiter=" "),
        image_size=24,
        batch_size=5,
        test_split=0.25,
    )
    assert info.multi_label and info.class_names == list(COLOURS)
    assert f"multi-label: 3 labels, {sum(sum(c.values()) for c in info.counts.values()) / 36:.1f} per image" in str(
        info
    )
    images, labels = next(iter(train))
    assert labels.dtype == tf.float32 and labels.shape == (5, 3) and set(np.unique(labels)) <= {0.0, 1.0}
    for split, ds in (("train", train), ("validation", val), ("test", test)):
        sums = _labels(ds).sum(axis=0)
        assert dict(zip(COLOURS, sums.astype(int).tolist())) == info.counts[split]
        assert all(sums > 0), (split, sums)  # every label in every split
    total = {c: sum(info.counts[s][c] for s in info.counts) for c in COLOURS}
    for c in COLOURS:  # each label's share of the test split is its share of all images, within one image
        assert abs(info.counts["test"][c] - 0.25 * total[c]) <= 1.5, (c, info.counts, total)


def test_labels_per_class_counts_images_per_label_and_label_columns(tagged):
    table = pd.read_csv(tagged / "tags.csv")
    for c in COLOURS:
        table[c] = [int(c in tags.split()) for tags in table["tags"]]
    _, _, _, info = kt.load_dataset(
        Table(table, root=tagged, label_columns=COLOURS),
        labels_per_class=3,
        validation_split=0.0,
        image_size=24,
        test_split=0.0,
    )
    assert info.multi_label and info.class_names == list(COLOURS)
    assert all(n >= 3 for n in info.counts["train"].values()) and info.sizes["train"] < 9
    train, _, _, info = kt.load_dataset(
        Table(table, root=tagged, label_columns=COLOURS),
        classes=["red", "blue"],
        validation_split=0,
        image_size=24,
        test_split=0.0,
    )
    assert info.class_names == ["blue", "red"] and info.sizes["train"] == 36  # images with neither stay, label-less
    np.testing.assert_array_equal(_labels(train).sum(axis=0), [table["blue"].sum(), table["red"].sum()])


def test_arrays_with_a_zero_one_matrix_are_several_labels_per_image(rgb_images):
    y = np.random.default_rng(0).integers(0, 2, (20, 4))
    train, _, _, info = kt.load_dataset(
        (rgb_images(20, 16), y), image_size=16, batch_size=20, validation_split=0, test_split=0.0
    )
    assert info.multi_label and info.num_classes == 4
    np.testing.assert_array_equal(np.sort(_labels(train), axis=0), np.sort(y.astype(np.float32), axis=0))


@pytest.fixture(scope="module")
def trained_multilabel(tagged, tmp_path_factory):
    """A small sigmoid model fine-tuned (LP-FT: probe head on cached features, then all layers) on `tagged`."""
    train, val, test, info = kt.load_dataset(
        Table(tagged / "tags.csv", label_column="tags", label_delimiter=" ", split_column="split"),
        image_size=32,
        batch_size=6,
    )
    model = kt.build_model("small_cnn", 3, input_shape=32, weights=None, activation="sigmoid")
    run_dir = tmp_path_factory.mktemp("run")
    stages = dict(head_epochs=2, fine_tune_epochs=1, unfreeze="all", head_init="probe")
    history = kt.fine_tune(model, train, val, run_dir=run_dir, verbose=0, **stages)
    return model, train, val, test, info, history


def test_fine_tune_trains_several_labels_with_binary_cross_entropy_and_their_metrics(trained_multilabel):
    model, train, val, _, _, history = trained_multilabel
    assert {"auc", "precision", "recall", "val_auc", "loss"} <= set(
        history.history
    ) and "accuracy" not in history.history
    assert history.epoch == [0, 1, 2] and all(np.isfinite(history.history["loss"]))
    assert linear_probe(model, train, val) > 0.5  # mAP of one-vs-rest probes: colours are easy


def test_a_head_that_does_not_fit_the_labels_is_refused_before_training(trained_multilabel, colour_folder):
    _, train, _, _, _, _ = trained_multilabel
    softmax = kt.build_model("small_cnn", 3, input_shape=32, weights=None)
    with pytest.raises(ValueError, match="head is softmax.*activation='sigmoid'"):
        kt.fine_tune(softmax, train, head_epochs=1, fine_tune_epochs=0, verbose=0)
    single, _, _, _ = kt.load_dataset(colour_folder, image_size=32, batch_size=6)
    sigmoid = kt.build_model("small_cnn", 3, input_shape=32, weights=None, activation="sigmoid")
    with pytest.raises(ValueError, match="one integer per image: build it with activation='softmax'"):
        kt.fine_tune(sigmoid, single, head_epochs=1, fine_tune_epochs=0, verbose=0)


def test_evaluate_gives_the_multi_label_metrics_scikit_learn_gives(trained_multilabel, tmp_path):
    model, _, val, test, info, _ = trained_multilabel
    thresholds = tune_thresholds(model, val)
    probs = np.concatenate([model.predict_on_batch(x) for x, _ in test])
    truth = _labels(test).astype(int)
    report = kt.evaluate(model, test, info.class_names, thresholds=thresholds, output_dir=tmp_path)
    predicted = (probs >= np.array(thresholds)).astype(int)
    present = truth.sum(axis=0) > 0
    assert report.mean_average_precision == pytest.approx(
        average_precision_score(truth[:, present], probs[:, present]), abs=1e-6
    )
    assert report.macro["f1"] == pytest.approx(
        f1_score(truth[:, present], predicted[:, present], average="macro", zero_division=0), abs=1e-6
    )
    assert report.hamming_loss == pytest.approx(hamming_loss(truth, predicted))
    assert report.subset_accuracy == pytest.approx(np.mean((predicted == truth).all(axis=1)))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["multi_label"] and saved["thresholds"] == pytest.approx(thresholds)
    page = (tmp_path / "report.html").read_text()
    assert page.index('id="map"') < page.index("<h2>Settings</h2>") and "Precision-recall curves" in page
    assert (tmp_path / "pr_curves.png").is_file() and "mAP" in (tmp_path / "report.txt").read_text()


def test_tuned_thresholds_give_each_label_its_best_f1_on_the_images_tuned_on(trained_multilabel):
    model, _, val, _, info, _ = trained_multilabel
    thresholds = tune_thresholds(model, val)
    tuned = kt.evaluate(model, val, thresholds=thresholds)
    for t in (0.2, 0.5, 0.8):
        other = kt.evaluate(model, val, thresholds=t)
        for name in tuned.per_class:
            assert tuned.per_class[name]["f1"] >= other.per_class[name]["f1"] - 1e-9, (name, t)
    with pytest.raises(ValueError, match="one number or 3 numbers"):
        kt.evaluate(model, val, thresholds=[0.5, 0.5])


def test_a_multi_label_export_returns_what_is_predicted_at_its_thresholds(trained_multilabel, tmp_path):
    model, _, _, test, info, _ = trained_multilabel
    thresholds = [0.3, 0.5, 0.7]
    version = kt.export_saved_model(model, tmp_path / "export", class_names=info.class_names, thresholds=thresholds)
    images = next(iter(test))[0]
    out = tf.saved_model.load(version).signatures["serving_default"](images=images)
    assert set(out) == {"probabilities", "predicted"} and out["predicted"].dtype == tf.int32
    np.testing.assert_array_equal(out["predicted"].numpy(), (out["probabilities"].numpy() >= thresholds).astype(int))
    metadata = json.loads((tmp_path / "export" / os.path.basename(version) / "metadata.json").read_text())
    assert metadata["multi_label"] and metadata["thresholds"] == thresholds
    assert export_thresholds(tmp_path / "export") == thresholds
    export_tflite(model, tmp_path / "m.tflite", class_names=info.class_names, thresholds=thresholds)
    facts = tflite_metadata(tmp_path / "m.tflite")
    assert facts["multi_label"] and facts["thresholds"] == thresholds and facts["class_names"] == info.class_names
    got = tflite_predictor(tmp_path / "m.tflite")(images.numpy())  # the metadata leaves it runnable
    np.testing.assert_allclose(got, model.predict_on_batch(images), atol=1e-5)
    single = kt.build_model("small_cnn", 3, input_shape=32, weights=None)
    with pytest.raises(ValueError, match="thresholds apply to a multi-label model"):
        export_onnx(single, tmp_path / "m.onnx", thresholds=0.5)


def test_the_cli_trains_tunes_evaluates_and_exports_a_multi_label_csv(tagged, tmp_path, capsys):
    args = ["--data", str(tagged / "tags.csv"), "--label-column", "tags", "--label-delimiter", " "]
    args += ["--split-column", "split", "--backbone", "small_cnn", "--weights", "none", "--image-size", "32"]
    args += ["--batch-size", "6", "--head-epochs", "1", "--fine-tune-epochs", "1", "--unfreeze", "all"]
    args += ["--output", str(tmp_path / "run"), "--export", str(tmp_path / "export")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "multi-label: 3 labels" in out.splitlines()[0]
    assert "Thresholds tuned on the validation split (highest F1 per label): blue " in out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert f"mAP {report['mean_average_precision']:.4f}" in out
    metadata = json.loads((tmp_path / "export" / "1" / "metadata.json").read_text())
    assert metadata["thresholds"] == pytest.approx(report["thresholds"]) and metadata["metrics"]["split"] == "test"
    images = [str(tagged / "img" / f"{i}.png") for i in range(3)]
    assert cli.main(["predict", str(tmp_path / "export"), *images, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    served = tf.saved_model.load(str(tmp_path / "export" / "1")).signatures["serve_bytes"]
    for result, path in zip(results, images, strict=True):  # the labels at or above their thresholds, no others
        probs = served(image_bytes=tf.constant([Path(path).read_bytes()]))["probabilities"].numpy()[0]
        expected = [COLOURS[j] for j in np.argsort(-probs) if probs[j] >= metadata["thresholds"][j]]
        assert [p["label"] for p in result["predictions"]] == expected
