import keras
import pytest
import tensorflow as tf

from keras_transfer import get_strategy
from keras_transfer.distribute import set_mixed_precision


def test_auto_on_this_machine_is_the_default_strategy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert get_strategy("auto") is tf.distribute.get_strategy()
    assert get_strategy("one_device").num_replicas_in_sync == 1


def test_auto_picks_multi_worker_from_tf_config(monkeypatch):
    from keras_transfer import distribute

    monkeypatch.setenv(
        "TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}'
    )
    assert distribute._auto() == "multi_worker"
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match=r"TF_CONFIG is not valid JSON"):
        distribute._auto()


def test_errors():
    with pytest.raises(ValueError, match=r"Unknown strategy 'gpu'\. Expected one of: auto, default, one_device"):
        get_strategy("gpu")
    with pytest.raises(ValueError, match=r"Unknown mixed precision mode 'fp16'"):
        set_mixed_precision("fp16")


def test_mixed_precision_auto_is_bfloat16_on_cpu():
    assert set_mixed_precision("auto") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert set_mixed_precision("off") == "float32"
