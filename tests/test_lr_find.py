"""The learning-rate finder: its suggestions, the model left as it was, and `keras-transfer lr-find`."""

import os

import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.lr_find import find_learning_rate


def test_the_learning_rate_finder_suggests_a_rate_and_leaves_the_model_as_it_was(rgb_images, tmp_path):
    x, y = rgb_images(16, 32), np.arange(16) % 2
    train, _, _, _ = kt.load_dataset((x, y), image_size=32, batch_size=4, validation_split=0)
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None, dropout=0.2)
    kt.fine_tune(model, train, head_epochs=1, fine_tune_epochs=0, cache_features=False, verbose=0)  # compiled
    optimizer, state = model.optimizer, [np.array(v) for v in model.optimizer.variables]
    before = [np.array(v) for v in model.variables]
    trainable = [(layer.name, layer.trainable) for layer in model.get_layer("backbone").layers + model.layers]
    finding = find_learning_rate(
        model, train, unfreeze="stages:1", min_lr=1e-6, max_lr=10.0, steps=30, plot_path=tmp_path / "lr_find.png"
    )
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, model.variables))  # bit identical
    assert [(layer.name, layer.trainable) for layer in model.get_layer("backbone").layers + model.layers] == trainable
    assert model.optimizer is optimizer and all(
        np.array_equal(a, np.array(b)) for a, b in zip(state, optimizer.variables)
    )
    assert 1e-6 <= finding.suggestion <= 10.0 and 1e-6 <= finding.steepest <= 10.0
    assert len(finding.losses) == len(finding.learning_rates) <= 30
    assert finding.learning_rates == sorted(finding.learning_rates) and (tmp_path / "lr_find.png").stat().st_size
    with pytest.raises(ValueError, match="Need 0 < min_lr < max_lr"):
        find_learning_rate(model, train, min_lr=1.0, max_lr=0.1)


def test_the_valley_rule_picks_the_middle_of_the_longest_fall():
    from keras_transfer.lr_find import _steepest, _valley

    rates = list(np.logspace(-6, 0, 13))
    losses = [2.0, 2.0, 1.9, 1.7, 1.5, 1.0, 0.6, 0.5, 0.45, 0.5, 0.9, 2.0, 5.0]  # falls until index 8
    assert _valley(rates, losses) == rates[0 + 2 + 1]  # fastai: start 8 - 8, sections 8 / 3: int(2.67) + int(1.33)
    assert _steepest(rates, losses) == rates[5]


def test_keras_transfer_lr_find_prints_both_stages_suggestions(tmp_path, capsys, monkeypatch):
    from keras_transfer import cli

    monkeypatch.chdir(tmp_path)
    args = ["lr-find", "--data", "digits", "--backbone", "small_cnn", "--weights", "none", "--image-size", "32"]
    args += ["--unfreeze", "all", "--steps", "12", "--plot", str(tmp_path / "lr_find.png")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "--learning-rate " in out and "--fine-tune-learning-rate " in out and out.count("(valley)") == 2
    assert (tmp_path / "lr_find.png").stat().st_size > 0
    assert os.listdir(tmp_path) == ["lr_find.png"]  # no run folder: nothing is trained for keeps
