"""Every notebook runs top to bottom, offline, in its small mode (KERAS_TRANSFER_SMALL=1)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_every_worked_example_has_a_notebook_listed_in_the_readme():
    assert len(NOTEBOOKS) >= 6
    readme = (NOTEBOOKS[0].parent / "README.md").read_text() + (NOTEBOOKS[0].parents[1] / "README.md").read_text()
    for path in NOTEBOOKS:
        assert path.name in readme, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_no_outputs_in_git(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_offline_in_small_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_TRANSFER_SMALL", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
