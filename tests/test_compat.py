"""Every use of private Keras is pinned: its target exists in this Keras with the source it was checked against,
and a changed target is a clear error, never a silent patch."""

import configparser
from pathlib import Path

import keras
import pytest

from keras_transfer import compat


@pytest.mark.parametrize("name", sorted(compat.TARGETS))
def test_each_private_target_is_the_code_that_was_checked(name):
    assert compat.fingerprint(compat.target(name)) == compat.TARGETS[name]


def test_a_changed_target_fails_with_a_message_naming_it_and_the_versions(monkeypatch):
    name = "keras.src.layers.layer:Layer._flatten_layers"
    monkeypatch.setitem(compat.TARGETS, name, "0000000000000000")
    monkeypatch.setattr(compat, "_checked", set())
    with pytest.raises(
        RuntimeError,
        match=r"keras\.src\.layers\.layer\.Layer\._flatten_layers, checked with Keras "
        r"3\.15\.1; in the installed Keras .* its source changed",
    ):
        compat.flatten_layers(object())


def test_a_missing_target_fails_clearly(monkeypatch):
    monkeypatch.setitem(compat.TARGETS, "keras.src.layers.layer:Layer._gone", "0")
    with pytest.raises(RuntimeError, match=r"Layer\._gone, checked with Keras .* it no longer exists"):
        compat.target("keras.src.layers.layer:Layer._gone")


def test_the_patched_functions_are_used_through_compat():
    import keras

    model = keras.Sequential(
        [keras.Input((4,)), keras.Sequential([keras.layers.Dense(2), keras.layers.BatchNormalization()])]
    )
    assert sum(isinstance(x, keras.layers.BatchNormalization) for x in compat.flatten_layers(model)) == 1
    assert compat.in_safe_mode() in (True, None)  # load_model's default outside a load: safe mode


def test_setup_cfg_allows_only_the_keras_that_compat_was_checked_with():
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    requirements = setup["options"]["install_requires"].split()
    assert f"keras{compat.KERAS_RANGE}" in requirements
    assert keras.__version__.startswith(compat.CHECKED_WITH.rsplit(".", 1)[0])
