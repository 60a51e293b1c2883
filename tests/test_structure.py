"""The shape of the code, as DESIGN.md and STYLE.md ask: short functions, a model's parts reached through
models.py, private Keras only in compat.py, one of each helper."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = sorted((ROOT / "keras_transfer").glob("*.py"))
CODE = PACKAGE + sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
MAX_LINES = 50


def _functions(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            yield node.name, node.lineno, (body[-1].end_lineno - body[0].lineno + 1) if body else 0


@pytest.mark.parametrize("path", PACKAGE, ids=[p.name for p in PACKAGE])
def test_no_function_in_the_package_is_longer_than_50_lines_of_code(path):
    # Lines from the first statement after the docstring to the last; docstrings are the documentation.
    long = [f"{name} (line {line}): {n} lines" for name, line, n in _functions(path) if n > MAX_LINES]
    assert not long, long


def test_the_length_check_sees_a_long_function(tmp_path):
    source = tmp_path / "long.py"
    source.write_text('def f():\n    """Doc."""\n' + "    x = 1\n" * 51)
    assert [n for _, _, n in _functions(source)] == [51]


LAYER_NAMES = ("images", "augmentation", "preprocessing", "backbone", "head_pool", "predictions")


@pytest.mark.parametrize("path", CODE, ids=[f"{p.parent.name}/{p.name}" for p in CODE])
def test_only_models_py_looks_up_the_layers_build_model_names(path):
    if path.name == "models.py" and path.parent.name == "keras_transfer":
        return
    pattern = re.compile(r"get_layer\(\s*[\"'](" + "|".join(LAYER_NAMES) + r")[\"']")
    assert not pattern.findall(path.read_text()), "use keras_transfer.models' accessors"


@pytest.mark.parametrize("path", CODE, ids=[f"{p.parent.name}/{p.name}" for p in CODE])
def test_private_keras_is_used_only_in_compat_py(path):
    if path.name == "compat.py":
        return
    text = path.read_text()
    assert "keras.src" not in text and "_flatten_layers" not in text


def test_no_hidden_dataset_attribute_decides_anything():
    for path in PACKAGE:
        assert "keras_transfer_augmented" not in path.read_text(), path.name


@pytest.mark.parametrize(
    "call,home",
    [
        ("tf.io.decode_image(", "images.py"),  # one image decoder
        ("os.replace(", "files.py"),  # one atomic write
        ("os.rename(", None),
    ],
)
def test_one_of_each_helper(call, home):
    users = [p.name for p in PACKAGE + sorted((ROOT / "scripts").glob("*.py")) if call in p.read_text()]
    assert users == ([home] if home else []), users


def test_one_feature_extractor_builder():
    # The pooled-features model is built in models.feature_model only; the head's layer names live in heads.py.
    users = [p.name for p in PACKAGE if re.search(r"HEAD_POOL|[\"']head_pool[\"']", p.read_text())]
    assert users == ["heads.py", "models.py"], users
