import subprocess
import sys

import keras_transfer as kt


def test_public_surface_is_small_and_listed():
    assert sorted(kt.__all__) == sorted(name for name in kt.__all__ if hasattr(kt, name))
    assert len(kt.__all__) <= 13  # DESIGN.md: "about ten"; imagenet_classifier and decode_imagenet are in its API


def test_import_does_not_pull_tfds_or_hub():
    code = (
        "import sys, keras_transfer; "
        "eager = [m for m in ('tensorflow_datasets', 'tensorflow_hub') if m in sys.modules]; "
        "print(eager); sys.exit(1 if eager else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_keeps_tensorflow_start_up_lines_off_the_terminal():
    code = "import keras_transfer, tensorflow as tf; tf.constant(1.0) + 1; print('ok')"
    env = {
        k: v for k, v in __import__("os").environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_TRANSFER_VERBOSE")
    }
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert quiet.returncode == 0 and quiet.stdout == "ok\n" and quiet.stderr == "", quiet.stderr
    # The same process with KERAS_TRANSFER_VERBOSE=1 shows what was kept away (TF 2.21's absl/oneDNN lines).
    loud = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "KERAS_TRANSFER_VERBOSE": "1"},
    )
    assert loud.returncode == 0 and loud.stderr.strip(), "nothing to hide: the test above proves nothing here"
