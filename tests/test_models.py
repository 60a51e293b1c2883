import keras
import numpy as np
import pytest
from conftest import SMALL_INPUT

import keras_transfer as kt


@pytest.mark.parametrize("head", ["avg", "max", "flatten"])
@pytest.mark.parametrize("name", sorted(SMALL_INPUT))
def test_builds_with_each_head_and_predicts_class_probabilities(name, head, rgb_images):
    size = SMALL_INPUT[name]
    model = kt.build_model(name, 4, input_shape=(size, size), weights=None, pooling=head, dense_units=(8,), dropout=0.2)
    names = [layer.name for layer in model.layers]
    assert names == [
        "images",
        "preprocessing",
        "backbone",
        "head_pool",
        "head_dropout_0",
        "head_dense_0",
        "head_dropout_1",
        "predictions",
    ]
    assert model.name == name
    # Raw images of another size are resized inside the model.
    probs = model.predict(rgb_images(2, size + 7), verbose=0)
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_default_input_size_comes_from_the_table():
    model = kt.build_model("vgg16", 2, weights=None)
    assert model.get_layer("preprocessing").size == (224, 224)
    assert model.get_layer("backbone").input_shape == (None, 224, 224, 3)


def test_binary_and_multilabel_outputs(rgb_images):
    binary = kt.build_model("vgg16", 1, input_shape=32, weights=None)
    assert binary.get_layer("predictions").get_config()["activation"] == "sigmoid"
    multi = kt.build_model("vgg16", 3, input_shape=32, weights=None, activation="sigmoid")
    probs = multi.predict(rgb_images(2), verbose=0)
    assert probs.shape == (2, 3) and np.all((probs > 0) & (probs < 1))
    assert not np.allclose(probs.sum(axis=1), 1.0)


def test_any_size_backbone_without_resizing(rgb_images):
    model = kt.build_model("resnet50", 2, input_shape=(None, None), weights=None)
    assert model.get_layer("preprocessing").size is None
    assert model.predict(rgb_images(2, 40), verbose=0).shape == (2, 2)


def test_output_stays_float32_under_mixed_precision(rgb_images):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = kt.build_model("vgg16", 3, input_shape=32, weights=None, dense_units=(8,))
    assert model.get_layer("head_dense_0").compute_dtype == "bfloat16"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.predict(rgb_images(2), verbose=0).dtype == np.float32


def _pooled_reference(constructor, module, size, x, weights_path):
    """The plain keras.applications recipe: backbone + GAP on preprocess_input(x)."""
    ref = constructor(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    ref.load_weights(weights_path)
    return ref.predict(module.preprocess_input(x.copy()), verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,constructor,module",
    [
        ("resnet50", keras.applications.ResNet50, keras.applications.resnet),
        ("inception_v3", keras.applications.InceptionV3, keras.applications.inception_v3),
    ],
)
def test_backbone_weights_file_gives_the_same_features_as_keras_applications(
    name, constructor, module, tmp_path, rgb_images
):
    size = SMALL_INPUT[name]
    source = constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    path = str(tmp_path / f"{name}.weights.h5")
    source.save_weights(path)
    x = rgb_images(2, size)

    model = kt.build_model(name, 3, input_shape=size, weights=path)
    features = keras.Model(model.input, model.get_layer("head_pool").output).predict(x, verbose=0)
    np.testing.assert_allclose(features, _pooled_reference(constructor, module, size, x, path), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_saved_full_model_is_a_pretrained_start(suffix, tmp_path, rgb_images):
    """Seed 001: train a model, save it, then build a new task's model on its backbone."""
    pretrained = kt.build_model("mobilenet_v2", 5, input_shape=32, weights=None)
    path = str(tmp_path / f"pretrained_model{suffix}")
    pretrained.save(path)

    model = kt.build_model("mobilenet_v2", 2, input_shape=32, weights=path)
    for got, want in zip(model.get_layer("backbone").weights, pretrained.get_layer("backbone").weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))
    assert model.output_shape == (None, 2)


def test_keras_file_round_trip_in_safe_mode(tmp_path, rgb_images):
    model = kt.build_model("vgg16", 3, input_shape=32, weights=None, dense_units=(4,))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = rgb_images(2, 45)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(backbone="resnet5"), r"Unknown backbone 'resnet5'\. Expected one of: .*resnet50"),
        (dict(pooling="gap"), r"Unknown pooling 'gap'\. Expected one of: avg, max, flatten"),
        (dict(activation="relu"), r"Unknown activation 'relu'\. Expected one of: softmax, sigmoid"),
        (dict(num_classes=0), r"num_classes must be an integer >= 1\. Received: num_classes=0"),
        (dict(num_classes=-3), r"num_classes must be an integer >= 1\. Received: num_classes=-3"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)\. Received: dropout=1\.0"),
        (dict(dense_units=(0,)), r"dense_units must be positive integers\. Received: dense_units=\(0,\)"),
        (dict(input_shape=(16, 16)), r"'vgg16' needs inputs of at least 32x32 pixels .*input_shape=\(16, 16\)"),
        (dict(backbone="inception_v3", input_shape=64), r"'inception_v3' needs inputs of at least 75x75"),
        (dict(input_shape=(32, 32, 1)), r"images are RGB\. Received: input_shape=\(32, 32, 1\)"),
        (dict(input_shape=(None, None), pooling="flatten"), r"pooling='flatten' needs a fixed input size"),
        (dict(weights="/nonexistent/w.weights.h5"), r"Weights file '/nonexistent/w.weights.h5' does not exist"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    args = dict(backbone="vgg16", num_classes=3, input_shape=32, weights=None) | kwargs
    with pytest.raises(ValueError, match=message):
        kt.build_model(args.pop("backbone"), args.pop("num_classes"), **args)


def test_weights_file_for_another_architecture_is_a_clear_error(tmp_path):
    path = str(tmp_path / "vgg16.weights.h5")
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    with pytest.raises(ValueError, match=r"does not fit backbone 'resnet50'"):
        kt.build_model("resnet50", 2, input_shape=32, weights=path)
    keras_path = str(tmp_path / "vgg.keras")
    kt.build_model("vgg16", 2, input_shape=32, weights=None).save(keras_path)
    with pytest.raises(ValueError, match=r"does not fit backbone 'vgg19': it has 26 weight tensors, .* needs 32"):
        kt.build_model("vgg19", 2, input_shape=32, weights=keras_path)
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"Unsupported weights file .*weights\.npz"):
        kt.build_model("vgg16", 2, input_shape=32, weights=str(other))


def test_imagenet_download_failure_names_backbone_and_offline_alternatives(monkeypatch):
    from keras.src.utils import file_utils

    def offline(fname, origin=None, **kwargs):
        # What Keras raises without a network (keras/src/utils/file_utils.py).
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(
        OSError,
        match=r"ImageNet weights for backbone 'vgg16'.*URL fetch failure on https://.*"
        r"weights=None.*local backbone weights file.*~/\.keras/models/",
    ):
        kt.build_model("vgg16", 2, input_shape=32)


def test_a_failure_that_is_not_a_download_is_not_reported_as_one(monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("a bug in the constructor")

    monkeypatch.setattr(keras.applications, "VGG16", broken)
    with pytest.raises(RuntimeError, match="a bug in the constructor"):
        kt.build_model("vgg16", 2, input_shape=32)


def test_the_model_carries_its_backbone_through_renaming_and_saving(tmp_path, rgb_images):
    from keras_transfer import models

    model = kt.build_model("resnet18", 3, input_shape=32, weights=None)
    model.name = "my_classifier"
    assert models.backbone_key(model) == "resnet18" and models.input_size(model) == (32, 32)
    summary = kt.set_trainable(model, "stages:1")  # the default unfreeze of fine_tune
    assert summary.first_trainable.startswith("conv5_")
    model.save(tmp_path / "renamed.keras")
    loaded = keras.saving.load_model(tmp_path / "renamed.keras")
    loaded.name = "another_name"
    assert models.backbone_key(loaded) == "resnet18"
    assert kt.set_trainable(loaded, "stages:1").first_trainable == summary.first_trainable
    x = rgb_images(2, 32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_policies_that_cannot_apply_say_which_can():
    image = keras.Input((32, 32, 3), name="images")
    backbone = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3)], name="backbone")
    pooled = keras.layers.GlobalAveragePooling2D(name="head_pool")(backbone(image))
    model = keras.Model(image, keras.layers.Dense(2, name="predictions")(pooled), name="handmade")
    with pytest.raises(
        ValueError,
        match=r"'stages:K' needs to know the model's backbone.*policies that apply: "
        r"'frozen', 'all', 'top:N', 'from:NAME'",
    ):
        kt.set_trainable(model, "stages:1")
    assert kt.set_trainable(model, "all").trainable_layers == 1


def test_old_names_are_errors():
    with pytest.raises(TypeError, match="unexpected keyword argument 'head'"):
        kt.build_model("small_cnn", 2, input_shape=32, weights=None, head="max")
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None, pooling="max")
    assert isinstance(model.get_layer("head_pool"), keras.layers.GlobalMaxPooling2D)
    with pytest.raises(ValueError, match=r"Unknown policy 'none'"):
        kt.set_trainable(model, "none")


def test_augmentation_inside_the_model_acts_in_training_only(rgb_images):
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None, augment=True)
    plain = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
    plain.set_weights(model.get_weights())
    x = rgb_images(4, 32)
    np.testing.assert_allclose(model.predict(x, verbose=0), plain.predict(x, verbose=0), atol=1e-6)
    augmented = np.asarray(model.get_layer("augmentation")(x, training=True))
    assert not np.allclose(augmented, x) and augmented.min() >= 0.0 and augmented.max() <= 255.0
    with pytest.raises(ValueError, match=r"augment must be False, True or a Keras layer\. Received: augment='yes'"):
        kt.build_model("small_cnn", 2, input_shape=32, weights=None, augment="yes")
