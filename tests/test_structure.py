"""The shape of the code, as DESIGN.md and STYLE.md ask: short functions, a model's parts reached through
models.py, private Keras only in compat.py, one of each helper."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = sorted((ROOT / "keras_transfer").rglob("*.py"))
CODE = PACKAGE + sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
MAX_LINES = 50


def _functions(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            yield node.name, node.lineno, (body[-1].end_lineno - body[0].lineno + 1) if body else 0


@pytest.mark.parametrize("path", PACKAGE, ids=[str(p.relative_to(ROOT)) for p in PACKAGE])
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
        ("gfile.rename(", "files.py"),  # bucket paths too
    ],
)
def test_one_of_each_helper(call, home):
    users = [p.name for p in CODE if call in p.read_text()]
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


def _module(path):
    """`data.tables` for keras_transfer/data/tables.py, `data` for its __init__.py, `__init__` for the package's."""
    parts = path.relative_to(ROOT / "keras_transfer").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _path(module):
    folder = ROOT / "keras_transfer" / module.replace(".", "/")
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


def _import_graph():
    modules = {_module(p) for p in PACKAGE}
    return {
        _module(p): _imports(p) & modules | ({"__init__"} & _imports(p)) for p in PACKAGE if _module(p) != "__init__"
    }


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
    heavy = [m for m in sorted(seen) if re.search(r"^(import|from) (tensorflow|keras)\b", _path(m).read_text(), re.M)]
    assert not heavy, heavy


def _imported_inside_a_function(module, target):
    tree = ast.parse(_path(module).read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    return f"keras_transfer.{target}" not in top


SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize(
    "table,owner",
    [("keras_transfer.runs", "runs.py"), ("keras_transfer.export.layout", "layout.py")],
)
def test_only_the_owner_spells_the_names_of_its_folder_files(table, owner):
    import importlib

    files = importlib.import_module(table).FILES
    names = {path.rsplit("/", 1)[-1] for path in files.values() if "." in path} - {"saved_model.pb"}  # TF's own
    spelled = {
        f"{path.relative_to(ROOT)}: {n}"
        for path in PACKAGE + SCRIPTS
        if path.name != owner
        for n in names
        if re.search(rf"[\"'/]{re.escape(n)}[\"']", path.read_text())
    }
    assert not spelled, f"ask {table} for these names: {sorted(spelled)}"


def test_the_tests_mirror_the_packages():
    # keras_transfer/data/ is tested in tests/data/, keras_transfer/export/ in tests/export/, ...
    packages = {p.parent.name for p in PACKAGE if p.name == "__init__.py" and p.parent.name != "keras_transfer"}
    mirrored = {p.parent.name for p in (ROOT / "tests").glob("*/test_*.py")}
    assert packages <= mirrored, packages - mirrored
