import subprocess
import sys

import keras_transfer as kt


def test_public_surface_is_small_and_listed():
    assert sorted(kt.__all__) == sorted(name for name in kt.__all__ if hasattr(kt, name))
    assert len(kt.__all__) <= 12


def test_import_does_not_pull_tfds_or_hub():
    code = (
        "import sys, keras_transfer; "
        "eager = [m for m in ('tensorflow_datasets', 'tensorflow_hub') if m in sys.modules]; "
        "print(eager); sys.exit(1 if eager else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
