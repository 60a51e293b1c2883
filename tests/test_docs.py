"""The README and docs/ stay true to the code: the code blocks marked `<!-- runs -->` run, every page the README
links exists, and the backbone table printed in docs/backbones.md is the one `list_backbones()` prints."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SUBPROCESS_ENV

import keras_transfer as kt

PAGES = [Path(ROOT) / "README.md", *sorted((Path(ROOT) / "docs").glob("*.md"))]
RUNS = re.compile(r"<!-- runs -->\s*```python\n(.*?)```", re.S)
BLOCKS = [(page, i, code) for page in PAGES for i, code in enumerate(RUNS.findall(page.read_text()))]


def test_the_readme_marks_its_example_to_run_and_links_only_pages_that_exist():
    readme = PAGES[0].read_text()
    assert RUNS.search(readme), "the README's example is not marked <!-- runs -->"
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links and all((Path(ROOT) / link).is_file() for link in links), links


@pytest.mark.slow
@pytest.mark.parametrize("page,i,code", BLOCKS, ids=[f"{p.name}-{i}" for p, i, _ in BLOCKS])
def test_marked_code_blocks_run(page, i, code, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{page.name} block {i}:\n{done.stderr[-3000:]}"


def test_the_backbone_table_in_the_docs_is_the_one_the_code_prints():
    assert kt.list_backbones() in (Path(ROOT) / "docs" / "backbones.md").read_text()
