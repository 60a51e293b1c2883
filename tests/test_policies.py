"""After real optimizer steps under each policy: frozen weights bit-identical, trainable ones moved,
BatchNormalization statistics unchanged unless asked (keras-team/keras#9214)."""

import keras
import numpy as np
import pytest
from conftest import SMALL_INPUT

import keras_transfer as kt


def _after(names, first):
    """Predicate: backbone layer i is trainable when it sits at or after the first layer named like `first`."""
    start = next(i for i, n in enumerate(names) if n.startswith(first))
    return lambda i, name: i >= start


# (backbone, policy, expected trainable backbone layers as a predicate over (index, name) in graph order)
CASES = [
    ("vgg16", "frozen", lambda names: lambda i, name: False),
    ("vgg16", "all", lambda names: lambda i, name: True),
    ("vgg16", "from:block5", lambda names: lambda i, name: name.startswith("block5")),  # seed 002
    ("vgg16", "top:3", lambda names: lambda i, name: i >= len(names) - 3),
    ("resnet50", "stages:1", lambda names: lambda i, name: name.startswith("conv5_")),
    ("resnet50", "from:conv4_block6", lambda names: _after(names, "conv4_block6")),
    ("resnet50", "top:12", lambda names: lambda i, name: i >= len(names) - 12),
    # The Keras guide's InceptionV3 recipe: train the top two inception blocks (everything after mixed8).
    ("inception_v3", "stages:2", lambda names: lambda i, name: i > names.index("mixed8")),
    ("inception_v3", "frozen", lambda names: lambda i, name: False),
]


def _snapshot(layer):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in layer.weights]


def _train_one_step(model, size):
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
    model.fit(x, np.array([0, 1]), batch_size=2, epochs=1, verbose=0)


@pytest.mark.parametrize("name,policy,expected", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_policy_freezes_exactly_what_it_says(name, policy, expected):
    size = SMALL_INPUT[name]
    model = kt.build_model(name, 2, input_shape=size, weights=None, dense_units=(4,))
    summary = kt.set_trainable(model, policy)
    backbone = model.get_layer("backbone")
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    is_trainable = expected([layer.name for layer in layers])
    before = {layer.name: _snapshot(layer) for layer in layers + model.layers}

    _train_one_step(model, size)

    moved_layers = 0
    for i, layer in enumerate(layers):
        if not layer.weights:
            continue
        changed = [not np.array_equal(b, a) for b, a in zip(before[layer.name], _snapshot(layer))]
        if isinstance(layer, keras.layers.BatchNormalization) or not is_trainable(i, layer.name):
            assert not any(changed), f"{layer.name} is frozen under {policy!r} but changed"
        else:
            assert any(changed), f"{layer.name} is trainable under {policy!r} but did not move"
            moved_layers += 1
    for layer in model.layers:
        if layer.weights and layer is not backbone:
            assert not np.array_equal(before[layer.name][0], _snapshot(layer)[0]), (
                f"head layer {layer.name} did not move"
            )
    assert summary.trainable_layers == moved_layers
    assert summary.trainable_params == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert f"policy {policy!r}: {moved_layers} of" in str(summary)


def test_train_batchnorm_lets_statistics_move_inside_the_trainable_part():
    model = kt.build_model("resnet50", 2, input_shape=32, weights=None)
    summary = kt.set_trainable(model, "stages:1", train_batchnorm=True)
    backbone = model.get_layer("backbone")
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before = {layer.name: _snapshot(layer) for layer in bns}
    _train_one_step(model, 32)
    for layer in bns:
        moved = not np.array_equal(before[layer.name][2], _snapshot(layer)[2])  # moving_mean
        assert moved == layer.name.startswith("conv5_"), layer.name
    assert summary.frozen_batchnorm == sum(1 for layer in bns if not layer.name.startswith("conv5_"))


def test_head_always_trains_and_summary_reads_well():
    model = kt.build_model("vgg16", 3, input_shape=32, weights=None, dense_units=(8,))
    summary = kt.set_trainable(model, "frozen")
    assert all(layer.trainable for layer in model.layers if layer.name.startswith(("head_", "predictions")))
    assert summary.trainable_layers == 0 and summary.first_trainable is None
    assert summary.trainable_params == (512 * 8 + 8) + (8 * 3 + 3)
    text = str(kt.set_trainable(model, "from:block5"))
    assert text.startswith("policy 'from:block5': 3 of 13 backbone layers with weights trainable from 'block5_conv1'")


@pytest.mark.parametrize(
    "policy,message",
    [
        ("freeze", r"Unknown policy 'freeze'\. Expected one of: frozen, all, top:N, from:NAME, stages:K"),
        ("top:x", r"Unknown policy 'top:x'"),
        ("from:", r"Unknown policy 'from:'"),
        ("from:block9", r"No backbone layer name starts with 'block9'\. Stage prefixes of 'vgg16': block1_, .*block5_"),
        (
            "stages:0",
            r"'vgg16' has 5 stages \(block1_, .*, block5_\); K must be in 1\.\.5\. Received: policy='stages:0'",
        ),
        ("stages:6", r"'vgg16' has 5 stages \(block1_, .*\); K must be in 1\.\.5"),
    ],
)
def test_bad_policies_are_clear_errors(policy, message):
    model = kt.build_model("vgg16", 2, input_shape=32, weights=None)
    with pytest.raises(ValueError, match=message):
        kt.set_trainable(model, policy)


def test_models_not_built_here_are_refused_clearly():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(ValueError, match=r"Model 'plain' has no layer named 'backbone'"):
        kt.set_trainable(plain, "all")
