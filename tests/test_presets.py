"""keras-hub presets as backbones, with tiny presets of three families made here with random weights (no network)."""

import json

import keras
import keras_hub  # in [dev]: a declared dependency must import, not skip
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import presets
from keras_transfer.export.tflite import export_tflite, tflite_predictor
from keras_transfer.models import model_view
from keras_transfer.policies import layer_decay_scales

IMAGENET = {
    "scale": [1 / (255 * s) for s in (0.229, 0.224, 0.225)],
    "offset": [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
}


def _vit():
    return keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    ), {"image_size": (32, 32), "scale": 1 / 127.5, "offset": -1.0}


def _dinov2():
    network = keras_hub.models.DINOV2Backbone(
        patch_size=14,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(28, 28, 3),
        position_embedding_shape=(28, 28),
    )
    return network, {"image_size": (28, 28), **IMAGENET}


def _resnet():
    network = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(None, None, 3),
    )
    return network, {"image_size": (32, 32), **IMAGENET}


FAMILIES = {"vit": _vit, "dinov2": _dinov2, "resnet": _resnet}


@pytest.fixture(scope="module")
def preset_dirs(tmp_path_factory):
    """A local preset folder per family, as `save_to_preset` writes them: the offline path users take."""
    root = tmp_path_factory.mktemp("presets")
    dirs = {}
    for name, make in FAMILIES.items():
        keras.utils.set_random_seed(1)
        network, converter = make()
        network.save_to_preset(str(root / name))
        keras_hub.layers.ImageConverter(**converter).save_to_preset(str(root / name))
        dirs[name] = str(root / name)
    return dirs


@pytest.mark.parametrize("family", FAMILIES)
def test_builds_with_the_converter_as_preprocessing(family, preset_dirs, rgb_images):
    key = f"keras_hub:{preset_dirs[family]}"
    model = kt.build_model(key, 3)
    size = 28 if family == "dinov2" else 32
    assert model.name == f"keras_hub_{family}" and kt.models.input_size(model) == (size, size)
    assert kt.models.backbone_key(model) == key
    layer = model.get_layer("preprocessing")
    with open(f"{preset_dirs[family]}/image_converter.json") as f:
        converter = json.load(f)["config"]
    x = rgb_images(2, size)
    expected = x * np.array(converter["scale"], "float32") + np.array(converter["offset"], "float32")
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    # The preset's own weights arrive: the backbone gives the preset's features at the preset's size.
    network = keras_hub.models.Backbone.from_preset(preset_dirs[family])
    features = kt.models.feature_model(model)(x)
    direct = network({"images": expected} if isinstance(network.input, dict) else expected)
    pooled = direct[:, 0] if family != "resnet" else tf.reduce_mean(direct, axis=[1, 2])
    np.testing.assert_allclose(features, pooled, rtol=1e-4, atol=1e-5)
    probs = model.predict(rgb_images(2, 50), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_policies_count_blocks_and_stages(preset_dirs):
    vit = kt.build_model(f"keras_hub:{preset_dirs['vit']}", 2)
    view = model_view(vit)
    assert view.spec.stages == ("vit_patching_and_embedding", "transformer_block_1", "transformer_block_2")
    assert kt.set_trainable(vit, "stages:1").first_trainable == "transformer_block_2"
    assert kt.set_trainable(vit, "top:4").first_trainable == "transformer_block_2"  # + dropout, ln, pooling
    summary = kt.set_trainable(vit, "frozen")
    assert summary.trainable_layers == 0 and summary.trainable_params == 2 * 16 + 2
    kt.set_trainable(vit, "stages:1")
    block1 = vit.get_layer("backbone").layers[1].get_layer("vit_encoder").encoder_layers[0]
    assert not block1.trainable and not {w.path for w in block1.weights} & {w.path for w in vit.trainable_weights}
    scales = layer_decay_scales(model_view(vit), 0.5)
    assert sorted(set(scales.values())) == [0.5]  # only the top block trains: depth 1
    kt.set_trainable(vit, "all")
    assert sorted(set(layer_decay_scales(model_view(vit), 0.5).values())) == [0.125, 0.25, 0.5]
    with pytest.raises(ValueError, match=r"has 3 stages .*K must be in 1\.\.3"):
        kt.set_trainable(vit, "stages:4")
    resnet = kt.build_model(f"keras_hub:{preset_dirs['resnet']}", 2)
    assert model_view(resnet).spec.stages == ("conv1_pad", "stack0", "stack1")
    summary = kt.set_trainable(resnet, "stages:1")
    assert summary.first_trainable == "stack1_block0_1_pad" and summary.frozen_batchnorm == 6


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tunes_evaluates_exports_and_reloads(family, preset_dirs, tmp_path, rgb_images):
    key = f"keras_hub:{preset_dirs[family]}"
    model = kt.build_model(key, 2)
    x, y = rgb_images(8, 40), np.array([0, 1] * 4)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    top = {"vit": "transformer_block_2", "dinov2": "layers_1", "resnet": "stack1_block0_2_conv"}[family]
    block = next(layer for layer in model_view(model).layers if layer.name == top)
    before = [np.array(w) for w in block.weights]
    history = kt.fine_tune(
        model, train, head_epochs=1, fine_tune_epochs=1, unfreeze="all", head_init="probe", layer_decay=0.7, verbose=0
    )
    assert len(history.history["loss"]) == 2
    assert any(not np.allclose(b, np.array(w)) for b, w in zip(before, block.weights))  # the backbone trained
    report = kt.evaluate(model, train)
    assert report.num_examples == 8 and 0 <= report.accuracy <= 1
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")  # keras_hub imported: its layers are registered
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    path = kt.export_saved_model(reloaded, tmp_path / "export")
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(rgb_images(3, 45)))
    np.testing.assert_allclose(served["probabilities"], model.predict(rgb_images(3, 45), verbose=0), atol=1e-5)
    export_tflite(reloaded, tmp_path / "model.tflite")
    size = kt.models.input_size(model)
    on_device = tflite_predictor(tmp_path / "model.tflite")(rgb_images(3, size[0]))
    np.testing.assert_allclose(on_device, model.predict(rgb_images(3, size[0]), verbose=0), atol=1e-4)


def test_reloads_and_trains_when_the_preset_folder_is_gone(preset_dirs, tmp_path, rgb_images):
    import shutil

    folder = shutil.copytree(preset_dirs["vit"], tmp_path / "gone")
    model = kt.build_model(f"keras_hub:{folder}", 2)
    model.save(tmp_path / "model.keras")
    shutil.rmtree(folder)
    reloaded = kt.models.load_model(tmp_path / "model.keras")
    assert kt.set_trainable(reloaded, "stages:2").first_trainable == "transformer_block_1"
    np.testing.assert_allclose(reloaded.predict(rgb_images(2), verbose=0), model.predict(rgb_images(2), verbose=0))


def test_other_sizes_build_or_say_why(preset_dirs):
    resnet = kt.build_model(f"keras_hub:{preset_dirs['resnet']}", 2, input_shape=48)  # a CNN runs at any size
    assert kt.models.input_size(resnet) == (48, 48)
    dinov2 = kt.build_model(f"keras_hub:{preset_dirs['dinov2']}", 2, input_shape=42)  # DINOv2 interpolates
    assert dinov2.predict(np.zeros((1, 42, 42, 3)), verbose=0).shape == (1, 2)
    with pytest.raises(ValueError, match=r"needs inputs of at least 8x8 pixels"):
        kt.build_model(f"keras_hub:{preset_dirs['vit']}", 2, input_shape=4)


def test_bad_presets_and_failed_downloads_say_what_to_do(tmp_path, monkeypatch, preset_dirs):
    with pytest.raises(ValueError, match=r"Unknown keras-hub preset 'no_such_preset_xyz'.*keras_hub.models.Backbone"):
        kt.build_model("keras_hub:no_such_preset_xyz", 2)
    with pytest.raises(ValueError, match=r"No keras-hub preset folder at '/no/such/folder'"):
        kt.build_model("keras_hub:/no/such/folder", 2)
    with pytest.raises(ValueError, match=r"brings its own weights"):
        kt.build_model(f"keras_hub:{preset_dirs['vit']}", 2, weights="x.weights.h5")

    def offline(*args, **kwargs):  # what keras-hub raises without internet (requests' ConnectionError)
        raise ConnectionError("HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(OSError, match=r"Could not download the keras-hub preset 'dinov2_small'.*keras_hub:DIR"):
        kt.build_model("keras_hub:dinov2_small", 2)


def test_without_keras_hub_the_error_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "keras_hub", None)
    presets.preset_spec.cache_clear()
    with pytest.raises(ImportError, match=r'pip install "keras_transfer\[keras-hub\]"'):
        kt.build_model("keras_hub:dinov2_small", 2)


def test_token_pooling_takes_the_class_token_or_the_mean():
    tokens = np.arange(2 * 3 * 4, dtype="float32").reshape(2, 3, 4)
    np.testing.assert_array_equal(presets.TokenPooling("class")(tokens)[:, 0, 0], tokens[:, 0])
    np.testing.assert_allclose(presets.TokenPooling("mean")(tokens)[:, 0, 0], tokens.mean(axis=1))
    with pytest.raises(ValueError, match=r"'class' or 'mean'"):
        presets.TokenPooling("max")


@pytest.mark.slow
def test_the_command_runs_a_preset_end_to_end(preset_dirs, colour_folder, tmp_path, capsys):
    from keras_transfer.cli import main

    run, export = tmp_path / "run", tmp_path / "export"
    argv = ["--data", str(colour_folder), "--backbone", f"keras_hub:{preset_dirs['vit']}", "--head-epochs", "1"]
    argv += ["--fine-tune-epochs", "1", "--batch-size", "4", "--output", str(run), "--export", str(export)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Stage 2: policy" in out and "test:" in out
    served = tf.saved_model.load(str(export / "1")).signatures["serving_default"]
    probs = served(images=tf.constant(np.zeros((1, 40, 40, 3), np.float32)))["probabilities"]
    assert probs.shape == (1, 3)
    assert main(["predict", str(run), *[str(p) for p in sorted(colour_folder.glob("red/*"))[:1]]]) == 0
    assert capsys.readouterr().out.split()[1] in ("red", "green", "blue")  # a class name, not an id


def test_rank_takes_presets_as_candidates(preset_dirs, colour_folder):
    from keras_transfer.rank import rank_backbones

    rows = rank_backbones(colour_folder, [f"keras_hub:{preset_dirs['vit']}", "small_cnn@32"], batch_size=4)
    assert {row["weights"] for row in rows} == {"imagenet", "none"}  # the preset's own weights; random for small_cnn
    assert all(0 <= row["probe"] <= 1 and row["image_size"] == 32 for row in rows)
