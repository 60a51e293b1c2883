import json

import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer import pretraining
from keras_transfer.pretraining import nt_xent, pretrain


def _digits_pretrain(tmp_path):
    return pretrain(
        "mobilenet_v3_small",
        "digits",
        image_size=32,
        epochs=3,
        batch_size=32,
        classes=range(5),
        output_dir=str(tmp_path),
    )


@pytest.mark.slow
def test_supervised_pretraining_is_not_at_chance_in_inference_mode_and_loads(tmp_path):
    path = _digits_pretrain(tmp_path)
    metadata = json.loads((tmp_path / "mobilenet_v3_small_supervised.json").read_text())
    assert metadata["backbone"] == "mobilenet_v3_small" and metadata["image_size"] == [32, 32]
    assert metadata["classes"] == ["0", "1", "2", "3", "4"] and metadata["method"] == "supervised"
    assert metadata["metrics"]["val_accuracy"] > 0.8  # five classes: chance is 0.2

    model = kt.build_model("mobilenet_v3_small", 5, weights=path)  # input size taken from the metadata
    assert model.get_layer("preprocessing").size == (32, 32)
    reference = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    reference.load_weights(path)
    for got, want in zip(model.get_layer("backbone").weights, reference.weights):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow
def test_without_recomputed_batchnorm_statistics_accuracy_is_at_chance(tmp_path, monkeypatch):
    """The trap the recomputation avoids: MobileNetV3's BN momentum 0.999 barely moves in ~90 steps."""
    monkeypatch.setattr(pretraining, "recompute_batchnorm", lambda model, dataset: 0)
    _digits_pretrain(tmp_path)
    metadata = json.loads((tmp_path / "mobilenet_v3_small_supervised.json").read_text())
    assert metadata["metrics"]["val_accuracy"] < 0.4


@pytest.mark.slow
def test_simclr_never_reads_labels(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    y = np.arange(32) % 3
    losses = []
    for labels in (y, np.random.default_rng(1).permutation(y)):
        path = pretrain(
            "small_cnn",  # a few seconds a run (MobileNetV3Small: 45 s, mostly tracing)
            (x, labels),
            method="simclr",
            image_size=32,
            epochs=1,
            batch_size=16,
            output_dir=str(tmp_path),
        )
        losses.append(json.loads((tmp_path / "small_cnn_simclr.json").read_text())["metrics"]["loss_per_epoch"])
    assert losses[0] == losses[1] and len(losses[0]) == 1
    assert kt.build_model("small_cnn", 2, weights=path).output_shape == (None, 2)


def test_nt_xent_prefers_matching_views():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, 16)).astype("float32")
    matched = float(nt_xent(z, z + 0.01 * rng.normal(size=z.shape).astype("float32")))
    shuffled = float(nt_xent(z, z[::-1].copy()))
    assert matched < shuffled
    # With identical views the loss is the cross-entropy of picking the one perfect match among 2N - 1.
    assert float(nt_xent(z, z)) < np.log(15)


def test_metadata_mismatch_is_a_clear_error(tmp_path):
    base = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mine.weights.h5"
    base.save_weights(str(path))
    (tmp_path / "mine.json").write_text(json.dumps({"backbone": "mobilenet_v3_small", "image_size": [32, 32]}))
    with pytest.raises(ValueError, match=r"was pretrained for backbone 'mobilenet_v3_small', not 'vgg16'"):
        kt.build_model("vgg16", 2, weights=str(path))
    with pytest.raises(ValueError, match=r"was pretrained at 32x32 pixels; build with input_shape=\(32, 32\) or None"):
        kt.build_model("mobilenet_v3_small", 2, input_shape=64, weights=str(path))
    with pytest.raises(ValueError, match=r"Unknown method 'byol'\. Expected one of: supervised, simclr"):
        pretrain("mobilenet_v3_small", "digits", method="byol")
