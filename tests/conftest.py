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


def encode(array, fmt="PNG", **options):
    """The bytes of `array` (uint8 HxW or HxWx3) saved by PIL as `fmt` (PNG, JPEG, ...): the suite's one encoder."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array).astype(np.uint8)).save(buffer, fmt, **options)
    return buffer.getvalue()


def free_ports(n):
    """`n` TCP ports on 127.0.0.1 that were free a moment ago (for local tf.distribute workers and services)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


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
    return write_colour_images(tmp_path_factory.mktemp("colour_folder") / "images")


def write_colour_images(root, names=("red", "green", "blue"), n=12, seed=0):
    """`root/<name>/<i>.png` for each colour name: `n` generated 48x56 PNGs whose colour carries the class, other
    images for another `seed` (a source never holds one image twice). Returns `root`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 80, (48, 56, 3), dtype=np.uint8)
            pixels[..., ("red", "green", "blue").index(name)] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def digits_model():
    """`(model, train, test, test_images)`: small_cnn trained a few epochs on scikit-learn's digits (over 90% test
    accuracy, checked), so that exports and quantization have real decisions to keep. Made once per worker."""
    import keras_transfer as kt
    from keras_transfer.export import dataset_images

    keras.utils.set_random_seed(0)
    train, _, test, info = kt.load_dataset(
        "digits", image_size=32, batch_size=32, validation_split=0.0, test_split=0.2, deterministic=True
    )
    model = kt.build_model("small_cnn", info.num_classes, input_shape=32, weights=None)
    settings = dict(head_epochs=0, fine_tune_epochs=3, unfreeze="all", train_batchnorm=True, verbose=0)
    kt.fine_tune(model, train, fine_tune_learning_rate=3e-3, **settings)
    images = dataset_images(test)
    labels = np.concatenate([y.numpy() for _, y in test])
    assert np.mean(model.predict(images, verbose=0).argmax(-1) == labels) > 0.9  # else agreement proves little
    return model, train, test, images
