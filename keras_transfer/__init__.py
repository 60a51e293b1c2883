"""keras_transfer: fine-tune pretrained `keras.applications` backbones into exported classifiers."""

import logging

from keras_transfer.backbones import BACKBONES, list_backbones
from keras_transfer.models import build_model
from keras_transfer.policies import set_trainable
from keras_transfer.preprocessing import BackbonePreprocessing

__version__ = "0.1.0"
__all__ = ["BACKBONES", "BackbonePreprocessing", "build_model", "list_backbones", "set_trainable"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
