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


def _imports(path):
    """The keras_transfer modules `path` imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "keras_transfer"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "keras_transfer":
            if node.module == "keras_transfer":
                found |= {f"keras_transfer.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return {name.removeprefix("keras_transfer.") if name != "keras_transfer" else "__init__" for name in found}


def _import_graph():
    modules = {p.stem for p in PACKAGE}
    return {p.stem: _imports(p) & modules | ({"__init__"} & _imports(p)) for p in PACKAGE if p.stem != "__init__"}


def _cycle(graph):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = "done"
        return None

    return next((c for node in sorted(graph) if node not in state and (c := visit(node, []))), None)


def test_the_modules_import_each_other_without_a_circle_and_never_the_package():
    graph = _import_graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert not [m for m, targets in graph.items() if "__init__" in targets]


def test_the_circle_check_sees_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_command_line_front_loads_without_tensorflow():
    # keras-transfer --help answers at once: cli.py and what it imports stay clear of TensorFlow and Keras.
    graph, seen, todo = _import_graph(), set(), ["cli"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += [m for m in graph[module] if not _imported_inside_a_function(module, m)]
    heavy = [
        m
        for m in sorted(seen)
        if re.search(r"^(import|from) (tensorflow|keras)\b", (ROOT / "keras_transfer" / f"{m}.py").read_text(), re.M)
    ]
    assert not heavy, heavy


def _imported_inside_a_function(module, target):
    tree = ast.parse((ROOT / "keras_transfer" / f"{module}.py").read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    return f"keras_transfer.{target}" not in top


def test_only_runs_py_spells_the_names_of_run_folder_files():
    from keras_transfer.runs import FILES

    names = {path.rsplit("/", 1)[-1] for path in FILES.values() if "." in path}
    for path in PACKAGE:
        if path.name != "runs.py":
            found = [n for n in names if re.search(rf"[\"'/]{re.escape(n)}[\"']", path.read_text())]
            assert not found, f"{path.name} spells {found}: ask keras_transfer.runs.run_file"
