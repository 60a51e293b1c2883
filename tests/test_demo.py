import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_few_shot_split_counts_and_relabels():
    demo = _demo()
    x, y = demo.digits_rgb(seed=0)
    assert x.shape == (1797, 8, 8, 3) and x.min() >= 0 and x.max() == 255
    (x_train, y_train), (x_test, y_test) = demo.few_shot_split(x, y, range(5, 10), 3)
    assert np.bincount(y_train).tolist() == [3] * 5
    assert len(x_train) + len(x_test) == int(np.isin(y, range(5, 10)).sum())
    assert set(y_test) == set(range(5))
