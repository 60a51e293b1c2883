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
_NO_TENSORFLOW = ("backbones", "terminal")  # modules that load without TensorFlow
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'keras_transfer' has no attribute {name!r}")
    if _PUBLIC[name] not in _NO_TENSORFLOW:
        importlib.import_module("keras_transfer.models")  # registers BackbonePreprocessing for keras.saving.load_model
    value = getattr(importlib.import_module(f"keras_transfer.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


logging.getLogger(__name__).addHandler(logging.NullHandler())
