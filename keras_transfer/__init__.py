"""keras_transfer: fine-tune pretrained image backbones (`keras.applications`, EfficientNet-Lite) into evaluated,
exported classifiers.

Importing the package loads nothing heavy and changes nothing in the process: each public name loads its module
(and TensorFlow) when first used, so `keras-transfer --help` answers at once. Using any name also registers the
package's Keras layers, which `keras.saving.load_model` needs for a model built here.
"""

import importlib
import logging

from keras_transfer.version import __version__  # noqa: F401  (keras_transfer.__version__)

_PUBLIC = {  # name -> the module that defines it
    "BACKBONES": "backbones",
    "FeatureIndex": "retrieval",
    "build_model": "models",
    "decode_imagenet": "weights",
    "evaluate": "evaluation",
    "export_saved_model": "export",
    "fine_tune": "training",
    "get_strategy": "distribute",
    "imagenet_classifier": "models",
    "list_backbones": "backbones",
    "load_dataset": "data",
    "pretrain": "pretraining",
    "quiet_tensorflow": "terminal",
    "set_trainable": "policies",
}
# the modules and packages reachable as `kt.<name>` after `import keras_transfer as kt`
MODULES = (
    "architectures",
    "backbones",
    "callbacks",
    "cli",
    "compat",
    "config",
    "data",
    "distribute",
    "evaluation",
    "export",
    "files",
    "heads",
    "hub",
    "images",
    "label_issues",
    "lr_find",
    "memory",
    "models",
    "objectives",
    "policies",
    "preprocessing",
    "presets",
    "pretraining",
    "rank",
    "recipe",
    "report",
    "retrieval",
    "runs",
    "semi_supervised",
    "terminal",
    "training",
    "version",
    "weights",
)
_NO_TENSORFLOW = ("backbones", "cli", "config", "terminal", "version")  # modules that load without TensorFlow
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC and name not in MODULES:
        raise AttributeError(f"module 'keras_transfer' has no attribute {name!r}")
    module = _PUBLIC.get(name, name)
    if module not in _NO_TENSORFLOW:
        importlib.import_module("keras_transfer.models")  # registers BackbonePreprocessing for keras.saving.load_model
    value = importlib.import_module(f"keras_transfer.{module}")
    value = getattr(value, name) if name in _PUBLIC else value
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


logging.getLogger(__name__).addHandler(logging.NullHandler())
