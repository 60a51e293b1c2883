"""Export for serving: fresh-process parity with only TensorFlow importable, atomic versions, TFLite."""

import io
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import keras_transfer as kt
from keras_transfer.export import export_tflite
from keras_transfer.images import image_array

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    # ResNet50: at random initialization its outputs still vary with the input (MobileNetV2's collapse to a constant).
    return kt.build_model("resnet50", 3, input_shape=32, weights=None, dense_units=(8,))


def _png_bytes(rng, size):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


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
print(json.dumps({"floats": floats["probabilities"].numpy().tolist(), "ids": floats["class_ids"].numpy().tolist(),
                  "bytes": encoded["probabilities"].numpy().tolist(), "bad": bad,
                  "keras_loaded": "keras" in sys.modules and sys.modules["keras"] is not None}))
"""


@pytest.mark.slow
def test_export_serves_what_was_trained_in_a_process_without_keras(model, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 45, 37, 3)).astype("float32")
    encoded = [_png_bytes(rng, (40, 50)), _png_bytes(rng, (32, 32)), _png_bytes(rng, (70, 20))]
    # serve_bytes decodes as a training folder does: images.decode_image at the model's size (32x32)
    decoded = [image_array(b, size=(32, 32)) for b in encoded]
    np.savez(tmp_path / "data.npz", images=images, encoded=np.array(encoded, dtype=object))

    path = kt.export_saved_model(model, str(tmp_path / "served"), class_names=["a", "b", "c"],
                                 metadata={"metrics": {"accuracy": 0.5}})  # fmt: skip
    assert path == str(tmp_path / "served" / "1")
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    out = subprocess.run([sys.executable, str(script), path, str(tmp_path / "data.npz")], env=ENV,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(served["floats"], expected, atol=1e-5)
    assert served["ids"] == expected.argmax(1).tolist()
    for got, image in zip(served["bytes"], decoded):
        np.testing.assert_allclose(got, model.predict(image[None], verbose=0)[0], atol=1e-5)
    assert "not a JPEG, PNG, GIF, BMP or WebP image" in served["bad"]
    assert not served["keras_loaded"]

    cli = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--all",
                          "--dir", path], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "signature_def['serving_default']" in cli.stdout and "signature_def['serve_bytes']" in cli.stdout
    assert (tmp_path / "served" / "1" / "labels.txt").read_text() == "a\nb\nc\n"
    metadata = json.loads((tmp_path / "served" / "1" / "metadata.json").read_text())
    assert metadata["input_size"] == [32, 32] and metadata["preprocessing"] == "caffe"
    assert metadata["class_names"] == ["a", "b", "c"] and metadata["metrics"] == {"accuracy": 0.5}


KILLED_EXPORT = """
import os, signal, sys
import keras_transfer as kt
from keras_transfer import export

write = export._write_saved_model
def write_then_die(model, path):
    write(model, path)
    os.kill(os.getpid(), signal.SIGKILL)   # killed after writing, before the version is renamed into place
export._write_saved_model = write_then_die
kt.export_saved_model(kt.build_model("mobilenet_v2", 2, input_shape=32, weights=None), sys.argv[1])
"""


@pytest.mark.slow
def test_a_killed_export_leaves_no_version_and_old_versions_intact(model, tmp_path):
    base = tmp_path / "served"
    kt.export_saved_model(model, str(base))
    before = sorted(os.listdir(base / "1"))
    script = tmp_path / "killed.py"
    script.write_text(KILLED_EXPORT)
    out = subprocess.run([sys.executable, str(script), str(base)], env=ENV, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    assert sorted(n for n in os.listdir(base) if not n.startswith(".")) == ["1"]
    assert sorted(os.listdir(base / "1")) == before
    assert kt.export_saved_model(model, str(base)) == str(base / "2")  # the next version still comes


def test_export_errors(model, tmp_path):
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


@pytest.mark.slow
@pytest.mark.parametrize("quantize,atol", [(None, 1e-5), ("dynamic", 0.05)])
def test_tflite_matches_keras(model, tmp_path, quantize, atol):
    import tensorflow as tf

    path = str(tmp_path / "model.tflite")
    size = export_tflite(model, path, quantize=quantize)
    assert size == os.path.getsize(path)
    x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    interpreter = tf.lite.Interpreter(model_path=path)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=atol)


def test_the_test_model_is_not_constant(model):
    x = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    assert model.predict(x, verbose=0).std(axis=0).max() > 1e-2  # else the parity tests above prove little
