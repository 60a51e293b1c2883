"""What compile gets: class weights (balanced, per label), balanced accuracy, the imbalance warning, layer decay;
and test-time augmentation."""

import dataclasses
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import encode
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils.class_weight import compute_class_weight

import keras_transfer as kt
from keras_transfer.evaluation import _report
from keras_transfer.export import keras_predictor
from keras_transfer.models import model_view
from keras_transfer.objectives import PositiveWeightedCrossentropy, class_weights
from keras_transfer.policies import layer_decay_scales
from keras_transfer.training import TrainingOptions


def _imbalanced(rgb_images, counts=(9, 3)):
    y = np.concatenate([np.full(n, i) for i, n in enumerate(counts)])
    return rgb_images(len(y), 32), y


def test_balanced_class_weights_are_scikit_learns_and_the_loss_applies_them(rgb_images):
    x, y = _imbalanced(rgb_images)
    train, _, _, _ = kt.load_dataset((x, y), image_size=32, batch_size=len(y), validation_split=0, test_split=0.0)
    weights = class_weights(train, 2, "balanced")
    np.testing.assert_allclose(list(weights.values()), compute_class_weight("balanced", classes=np.array([0, 1]), y=y))
    for cache in (True, False):  # the cached frozen stage and plain fit weigh the same way
        keras.utils.set_random_seed(0)
        model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
        probs = model.predict(x, verbose=0)
        expected = np.mean([weights[c] for c in y] * -np.log(probs[np.arange(len(y)), y]))
        history = kt.fine_tune(
            model,
            train,
            head_epochs=1,
            fine_tune_epochs=0,
            class_weight="balanced",
            cache_features=cache,
            verbose=0,
            head_init=None,  # the head as built: the loss before the step is the one computed above
        )
        assert history.history["loss"][0] == pytest.approx(expected, rel=1e-4)  # one batch: the loss before the step


def test_class_weight_for_several_labels_weighs_each_labels_positives(rgb_images):
    y = np.array([[1, 0, 0]] * 2 + [[0, 1, 1]] * 6 + [[0, 0, 1]] * 4)
    train, _, _, info = kt.load_dataset(
        (rgb_images(12, 32), y), image_size=32, batch_size=12, validation_split=0, test_split=0.0
    )
    weights = class_weights(train, 3, "balanced", multi_label=True)
    assert weights == {0: 10 / 2, 1: 6 / 6, 2: 2 / 10}  # negatives / positives
    loss = PositiveWeightedCrossentropy([5.0, 1.0, 0.2])
    p = np.full((1, 3), 0.25, np.float32)
    expected = -np.mean([5.0 * np.log(0.25), np.log(0.75), np.log(0.75)])
    assert float(loss(np.array([[1.0, 0.0, 0.0]]), p)) == pytest.approx(expected, rel=1e-5)
    model = kt.build_model("small_cnn", 3, input_shape=32, weights=None, activation="sigmoid")
    history = kt.fine_tune(model, train, head_epochs=1, fine_tune_epochs=0, class_weight="balanced", verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "value, message",
    [("inverse", "class_weight must be None, 'balanced'"), ({0: -1.0}, "class_weight must be"), ({5: 2.0}, "ids")],
)
def test_bad_class_weights_are_refused_before_training(rgb_images, value, message):
    x, y = _imbalanced(rgb_images)
    train, _, _, _ = kt.load_dataset((x, y), image_size=32, batch_size=4, validation_split=0)
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
    with pytest.raises(ValueError, match=message):
        kt.fine_tune(model, train, head_epochs=1, fine_tune_epochs=0, class_weight=value, verbose=0)


def test_load_dataset_warns_about_imbalanced_training_classes(rgb_images, caplog):
    x, y = _imbalanced(rgb_images, counts=(30, 3))
    with caplog.at_level(logging.WARNING, logger="keras_transfer.data"):
        kt.load_dataset((x, y), image_size=32, validation_split=0, test_split=0.0)
    assert "'0' has 30 images, '1' 3 (10x). Consider fine_tune(..., class_weight='balanced')" in caplog.text


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 5 + [2] * 3)
    probs = rng.dirichlet(np.ones(4), len(labels))  # class 3 has no images here
    report = _report(probs, labels, ["a", "b", "c", "d"])
    assert report.balanced_accuracy == pytest.approx(balanced_accuracy_score(labels, probs.argmax(axis=1)))
    assert "balanced accuracy" in str(report).splitlines()[0]


def test_flip_tta_averages_each_image_with_its_mirror(rgb_images):
    x = rgb_images(6, 32)
    train, _, _, _ = kt.load_dataset((x, np.arange(6) % 2), image_size=32, batch_size=3, validation_split=0)
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
    report = kt.evaluate(model, train, tta="flip")
    probs = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    assert report.tta == "flip" and "test-time augmentation: flip" in str(report)
    assert report.accuracy == pytest.approx(np.mean(probs.argmax(axis=1) == np.arange(6) % 2))
    assert report.loss == pytest.approx(-np.mean(np.log(probs[np.arange(6), np.arange(6) % 2])), rel=1e-5)
    with pytest.raises(ValueError, match="tta must be one of None, flip"):
        kt.evaluate(model, train, tta="crops")
    image = x[0].astype(np.uint8).astype(np.float32)[None]
    mirrored = (model.predict(image, verbose=0) + model.predict(image[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(keras_predictor(model, tta="flip")([encode(x[0])]), mirrored, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_layer_decay_scales_each_stages_update_by_its_depth(rgb_images, optimizer):
    x, y = _imbalanced(rgb_images, counts=(4, 4))
    train, _, _, _ = kt.load_dataset((x, y), image_size=32, batch_size=8, validation_split=0)
    constant = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=1, decay_rate=1.0)  # no warmup
    deltas = {}
    for decay in (1.0, 0.5):
        keras.utils.set_random_seed(0)
        model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
        before = {w.path: np.array(w) for w in model.weights}
        stages = dict(head_epochs=0, fine_tune_epochs=1, unfreeze="all", fine_tune_learning_rate=constant)
        kt.fine_tune(model, train, optimizer=optimizer, layer_decay=decay, verbose=0, **stages)
        deltas[decay] = {w.path: np.array(w) - before[w.path] for w in model.trainable_weights}
    depth = {"block4": 1, "block3": 2, "block2": 3, "block1": 4}
    for path, delta in deltas[1.0].items():
        scale = 0.5 ** depth.get(path[:6], 0)  # the head (depth 0) at the full rate
        assert np.abs(delta).max() > 0, path
        # float32 weights: the deltas carry rounding of about 1e-7
        np.testing.assert_allclose(deltas[0.5][path], scale * delta, rtol=1e-3, atol=1e-6, err_msg=path)


def test_layer_decay_out_of_range_or_without_stages_is_refused():
    with pytest.raises(ValueError, match=r"layer_decay must be a number in \(0, 1\]"):
        TrainingOptions(layer_decay=1.5)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax", name="predictions")])
    with pytest.raises(ValueError, match="build it with keras_transfer.build_model"):
        rows = tf.data.Dataset.from_tensor_slices((np.zeros((2, 8), "float32"), np.array([0, 1]))).batch(2)
        kt.fine_tune(model, rows, head_epochs=0, fine_tune_epochs=1, layer_decay=0.7)
    plain = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
    view = dataclasses.replace(model_view(plain), spec=None, key=None)  # a backbone without a table row
    with pytest.raises(ValueError, match="layer_decay needs the backbone's stages"):
        layer_decay_scales(view, 0.7)
