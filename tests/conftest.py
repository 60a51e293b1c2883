import os
import tempfile

# The suite's own process settings (the library sets none): TensorFlow's C++ log lines off, and the EfficientNet-Lite
# conversions in a cache of the suite's own, not in the user's ~/.keras. Subprocesses get the same, and the
# checkout on their path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_HOME"] = os.path.join(tempfile.gettempdir(), "keras_transfer_tests_keras_home")
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": ROOT}

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # TensorFlow's start-up lines stay out of the test output (each xdist worker imports this file)

import keras
import numpy as np
import pytest

# The small sizes the suite builds each backbone at: its minimum (75 px for InceptionV3).
SMALL_INPUT = {"vgg16": 32, "resnet50": 32, "inception_v3": 75, "resnet18": 32, "small_cnn": 32}


@pytest.fixture(autouse=True)
def _fresh_keras():
    # Without a garbage collection per test: gc.collect() over the heap of a long run took about 1.8 s a test
    # (most of the suite's time); Python still collects by itself.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def rgb_images():
    """Random RGB images in 0-255: rgb_images(n, size) -> float32 array (n, size, size, 3)."""

    def make(n=2, size=32, seed=0):
        return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")

    return make


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    """Class folders `red`, `green`, `blue` of 12 generated 48x56 PNGs each, whose colour carries the class; made
    once per test run and shared, so tests only read it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colour_folder") / "images"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 80, (48, 56, 3), dtype=np.uint8)
            pixels[..., c] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root
