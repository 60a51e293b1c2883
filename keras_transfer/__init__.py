"""keras_transfer: fine-tune pretrained image backbones (`keras.applications`, EfficientNet-Lite) into evaluated,
exported classifiers."""

import logging

from keras_transfer.backbones import BACKBONES, list_backbones
from keras_transfer.data import load_dataset
from keras_transfer.distribute import get_strategy
from keras_transfer.evaluation import evaluate
from keras_transfer.export import export_saved_model
from keras_transfer.models import build_model, imagenet_classifier
from keras_transfer.policies import set_trainable
from keras_transfer.preprocessing import BackbonePreprocessing  # noqa: F401  (registers the layer for loading)
from keras_transfer.pretraining import pretrain
from keras_transfer.retrieval import FeatureIndex
from keras_transfer.training import fine_tune
from keras_transfer.weights import decode_imagenet

__version__ = "0.1.0"
__all__ = [
    "BACKBONES",
    "FeatureIndex",
    "build_model",
    "decode_imagenet",
    "evaluate",
    "export_saved_model",
    "fine_tune",
    "get_strategy",
    "imagenet_classifier",
    "list_backbones",
    "load_dataset",
    "pretrain",
    "set_trainable",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
