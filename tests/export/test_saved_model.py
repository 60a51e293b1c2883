"""Export for serving: fresh-process parity with only TensorFlow importable, atomic versions, TFLite."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SUBPROCESS_ENV, encode

import keras_transfer as kt
from keras_transfer.images import image_array
from keras_transfer.models import feature_model, output_layer

ENV = SUBPROCESS_ENV


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    # ResNet50: at random initialization its outputs still vary with the input (MobileNetV2's collapse to a constant).
    return kt.build_model("resnet50", 3, input_shape=32, weights=None, dense_units=(8,))


FRESH_PROCESS = """
import json, sys
sys.modules["keras"] = None            # only TensorFlow may be importable here
sys.modules["keras_transfer"] = None
import numpy as np, tensorflow as tf
export, data = sys.argv[1], np.load(sys.argv[2], allow_pickle=True)
loaded = tf.saved_model.load(export)
floats = loaded.signatures["serving_default"](images=tf.constant(data["images"]))
encoded = loaded.signatures["serve_bytes"](image_bytes=tf.constant(list(data["encoded"])))
try:
    loaded.signatures["serve_bytes"](image_bytes=tf.constant([b"this is not an image"]))
    bad = "no error"
except tf.errors.InvalidArgumentError as e:
    bad = e.message
import resource, struct, zlib
chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
bomb = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
bomb += chunk(b"IDAT", zlib.compress(b"\\x00" * 100000)) + chunk(b"IEND", b"")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    loaded.signatures["serve_bytes"](image_bytes=tf.constant([bomb]))
    big = "no error"
except tf.errors.InvalidArgumentError as e:
    big = e.message
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"floats": floats["probabilities"].numpy().tolist(), "ids": floats["class_ids"].numpy().tolist(),
                  "bytes": encoded["probabilities"].numpy().tolist(), "bad": bad, "big": big, "grown": grown,
                  "keras_loaded": "keras" in sys.modules and sys.modules["keras"] is not None}))
"""


@pytest.mark.slow
def test_export_serves_what_was_trained_in_a_process_without_keras(model, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 45, 37, 3)).astype("float32")
    encoded = [encode(rng.integers(0, 256, (*size, 3))) for size in ((40, 50), (32, 32), (70, 20))]
    # serve_bytes decodes as a training folder does: images.decode_image at the model's size (32x32)
    decoded = [image_array(b, size=(32, 32)) for b in encoded]
    np.savez(tmp_path / "data.npz", images=images, encoded=np.array(encoded, dtype=object))

    path = kt.export_saved_model(
        model, str(tmp_path / "served"), class_names=["a", "b", "c"], metadata={"metrics": {"accuracy": 0.5}}
    )
    assert path == str(tmp_path / "served" / "1")
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    out = subprocess.run(
        [sys.executable, str(script), path, str(tmp_path / "data.npz")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(served["floats"], expected, atol=1e-5)
    assert served["ids"] == expected.argmax(1).tolist()
    for got, image in zip(served["bytes"], decoded):
        np.testing.assert_allclose(got, model.predict(image[None], verbose=0)[0], atol=1e-5)
    assert "not a JPEG, PNG, GIF, BMP or WebP image" in served["bad"]
    # A 60000x60000 PNG header (10.8 GB decoded) is refused from its header: peak memory grew by under 50 MB.
    assert "An image declares" in served["big"] and "above the limit of 89,478,485" in served["big"], served["big"]
    assert "60000" in served["big"] and served["grown"] < 50e6, served
    assert not served["keras_loaded"]

    cli = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--all", "--dir", path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "signature_def['serving_default']" in cli.stdout and "signature_def['serve_bytes']" in cli.stdout
    assert (tmp_path / "served" / "1" / "labels.txt").read_text() == "a\nb\nc\n"
    metadata = json.loads((tmp_path / "served" / "1" / "metadata.json").read_text())
    assert metadata["input_size"] == [32, 32] and metadata["preprocessing"] == "caffe"
    assert metadata["class_names"] == ["a", "b", "c"] and metadata["metrics"] == {"accuracy": 0.5}


KILLED_EXPORT = """
import os, signal, sys
import keras_transfer as kt
from keras_transfer.export import saved_model as export

write = export._write_saved_model
def write_then_die(model, path, thresholds=None):
    write(model, path, thresholds)
    os.kill(os.getpid(), signal.SIGKILL)   # killed after writing, before the version is renamed into place
export._write_saved_model = write_then_die
kt.export_saved_model(kt.build_model("small_cnn", 2, input_shape=32, weights=None), sys.argv[1])
"""


@pytest.mark.slow
def test_a_killed_export_leaves_no_version_and_old_versions_intact(tmp_path):
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)  # what is exported does not matter here
    base = tmp_path / "served"
    kt.export_saved_model(model, str(base))
    before = sorted(os.listdir(base / "1"))
    script = tmp_path / "killed.py"
    script.write_text(KILLED_EXPORT)
    out = subprocess.run([sys.executable, str(script), str(base)], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    assert sorted(n for n in os.listdir(base) if not n.startswith(".")) == ["1"]
    assert sorted(os.listdir(base / "1")) == before
    assert kt.export_saved_model(model, str(base)) == str(base / "2")  # the next version still comes


def test_an_empty_batch_gets_empty_answers(model, tmp_path):
    loaded = tf.saved_model.load(kt.export_saved_model(model, tmp_path / "export"))
    for name, inputs in (
        ("serving_default", {"images": tf.zeros([0, 32, 32, 3])}),
        ("serve_bytes", {"image_bytes": tf.zeros([0], tf.string)}),
    ):
        outputs = loaded.signatures[name](**inputs)
        assert outputs["probabilities"].shape == (0, 3) and outputs["class_ids"].shape == (0,), name


def test_export_errors(tmp_path):
    model = kt.build_model("small_cnn", 3, input_shape=32, weights=None)
    kt.export_saved_model(model, str(tmp_path / "s"), version=3)
    with pytest.raises(ValueError, match=r"Version 3 already exists in .*existing versions: \[3\]"):
        kt.export_saved_model(model, str(tmp_path / "s"), version=3)
    with pytest.raises(ValueError, match=r"class_names has 2 names but the model predicts 3 classes"):
        kt.export_saved_model(model, str(tmp_path / "t"), class_names=["a", "b"])
    locked = tmp_path / "locked"
    locked.write_text("a file, not a folder")
    with pytest.raises(OSError, match=r"Cannot write an export into .*locked"):
        kt.export_saved_model(model, str(locked / "x"))
    dynamic = kt.build_model("vgg16", 2, input_shape=(None, None), weights=None)
    with pytest.raises(ValueError, match=r"takes images of any size.*fixed input_shape"):
        kt.export_saved_model(dynamic, str(tmp_path / "u"))


def test_the_test_model_is_not_constant(model):
    x = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    assert model.predict(x, verbose=0).std(axis=0).max() > 1e-2  # else the parity tests above prove little


def _digit_images(n=32, size=32):
    _, _, test, _ = kt.load_dataset("digits", image_size=size, batch_size=n, test_split=0.1, deterministic=True)
    return next(iter(test))[0].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["small_cnn", "resnet50", "efficientnet_lite0"])
def test_onnx_runtime_gives_keras_probabilities(backbone, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from keras_transfer.export import export_onnx

    keras.utils.set_random_seed(0)
    model = kt.build_model(backbone, 3, input_shape=32, weights=None)
    images = _digit_images()
    # The classifier starts at zeros (the same output for every image): logits of about unit spread instead.
    features = feature_model(model).predict(images, verbose=0)
    head = output_layer(model)
    kernel = np.random.default_rng(0).normal(0, 1, (features.shape[1], 3)) / np.sqrt((features.var(axis=0)).sum())
    head.set_weights([kernel.astype("float32"), (-features.mean(axis=0) @ kernel).astype("float32")])
    path = export_onnx(model, tmp_path / "model.onnx", class_names=["cat", "dog", "fox"])
    session = ort.InferenceSession(path)
    assert [(i.name, i.shape[1:]) for i in session.get_inputs()] == [("images", [32, 32, 3])]
    expected = model.predict(images, verbose=0)
    got = session.run(None, {"images": images})[0]
    assert expected.std(axis=0).max() > 1e-4  # the outputs depend on the image, so the comparison can fail
    np.testing.assert_allclose(got, expected, atol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == ["cat", "dog", "fox"] and meta["backbone"] == backbone
    assert (tmp_path / "model.labels.txt").read_text() == "cat\ndog\nfox\n"


@pytest.mark.slow
def test_onnx_export_names_the_layer_it_cannot_convert_and_writes_nothing(tmp_path):
    pytest.importorskip("tf2onnx")
    import tensorflow as tf

    from keras_transfer.export import export_onnx

    class Bessel(keras.layers.Layer):
        def call(self, x):
            return tf.math.special.bessel_i1e(x)

    images = keras.Input((8, 8, 3), name="images")
    pooled = keras.layers.GlobalAveragePooling2D()(Bessel(name="odd_layer")(images))
    model = keras.Model(images, keras.layers.Dense(2, activation="softmax", name="predictions")(pooled))
    with pytest.raises(ValueError, match=r"layer 'odd_layer' \(Bessel\) uses BesselI1e, which ONNX cannot express"):
        export_onnx(model, tmp_path / "model.onnx")
    assert os.listdir(tmp_path) == []


def test_a_model_that_augments_exports_without_its_augmentation_and_serves_the_same(tmp_path):
    from keras_transfer.models import inference_model

    model = kt.build_model("small_cnn", 3, input_shape=32, weights=None, augment=True)
    served = inference_model(model)
    assert "augmentation" not in [layer.name for layer in served.layers]
    assert [layer.name for layer in model.layers if layer.name != "augmentation"][1:] == [
        layer.name for layer in served.layers
    ][1:]  # the same layers (shared weights) after the input
    images = np.random.default_rng(0).uniform(0, 255, (2, 40, 36, 3)).astype("float32")
    version = kt.export_saved_model(model, tmp_path / "served")
    loaded = tf.saved_model.load(version)
    np.testing.assert_allclose(
        loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy(),
        model.predict(images, verbose=0),
        atol=1e-5,
    )
