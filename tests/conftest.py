import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The EfficientNet-Lite conversions land in a cache of the suite's own, not in the user's ~/.keras.
os.environ["KERAS_HOME"] = os.path.join(tempfile.gettempdir(), "keras_transfer_tests_keras_home")

import keras
import numpy as np
import pytest

# The small sizes the suite builds each backbone at: its minimum (75 px for InceptionV3).
SMALL_INPUT = {"vgg16": 32, "resnet50": 32, "inception_v3": 75, "resnet18": 32, "small_cnn": 32}


@pytest.fixture(autouse=True)
def _fresh_keras():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def rgb_images():
    """Random RGB images in 0-255: rgb_images(n, size) -> float32 array (n, size, size, 3)."""

    def make(n=2, size=32, seed=0):
        return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")

    return make
