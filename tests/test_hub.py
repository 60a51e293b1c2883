"""TF Hub modules as backbones, with a hub-style SavedModel made here (no network)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer.hub import HubLayer, import_tensorflow_hub


class _ImageModule(tf.Module):
    """A reusable SavedModel like TF Hub's image feature-vector modules: module(images in [0, 1], training)."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 16], seed=[1, 2], stddev=0.5), name="kernel")
        self.bias = tf.Variable(tf.zeros([16]), name="bias")
        self.moving_scale = tf.Variable(tf.ones([16]), trainable=False, name="moving_scale")
        self.variables_list = [self.kernel, self.bias, self.moving_scale]

    @tf.function
    def __call__(self, images, training=False):
        x = tf.nn.conv2d(images, self.kernel, 2, "SAME") + self.bias
        if training:  # like dropout: training behaves differently, inference is deterministic
            x = x * 1.0
        return tf.reduce_mean(tf.nn.relu(x) * self.moving_scale, axis=[1, 2])


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "image_module"
    module = _ImageModule()
    for training in (False, True):
        module.__call__.get_concrete_function(tf.TensorSpec([None, None, None, 3], tf.float32), training=training)
    obj = tf.train.Checkpoint()  # the hub convention: __call__ plus variable lists as attributes
    obj.__call__ = module.__call__
    obj.variables = module.variables_list
    obj.trainable_variables = [module.kernel, module.bias]
    tf.saved_model.save(obj, str(path))
    return str(path)


def test_builds_scales_to_unit_range_and_predicts(hub_dir, rgb_images):
    model = kt.build_model(f"hub:{hub_dir}", 3, input_shape=32, weights=None)
    assert model.name == "hub_image_module"
    assert model.get_layer("preprocessing").mode == "unit"
    assert [w.trainable for w in model.get_layer("backbone").weights] == [True, True, False]
    probs = model.predict(rgb_images(2, 40), verbose=0)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # The module saw [0, 1] images: its features equal a direct call on x / 255 at the model's size.
    x = rgb_images(2, 32)
    module = tf.saved_model.load(hub_dir)
    features = kt.models.feature_model(model)(x)
    np.testing.assert_allclose(features, module(x / 255.0, training=False), atol=1e-5)


def test_fine_tuning_trains_the_module_variables_in_place(hub_dir, rgb_images):
    model = kt.build_model(f"hub:{hub_dir}", 2, input_shape=32, weights=None)
    layer = model.get_layer("backbone").get_layer("hub_module")
    before = [np.array(v) for v in layer._module.variables]
    x, y = rgb_images(8, 32), np.array([0, 1] * 4)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    kt.fine_tune(
        model, train, head_epochs=1, fine_tune_epochs=2, unfreeze="all", fine_tune_learning_rate=1e-2, verbose=0
    )
    after = [np.array(v) for v in layer._module.variables]
    assert not np.allclose(before[0], after[0])  # the kernel trained
    np.testing.assert_array_equal(before[2], after[2])  # the non-trainable variable did not


def test_exports_and_reloads_with_tensorflow_alone(hub_dir, tmp_path, rgb_images):
    model = kt.build_model(f"hub:{hub_dir}", 2, input_shape=32, weights=None)
    path = kt.export_saved_model(model, tmp_path / "export")
    x = rgb_images(3, 45)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(served["probabilities"].numpy(), model.predict(x, verbose=0), atol=1e-5)


def test_keras_file_needs_an_explicit_opt_in(hub_dir, tmp_path, rgb_images):
    model = kt.build_model(f"hub:{hub_dir}", 2, input_shape=32, weights=None)
    kernel = model.get_layer("backbone").get_layer("hub_module").weights[0]
    kernel.assign(kernel * 2.0)  # as if fine-tuned: the .keras file must carry the new values, not the module's
    model.save(tmp_path / "hub.keras")
    with pytest.raises(ValueError, match=r"holds the TF Hub module .*safe_mode=False"):
        keras.saving.load_model(tmp_path / "hub.keras")
    loaded = keras.saving.load_model(tmp_path / "hub.keras", safe_mode=False)
    x = rgb_images(2, 32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    reloaded = loaded.get_layer("backbone").get_layer("hub_module")
    np.testing.assert_array_equal(np.array(reloaded._module.variables[0]), np.array(kernel))  # inside the module


def test_bad_handles_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"neither a URL nor a SavedModel folder"):
        kt.build_model(f"hub:{tmp_path}", 2, weights=None)
    with pytest.raises(ValueError, match=r"A hub or keras-hub backbone brings its own weights"):
        kt.build_model(f"hub:{tmp_path}", 2, weights="x.weights.h5")

    hub = import_tensorflow_hub()  # declared by the package: it must import, not skip

    def offline(handle):
        raise OSError("URLError: <urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(hub, "resolve", offline)
    with pytest.raises(OSError, match=r"Could not download the hub module .*hub:/path/to/folder"):
        HubLayer("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")


def test_the_default_unfreeze_works_on_a_renamed_hub_model(hub_dir):
    model = kt.build_model(f"hub:{hub_dir}", 2, input_shape=32, weights=None)
    model.name = "renamed"
    assert kt.models.backbone_key(model) == f"hub:{hub_dir}"
    summary = kt.set_trainable(model, "stages:1")  # a hub module is one stage: all of it trains
    assert summary.first_trainable == "hub_module" and summary.trainable_layers == 1
    with pytest.raises(ValueError, match=r"has 1 stage \(hub_module\); K must be in 1\.\.1"):
        kt.set_trainable(model, "stages:2")


def test_a_hub_url_resolves_through_tensorflow_hub_in_a_new_environment(hub_dir, tmp_path, monkeypatch, rgb_images):
    # A new venv has setuptools >= 81 (no pkg_resources, which tensorflow_hub 0.16.1 imports): the URL still loads,
    # here from tensorflow_hub's own cache layout (sha1 of the handle), as after a download; nothing is fetched.
    import hashlib
    import shutil
    import subprocess
    import sys

    from conftest import SUBPROCESS_ENV

    check = "import importlib.util as u; from keras_transfer.hub import import_tensorflow_hub as i; "
    check += "print(u.find_spec('pkg_resources') is None, i().resolve.__name__)"
    out = subprocess.run([sys.executable, "-c", check], env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split()[-1] == "resolve", out.stderr[-2000:]
    url = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
    cache = tmp_path / "tfhub_modules"
    shutil.copytree(hub_dir, cache / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    model = kt.build_model(f"hub:{url}", 2, input_shape=32, weights=None)
    local = kt.build_model(f"hub:{hub_dir}", 2, input_shape=32, weights=None)
    local.get_layer("predictions").set_weights(model.get_layer("predictions").get_weights())
    x = rgb_images(2)
    np.testing.assert_allclose(model.predict(x, verbose=0), local.predict(x, verbose=0), atol=1e-6)
