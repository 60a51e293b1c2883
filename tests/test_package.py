import os
import subprocess
import sys
from pathlib import Path

import pytest

import keras_transfer as kt

ROOT = Path(__file__).resolve().parents[1]


def _python(code, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_public_surface_is_small_and_listed():
    assert sorted(kt.__all__) == sorted(name for name in kt.__all__ if hasattr(kt, name))
    assert len(kt.__all__) <= 14  # DESIGN.md: "about ten"; imagenet_classifier, decode_imagenet, quiet_tensorflow


def test_every_module_resolves_as_kt_dot_name_and_the_documented_paths_work():
    # kt.data.write_shards, kt.export.export_tflite, ...: after a plain `import keras_transfer as kt`, in a fresh
    # process (here, another test may have imported the modules already).
    files = {p.stem for p in (ROOT / "keras_transfer").glob("*.py")} | {
        p.parent.name for p in (ROOT / "keras_transfer").glob("*/__init__.py")
    }
    assert set(kt.MODULES) == files - {"__init__", "commands"}, set(kt.MODULES) ^ (files - {"__init__", "commands"})
    code = (
        "import keras_transfer as kt; "
        "print(all(getattr(kt, m).__name__ == 'keras_transfer.' + m for m in kt.MODULES)); "
        "print(kt.data.write_shards.__name__, kt.data.Table.__name__, kt.export.export_tflite.__name__)"
    )
    result = _python(code)
    assert result.stdout.split() == ["True", "write_shards", "Table", "export_tflite"], result.stdout + result.stderr
    with pytest.raises(AttributeError, match="has no attribute 'nowhere'"):
        _ = kt.nowhere


def test_importing_the_package_changes_nothing_in_the_process():
    # No environment variable, no file descriptor, no TensorFlow: a user's program or server keeps its own.
    code = (
        "import os, sys; before = (dict(os.environ), os.listdir('/proc/self/fd'), os.fstat(2).st_ino); "
        "import keras_transfer, keras_transfer.cli; keras_transfer.cli.build_parser().format_help(); "
        "after = (dict(os.environ), os.listdir('/proc/self/fd'), os.fstat(2).st_ino); "
        "loaded = [m for m in ('tensorflow', 'keras', 'tensorflow_datasets', 'tensorflow_hub') if m in sys.modules]; "
        "print(before == after, loaded)"
    )
    result = _python(code)
    assert result.returncode == 0 and result.stdout == "True []\n", result.stdout + result.stderr


@pytest.mark.slow
def test_using_a_name_loads_the_library_but_not_tfds_or_hub():
    code = (
        "import sys, keras_transfer as kt; kt.build_model; "
        "print([m for m in ('tensorflow', 'tensorflow_datasets', 'tensorflow_hub') if m in sys.modules])"
    )
    result = _python(code)
    assert result.returncode == 0 and result.stdout == "['tensorflow']\n", result.stdout + result.stderr


@pytest.mark.slow
def test_quiet_tensorflow_keeps_its_start_up_lines_off_the_terminal():
    # Decoding and a ViT's training step too: a uint8 Transpose in the decoder's graph (EXIF turns), and an int32 op
    # in a keras-hub ViT's gradient, made oneDNN log an error line on CPUs without AVX-512, such as this project's
    # build machines (elsewhere that part of the check cannot fail).
    code = (
        "import keras_transfer as kt; kt.quiet_tensorflow(); import tensorflow as tf; tf.constant(1) + 1; "
        "from keras_transfer.images import decode_image; "
        "png = tf.io.encode_png(tf.zeros((4, 6, 3), tf.uint8)); "
        "assert [x.shape for x in tf.data.Dataset.from_tensors(png).map(decode_image)] == [(4, 6, 3)]; "
        "import keras, keras_hub, numpy as np; "
        "vit = keras_hub.models.ViTBackbone((32, 32, 3), 8, 1, 1, 8, 8); "
        "m = keras.Sequential([vit, keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)]); "
        "m.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True)); "
        "m.fit(np.zeros((2, 32, 32, 3)), np.zeros(2), verbose=0); print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_TRANSFER_VERBOSE")}
    quiet = _python(code, env)
    assert quiet.returncode == 0 and quiet.stdout == "ok\n" and quiet.stderr == "", quiet.stderr
    # Without the call (or with KERAS_TRANSFER_VERBOSE=1) TF 2.21's absl/oneDNN lines show: the check can fail.
    loud = _python(code, {**env, "KERAS_TRANSFER_VERBOSE": "1"})
    assert loud.returncode == 0 and loud.stderr.strip(), "nothing to hide: the test above proves nothing here"


@pytest.mark.slow
def test_a_keras_file_loads_with_keras_alone_once_the_package_is_used(tmp_path):
    path = tmp_path / "m.keras"
    kt.build_model("small_cnn", 2, input_shape=32, weights=None).save(path)
    code = f"import keras, keras_transfer as kt; kt.build_model; keras.saving.load_model({str(path)!r}); print('ok')"
    result = _python(code)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
