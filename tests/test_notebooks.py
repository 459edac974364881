"""The book's chapters: stored clean, parameterisable, and executable end to end in the smoke profile.

The smoke execution (the ``smoke_book`` and ``smoke_html`` fixtures of ``conftest.py``) runs every chapter of
``_toc.yml`` once with papermill (in reading order, sharing one results store in a temporary folder) and
then builds the HTML book from those outputs.
"""

from __future__ import annotations

import ast
import json

import nbformat
import pytest

from reidbook.book import REPO_ROOT, toc_chapters

NOTEBOOKS = sorted((REPO_ROOT / "book").glob("*.ipynb"))
REQUIRED_PARAMETERS = {"profile", "dataset", "data_root", "device", "seed"}


def test_every_notebook_is_in_the_toc():
    listed = {REPO_ROOT / nb for nb in toc_chapters()}
    assert NOTEBOOKS, "no chapters found in book/"
    assert set(NOTEBOOKS) == listed, f"notebooks not in _toc.yml: {set(NOTEBOOKS) - listed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    code = [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    dirty = [i for i, c in code if c["outputs"] or c["execution_count"]]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_a_parameters_cell_of_plain_assignments(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(cells)}"
    tree = ast.parse(cells[0].source)
    names = set()
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{path.name}: parameters cell may hold only assignments"
        assert isinstance(node.value, ast.Constant), f"{path.name}: parameter values must be literals"
        names.update(t.id for t in node.targets)
    assert REQUIRED_PARAMETERS <= names, f"{path.name}: missing parameters {REQUIRED_PARAMETERS - names}"


@pytest.mark.notebook
@pytest.mark.parametrize("chapter", [nb.stem for nb in toc_chapters()])
def test_chapter_executes_in_smoke_profile(smoke_book, chapter):
    _, outcome = smoke_book
    assert isinstance(outcome[chapter], float), outcome[chapter]


@pytest.mark.notebook
def test_book_builds_from_smoke_outputs(smoke_book, smoke_html):
    _, outcome = smoke_book
    assert (smoke_html / "index.html").exists()
    for chapter in outcome:
        page = smoke_html / "book" / f"{chapter}.html"
        assert page.exists(), f"{page} was not built"
        assert "<img" in page.read_text(), f"{page.name} has no figure"
