"""keras_transfer: fine-tune pretrained image backbones (`keras.applications`, EfficientNet-Lite) into evaluated,
exported classifiers."""

import contextlib
import logging
import os
import sys


@contextlib.contextmanager
def native_logs_hidden():
    """Within it, whatever TensorFlow's C++ side (or anything else) writes to file descriptor 2 is discarded:
    start-up lines, grappler's "Starting new session", CUDA probes, none of which a user can act on. Python
    exceptions still raise. With KERAS_TRANSFER_VERBOSE=1 nothing is hidden."""
    if os.environ.get("KERAS_TRANSFER_VERBOSE") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 (some embedded interpreters): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _import_tensorflow_quietly():
    """Imports TensorFlow with its C++ start-up lines (absl's pre-init warning, oneDNN, CUDA probes) kept off the
    terminal: TF 2.21 prints them before `TF_CPP_MIN_LOG_LEVEL` applies, and a user can act on none of them.
    Errors still raise as usual. Set KERAS_TRANSFER_VERBOSE=1 to see them."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_logs_hidden():
        import tensorflow

        tensorflow.config.list_physical_devices()  # the CUDA probe ("failed call to cuInit") prints here


_import_tensorflow_quietly()

from keras_transfer.backbones import BACKBONES, list_backbones  # noqa: E402
from keras_transfer.data import load_dataset  # noqa: E402
from keras_transfer.distribute import get_strategy  # noqa: E402
from keras_transfer.evaluation import evaluate  # noqa: E402
from keras_transfer.export import export_saved_model  # noqa: E402
from keras_transfer.models import build_model, imagenet_classifier  # noqa: E402
from keras_transfer.policies import set_trainable  # noqa: E402
from keras_transfer.preprocessing import BackbonePreprocessing  # noqa: F401,E402  (registers the layer for loading)
from keras_transfer.pretraining import pretrain  # noqa: E402
from keras_transfer.retrieval import FeatureIndex  # noqa: E402
from keras_transfer.training import fine_tune  # noqa: E402
from keras_transfer.weights import decode_imagenet  # noqa: E402

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
