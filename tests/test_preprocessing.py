import keras
import numpy as np
import pytest

from keras_transfer.backbones import BACKBONES
from keras_transfer.preprocessing import BackbonePreprocessing


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_in_model_preprocessing_matches_keras_preprocess_input(name, rgb_images):
    spec = BACKBONES[name]
    x = rgb_images(3, 16)
    if spec.preprocessing == "lite":  # TensorFlow's EfficientNet-Lite: MEAN_RGB = 127.0, STDDEV_RGB = 128.0
        expected = (x - 127.0) / 128.0
    elif spec.module is None:
        expected = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=spec.preprocessing)
    else:
        expected = getattr(keras.applications, spec.module).preprocess_input(x.copy())
    got = keras.ops.convert_to_numpy(BackbonePreprocessing(spec.preprocessing)(x))
    np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=1e-4)


def test_resizes_to_the_given_size_and_keeps_same_size_input_exact(rgb_images):
    layer = BackbonePreprocessing("none", size=(32, 32))
    assert tuple(layer(rgb_images(2, 50)).shape) == (2, 32, 32, 3)
    same = rgb_images(2, 32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(same)), same)
    # A dynamic-size input goes through the resize kernel; at the same size it is still the identity.
    fn = keras.Model(i := keras.Input((None, None, 3)), layer(i))
    np.testing.assert_allclose(fn.predict(same, verbose=0), same, atol=1e-3)


def test_config_round_trip():
    layer = BackbonePreprocessing("caffe", size=(40, 30), name="preprocessing")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert (clone.mode, clone.size, clone.name) == ("caffe", (40, 30), "preprocessing")


def test_unknown_mode_is_a_clear_error():
    modes = "caffe, tf, torch, unit, lite, converter, none"
    with pytest.raises(ValueError, match=rf"Unknown preprocessing mode 'bgr'.*{modes}"):
        BackbonePreprocessing("bgr")


def test_converter_mode_applies_scale_and_offset_per_channel_and_saves_them():
    layer = BackbonePreprocessing("converter", size=(4, 4), scale=(1 / 255, 2 / 255, 1.0), offset=(0.0, -1.0, 5.0))
    x = np.full((1, 4, 4, 3), 255.0, "float32")
    np.testing.assert_allclose(layer(x)[0, 0, 0], [1.0, 1.0, 260.0], rtol=1e-6)
    again = BackbonePreprocessing.from_config(layer.get_config())
    assert again.scale == layer.scale and again.offset == layer.offset
    with pytest.raises(ValueError, match=r"'converter' needs scale and offset"):
        BackbonePreprocessing("converter")
