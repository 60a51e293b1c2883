"""Deployment with an accuracy check: TFLite float16 / int8 through LiteRT, one predictor for every format, and
`benchmark_exports`' table."""

import json
import os
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import encode

import keras_transfer as kt
from keras_transfer import export
from keras_transfer.export import benchmark_exports, export_tflite, format_exports, load_predictor, tflite_predictor
from keras_transfer.report import write_html


@pytest.mark.slow
@pytest.mark.parametrize("quantize,atol,smaller", [(None, 1e-4, 1.0), ("float16", 2e-2, 0.55), ("int8", None, 0.3)])
def test_each_tflite_file_gives_keras_probabilities_through_litert(digits_model, tmp_path, quantize, atol, smaller):
    model, train, _, images = digits_model
    keras_probabilities = model.predict(images, verbose=0)
    sizes = {}
    for q in {None, quantize}:
        sizes[q] = export_tflite(model, tmp_path / f"{q}.tflite", quantize=q, representative_data=train)
    got = tflite_predictor(tmp_path / f"{quantize}.tflite")(images)
    assert got.dtype == np.float32 and got.shape == keras_probabilities.shape
    if atol is not None:
        np.testing.assert_allclose(got, keras_probabilities, atol=atol)
    else:  # int8: the top class is what counts
        assert np.mean(got.argmax(-1) == keras_probabilities.argmax(-1)) >= 0.9
        assert np.abs(got - keras_probabilities).max() > 0  # it did quantize
    assert sizes[quantize] <= smaller * sizes[None]
    assert export.tflite_metadata(tmp_path / f"{quantize}.tflite")["quantize"] == quantize


@pytest.mark.slow
def test_an_integer_only_file_takes_and_gives_uint8(digits_model, tmp_path):
    model, train, _, images = digits_model
    path = tmp_path / "uint8.tflite"
    export_tflite(
        model, path, quantize="int8", representative_data=export.dataset_images(train, 64), input_type="uint8"
    )
    interpreter = export.tflite_interpreter(path)
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    got = tflite_predictor(path)(images)  # quantized in and dequantized out by the details' scales
    agreement = np.mean(got.argmax(-1) == model.predict(images, verbose=0).argmax(-1))
    assert agreement >= 0.9 and np.allclose(got.sum(-1), 1, atol=0.1)


def test_tflite_options_are_checked_before_any_work(digits_model, tmp_path):
    model, _, _, images = digits_model
    with pytest.raises(ValueError, match=r"none was given.*Received: representative_data=None"):
        export_tflite(model, tmp_path / "a.tflite", quantize="int8")
    with pytest.raises(ValueError, match=r"shape \(height, width, 3\) = \(32, 32, 3\).*\(4, 16, 16, 3\)"):
        export_tflite(model, tmp_path / "a.tflite", quantize="int8", representative_data=np.zeros((4, 16, 16, 3)))
    with pytest.raises(ValueError, match=r"quantize must be one of None, 'dynamic', 'float16', 'int8'.*'int4'"):
        export_tflite(model, tmp_path / "a.tflite", quantize="int4")
    with pytest.raises(ValueError, match=r"'uint8' with quantize='int8'.*input_type='uint8', quantize='float16'"):
        export_tflite(model, tmp_path / "a.tflite", quantize="float16", input_type="uint8")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_model_tflite_cannot_convert_is_refused_naming_the_layer(tmp_path):
    keras.utils.set_random_seed(0)
    images = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(tf.math.erf, name="odd")(keras.layers.Rescaling(1 / 255)(images))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(images, keras.layers.Dense(2, activation="softmax", name="predictions")(x), name="odd_model")
    with pytest.raises(
        ValueError,
        match=r"Cannot convert 'odd_model' to TFLite \(quantize='int8'\): layer 'odd' "
        r"\(Lambda\) uses Erf, which TFLite has no built-in kernel for\. Export a SavedModel or ONNX",
    ):
        export_tflite(model, tmp_path / "odd.tflite", quantize="int8", representative_data=np.zeros((2, 32, 32, 3)))
    assert os.listdir(tmp_path) == []
    rows = benchmark_exports(model, [(np.zeros((2, 32, 32, 3), np.float32), np.zeros(2))], formats=["tflite"])
    assert rows[0]["format"] == "tflite" and rows[0]["error"].startswith("ValueError: Cannot convert 'odd_model'")


def test_without_litert_the_error_says_how_to_install_it(digits_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ImportError, match=r"needs LiteRT .*pip install 'keras_transfer\[tflite\]' \(ai-edge-litert\)"):
        export.tflite_interpreter(tmp_path / "any.tflite")


@pytest.mark.slow
def test_one_predictor_reads_every_format_through_one_decoder(digits_model, tmp_path):
    model, _, _, images = digits_model
    names = [f"digit {i}" for i in range(10)]
    model.save(tmp_path / "model.keras")
    kt.export_saved_model(model, tmp_path / "served", class_names=names)
    export_tflite(model, tmp_path / "model.tflite", class_names=names)
    export.export_onnx(model, tmp_path / "model.onnx", class_names=names)
    rng = np.random.default_rng(0)
    blobs = [encode(images[0]), encode(images[1]), encode(rng.integers(0, 256, (48, 40, 3)))]  # one to resize
    expected = keras_probabilities = export.keras_predictor(model)(blobs)
    for path, atol in [("served", 1e-5), ("model.tflite", 1e-4), ("model.onnx", 1e-4)]:
        for tta in (None, "flip"):
            predict, classes = load_predictor(str(tmp_path / path), tta=tta)
            expected = export.keras_predictor(model, tta=tta)(blobs) if tta else keras_probabilities
            np.testing.assert_allclose(predict(blobs), expected, atol=atol, err_msg=f"{path} tta={tta}")
            assert classes == names, path
    predict, classes = load_predictor(str(tmp_path / "model.keras"))
    np.testing.assert_allclose(predict(blobs), keras_probabilities, atol=1e-6)
    with pytest.raises(ValueError, match=r"is not a \.keras file, a SavedModel folder.*\.tflite file or a \.onnx"):
        load_predictor(str(tmp_path / "nothing.tflite"))


@pytest.mark.slow
def test_benchmark_exports_measures_every_format_side_by_side(digits_model, tmp_path):
    model, train, test, _ = digits_model
    out = tmp_path / "exports"
    rows = benchmark_exports(model, test, representative_data=train, output_dir=out, repeats=1)
    assert [r["format"] for r in rows] == list(export.EXPORT_FORMATS)
    by = {r["format"]: r for r in rows}
    assert not [r for r in rows if "error" in r], rows
    assert by["keras"]["agreement"] == 1.0 and by["keras"]["max_difference"] == 0.0
    for name in ("saved_model", "tflite", "onnx"):
        assert by[name]["max_difference"] < 1e-4 and by[name]["accuracy"] == by["keras"]["accuracy"], by[name]
    assert by["tflite_float16"]["max_difference"] < 2e-2 and by["tflite_int8"]["agreement"] >= 0.9
    assert by["tflite_int8"]["bytes"] < 0.3 * by["tflite"]["bytes"] < by["tflite_float16"]["bytes"]
    assert all(r["latency_ms"] > 0 and r["images_per_second"] > 0 for r in rows)
    assert json.loads((out / "exports.json").read_text()) == rows
    assert os.path.getsize(out / "model_int8.tflite") == by["tflite_int8"]["bytes"]
    table = format_exports(rows).splitlines()
    assert len(table) == 1 + len(rows) and table[3].split()[:4] == [
        "tflite",
        f"{rows[2]['bytes'] / 1e6:.2f}",
        "MB",
        "1.00x",
    ]
    missing = benchmark_exports(model, test, formats=["keras", "tflite_int8"], repeats=1)  # no calibration images
    assert "representative_data" in missing[1]["error"] and "bytes" not in missing[1]
    with pytest.raises(ValueError, match=r"Unknown export formats \['tensorrt'\]"):
        benchmark_exports(model, test, formats=["tensorrt"])


def test_the_report_page_shows_the_export_table(digits_model, tmp_path):
    model, _, test, _ = digits_model
    kt.evaluate(model, test.take(1), output_dir=tmp_path)
    os.makedirs(tmp_path / "exports")
    rows = [
        {
            "format": "keras",
            "bytes": 1000,
            "metric": "accuracy",
            "accuracy": 0.9,
            "agreement": 1.0,
            "max_difference": 0.0,
            "latency_ms": 2.5,
            "images_per_second": 400.0,
        },
        {"format": "tflite_int8", "error": "ValueError: no calibration <images>"},
    ]
    (tmp_path / "exports" / "exports.json").write_text(json.dumps(rows))
    page = Path(write_html(str(tmp_path))).read_text()
    assert "<h2>Exports</h2>" in page and "accuracy 90.00%" in page
    assert "not measured: ValueError: no calibration &lt;images&gt;" in page


@pytest.mark.slow
def test_export_bench_on_a_finished_run_writes_the_table_and_the_report_section(tmp_path, capsys):
    from keras_transfer.cli import main

    run = tmp_path / "run"
    flags = ["--data", "digits", "--backbone", "small_cnn", "--weights", "none", "--image-size", "32"]
    flags += ["--head-epochs", "1", "--fine-tune-epochs", "0", "--test-split", "0.1", "--output", str(run)]
    assert main(flags) == 0
    assert main(["export-bench", str(tmp_path / "nothing")]) == 2
    assert "holds no finished run" in capsys.readouterr().err
    assert main(["export-bench", str(run), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = json.loads((run / "exports" / "exports.json").read_text())
    assert [r["format"] for r in rows] == list(export.EXPORT_FORMATS) and not [r for r in rows if "error" in r]
    tested = kt.load_dataset("digits", image_size=32, validation_split=0.0, test_split=0.1, seed=0)[2]
    assert f"scored on the {sum(len(y) for _, y in tested)} test images" in out
    assert format_exports(rows).splitlines()[0] in out and "<h2>Exports</h2>" in (run / "report.html").read_text()
