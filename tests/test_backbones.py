import keras
import pytest

import keras_transfer as kt
from keras_transfer import architectures
from keras_transfer.backbones import BACKBONES, PREPROCESSING_MODES, get_spec
from keras_transfer.models import backbone_constructor

REQUIRED = [
    "vgg16",
    "vgg19",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet50v2",
    "inception_v3",
    "inception_resnet_v2",
    "xception",
    "mobilenet",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnetv2_b0",
    "efficientnetv2_b1",
    "efficientnetv2_b2",
    "efficientnetv2_b3",
    "convnext_tiny",
]


def test_table_has_every_required_backbone():
    assert set(REQUIRED) <= set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_row_is_consistent(name):
    spec = BACKBONES[name]
    if spec.module is None:  # our own architecture
        assert backbone_constructor(name) is getattr(architectures, spec.constructor)
    else:
        assert backbone_constructor(name) is getattr(keras.applications, spec.constructor)
        assert hasattr(getattr(keras.applications, spec.module), "preprocess_input")
    assert spec.preprocessing in PREPROCESSING_MODES
    assert 16 <= spec.min_size <= spec.default_size
    assert spec.stage_marks in ("start", "end")
    assert len(spec.stages) >= 2 and len(set(spec.stages)) == len(spec.stages)


def test_list_backbones_shows_every_row():
    text = kt.list_backbones()
    table, others = text.split("\n\n")
    lines = table.splitlines()
    assert lines[0].split()[0] == "backbone"
    assert [line.split()[0] for line in lines[1:]] == list(BACKBONES)
    assert [line.split()[0] for line in others.splitlines()] == ["hub:URL_OR_FOLDER", "keras_hub:PRESET_OR_FOLDER"]
    assert "ResNet50  " in text and "caffe" in text


def test_unknown_backbone_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5'\. Expected one of: .*resnet50"):
        get_spec("resnet5")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_row_builds_at_min_size_and_its_stages_exist_in_order(name):
    spec = BACKBONES[name]
    model = kt.build_model(name, 3, input_shape=spec.min_size, weights=None)
    assert model.output_shape == (None, 3)
    layers = [layer for layer in model.get_layer("backbone").layers if not isinstance(layer, keras.layers.InputLayer)]
    names = [layer.name for layer in layers]
    if spec.stage_marks == "end":
        positions = [names.index(stage) for stage in spec.stages]
    else:
        positions = [next(i for i, n in enumerate(names) if n.startswith(stage)) for stage in spec.stages]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)

    # stages:K trains strictly more layers as K grows, and stages:<all> trains every layer with weights.
    counts = [kt.set_trainable(model, f"stages:{k}").trainable_layers for k in range(1, len(spec.stages) + 1)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    everything = kt.set_trainable(model, "all", train_batchnorm=True)
    assert everything.frozen_layers == 0


@pytest.mark.parametrize("name", ["resnet18", "small_cnn"])
def test_own_architectures_refuse_imagenet_weights_with_the_way_out(name):
    with pytest.raises(ValueError, match=rf"Backbone '{name}' has no ImageNet weights.*pretrain"):
        kt.build_model(name, 2, input_shape=32, weights="imagenet")


def test_resnet18_has_the_published_size():
    # He et al. 2016: ResNet-18 has 11.7M parameters with its 1000-class top (512 * 1000 + 1000 of them).
    base = backbone_constructor("resnet18")(input_shape=(224, 224, 3))
    assert base.output_shape == (None, 7, 7, 512)
    assert base.count_params() - sum(  # BatchNorm moving statistics are not parameters in the paper's count
        int(w.shape[0]) * 2 for w in base.weights if "moving_mean" in w.path
    ) + 513_000 == pytest.approx(11_689_512, abs=1)
