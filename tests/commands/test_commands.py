"""keras-transfer predict / export / retrieve, through the front door's main(argv) as their scripts call it."""

import json
import os
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import keras_transfer as kt
from keras_transfer import cli
from keras_transfer.images import image_array

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name):
    """A command as its shim in scripts/ runs it: `main(argv)` of `keras-transfer NAME`."""
    source = (SCRIPTS / f"{name}.py").read_text()
    assert f'main(["{name}", *sys.argv[1:]])' in source  # the script is a shim over the front door
    return types.SimpleNamespace(main=lambda argv: cli.main([name, *argv]))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A .keras model, its SavedModel export (via scripts/export.py) and a few images."""
    root = tmp_path_factory.mktemp("scripts")
    keras.utils.set_random_seed(0)
    # small_cnn: ResNet50 made the TFLite and ONNX conversions below take 37 s (the conversions, not the
    # backbone, are what these tests check; tests/test_export.py converts ResNet50 and EfficientNet-Lite0 to ONNX)
    model = kt.build_model("small_cnn", 3, input_shape=32, weights=None)
    model.save(root / "model.keras")
    (root / "labels.txt").write_text("cat\ndog\nfox\n")
    code = _script("export").main(
        [str(root / "model.keras"), "--saved-model", str(root / "served"), "--labels", str(root / "labels.txt")]
    )
    assert code == 0
    rng = np.random.default_rng(0)
    os.makedirs(root / "images" / "nested")
    for i, size in enumerate([(40, 30), (32, 32), (50, 64)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "images" / "nested" / "n.jpg")
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 no end")
    return root, model


@pytest.mark.slow
def test_predict_saved_model_json_matches_keras(saved, capsys):
    root, model = saved
    assert _script("predict").main([str(root / "served"), str(root / "images"), "--json", "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [os.path.basename(r["path"]) for r in results] == ["0.png", "1.png", "2.png", "n.jpg"]
    assert "broken.jpg: truncated JPEG" in captured.err
    # decoded as training folders are: at the model's size (kt.models.input_size)
    image = image_array((root / "images" / "0.png").read_bytes(), size=kt.models.input_size(model))[None]
    probs = model.predict(image, verbose=0)[0]
    top = results[0]["predictions"]
    assert len(top) == 2 and top[0]["label"] == ["cat", "dog", "fox"][int(probs.argmax())]
    assert top[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)


@pytest.mark.slow
def test_predict_keras_file_table(saved, capsys):
    root, _ = saved
    assert _script("predict").main([str(root / "model.keras"), str(root / "images" / "1.png"), "--top-k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(root / "images" / "1.png")) and line.count("%") == 3


@pytest.mark.slow
def test_export_tflite_onnx_and_bad_arguments(saved, capsys):
    root, _ = saved
    export = _script("export")
    assert (
        export.main(
            [
                str(root / "model.keras"),
                "--tflite",
                str(root / "m.tflite"),
                "--quantize",
                "dynamic",
                "--onnx",
                str(root / "m.onnx"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "TFLite:" in out and (root / "m.tflite").stat().st_size > 0
    assert f"ONNX: {root / 'm.onnx'}" in out and (root / "m.onnx").stat().st_size > 0
    assert export.main([str(root / "model.keras")]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert _script("predict").main([str(root / "nowhere"), str(root / "images")]) == 2
    assert "is not a .keras file, a SavedModel folder" in capsys.readouterr().err


def test_predict_imagenet_names_the_flower_offline(tmp_path, capsys):
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    flower = tmp_path / "flower.jpg"
    Image.fromarray(
        sample.images[sample.filenames.index(next(f for f in sample.filenames if f.endswith("flower.jpg")))]
    ).save(flower)
    assert _script("predict").main(["--imagenet", str(flower), "--top-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["predictions"][0]["label"] == "daisy" and len(result["predictions"]) == 3
    assert _script("predict").main(["--imagenet", "--backbone", "small_cnn", str(flower)]) == 2
    assert "Backbone 'small_cnn' has no ImageNet classifier" in capsys.readouterr().err


def test_every_script_turns_a_refused_model_into_one_line(tmp_path, capsys):
    unsafe = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    unsafe.save(tmp_path / "lambda.keras")
    (tmp_path / "garbage.keras").write_bytes(b"not a zip")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    for model in ("lambda.keras", "garbage.keras"):
        path = str(tmp_path / model)
        for script, argv in (
            ("export", [path, "--tflite", str(tmp_path / "m.tflite")]),
            ("predict", [path, str(image)]),
            ("retrieve", ["index", str(tmp_path), "--model", path, "--index", str(tmp_path / "i")]),
        ):
            code = _script(script).main(argv)
            err = capsys.readouterr().err
            assert code in (1, 2) and err.count("\n") == 1 and "Traceback" not in err, (script, model, err)
            assert err.startswith(f"keras-transfer {script}: error: "), err


CUSTOM_LAYER = """
import keras

@keras.saving.register_keras_serializable(package="mine")
class Halve(keras.layers.Layer):
    def call(self, x):
        return x / 2
"""


def test_export_loads_lambda_and_custom_layers_when_told_how(tmp_path, capsys, monkeypatch):
    def image_model(middle):
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.GlobalAveragePooling2D()(middle(inputs))
        return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="predictions")(x))

    image_model(keras.layers.Lambda(lambda x: x / 255.0)).save(tmp_path / "lambda.keras")
    (tmp_path / "mylayers.py").write_text(CUSTOM_LAYER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import mylayers

    image_model(mylayers.Halve()).save(tmp_path / "custom.keras")
    monkeypatch.delitem(keras.saving.get_custom_objects(), "mine>Halve")  # a fresh process knows no such class
    export = _script("export")
    for name, fix in (("lambda", ["--unsafe"]), ("custom", ["--import", "mylayers"])):
        argv = [str(tmp_path / f"{name}.keras"), "--saved-model", str(tmp_path / f"{name}_export")]
        assert export.main(argv) == 2
        assert f"keras-transfer export/predict {fix[0]}" in capsys.readouterr().err
        monkeypatch.delitem(__import__("sys").modules, "mylayers", raising=False)
        assert export.main([*argv, *fix]) == 0, capsys.readouterr().err
        assert (tmp_path / f"{name}_export" / "1" / "saved_model.pb").exists()
    assert export.main([str(tmp_path / "custom.keras"), "--tflite", "x.tflite", "--import", "nosuchmodule"]) == 2
    assert "argument --import: cannot import 'nosuchmodule'" in capsys.readouterr().err


def test_export_and_predict_read_the_class_names_of_a_run_folder(tmp_path, capsys):
    from keras_transfer.runs import run_file

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    kt.build_model("small_cnn", 3, input_shape=32, weights=None).save(run_file(run_dir, "model"))
    (run_dir / "data.json").write_text(json.dumps({"class_names": ["cat", "dog", "fox"], "multi_label": False}))
    assert cli.main(["export", str(run_dir), "--saved-model", str(tmp_path / "served")]) == 0
    assert (tmp_path / "served" / "1" / "labels.txt").read_text().split() == ["cat", "dog", "fox"]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    capsys.readouterr()
    assert cli.main(["predict", run_file(run_dir, "model"), str(tmp_path / "x.png"), "--json"]) == 0
    labels = {p["label"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]}
    assert labels == {"cat", "dog", "fox"}
