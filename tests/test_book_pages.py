"""The book as its readers meet it, without a browser: clean outputs, offline math, a true front page.

Unit tests check :mod:`reidbook.book`'s clean-up and audit on small hand-made notebooks; the tests marked
``notebook`` check the chapters executed in the smoke profile (``smoke_book``/``smoke_html`` fixtures of
``conftest.py``) and the HTML book built from them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook, new_output
from PIL import Image

from reidbook import book
from reidbook.book import (
    BOOK_PLAN,
    MAP_FIGURE,
    REPO_ROOT,
    chapter_number,
    edition_substitutions,
    execute_chapter,
    lab_command,
    output_problems,
    require_kernel,
    strip_progress,
    toc_chapters,
)

#: A chapter's HTML page (images are separate files); the IANet page held 565 kB of progress text before.
MAX_PAGE_BYTES = 400_000
PROGRESS_TEXT = "\rtrain:   0%|          | 0/40 [00:00<?, ?it/s]\rtrain:  50%|#####     | 20/40 [00:01<00:01]"
WIDGET = {
    "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2},
    "text/plain": "0%",
}


def _notebook(*outputs: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell("run()", outputs=list(outputs))])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nb


def _write(nb: nbformat.NotebookNode, tmp_path: Path) -> Path:
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, path)
    return path


# -- strip_progress


def test_strip_progress_removes_text_bars_and_widgets_and_keeps_everything_else():
    nb = _notebook(
        new_output("stream", name="stderr", text=PROGRESS_TEXT + "\n"),
        new_output("display_data", data=WIDGET),
        new_output("stream", name="stdout", text="baseline seed 0: trained 2 epochs in 0.3 min (cpu)\n"),
        new_output(
            "stream", name="stderr", text=PROGRESS_TEXT + "\nUserWarning: something\n" + PROGRESS_TEXT
        ),
        new_output("display_data", data={"text/plain": "<Figure>", "image/png": "iVBOR"}),
    )
    assert strip_progress(nb) == 2
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["stream", "stream", "display_data"]
    assert outputs[0].text == "baseline seed 0: trained 2 epochs in 0.3 min (cpu)\n"
    assert outputs[1].name == "stderr" and outputs[1].text == "UserWarning: something\n"
    assert "widgets" not in nb.metadata


def test_strip_progress_keeps_windows_line_ends():
    nb = _notebook(new_output("stream", name="stderr", text="note one\r\nnote two\r\n"))
    assert strip_progress(nb) == 0
    assert nb.cells[0].outputs[0].text == "note one\r\nnote two\r\n"


# -- output_problems


def test_a_clean_chapter_has_no_problems(tmp_path):
    nb = _notebook(
        new_output("stream", name="stdout", text="rank-1 48.8% mAP 36.9%\n"),
        new_output(
            "execute_result", data={"text/html": "<table><tr><td>1</td></tr></table>"}, execution_count=1
        ),
    )
    assert output_problems(_write(nb, tmp_path)) == []


@pytest.mark.parametrize(
    "output, expected",
    [
        (new_output("stream", name="stdout", text=f"root='{REPO_ROOT}/data'\n"), "local path"),
        (new_output("stream", name="stdout", text=f"python at {sys.prefix}/bin/python\n"), "local path"),
        (new_output("stream", name="stdout", text=f"cache in {Path.home()}/.cache/x\n"), "local path"),
        (new_output("stream", name="stdout", text="TqdmWarning: IProgress not found.\n"), "'TqdmWarning'"),
        (new_output("stream", name="stdout", text="WARNING:root:slow\n"), "'WARNING'"),
        (new_output("stream", name="stderr", text="a note on stderr\n"), "stderr output"),
        (
            new_output("display_data", data={"text/plain": "Traceback (most recent call last):"}),
            "'Traceback'",
        ),
        (new_output("error", ename="ValueError", evalue="bad", traceback=[]), "error output ValueError"),
    ],
)
def test_every_kind_of_problem_is_found(tmp_path, output, expected):
    problems = output_problems(_write(_notebook(output), tmp_path))
    assert problems, f"nothing found in {output}"
    assert expected in problems[0]
    assert "chapter.ipynb cell 0" in problems[0]


def test_too_much_output_text_is_a_problem(tmp_path):
    nb = _notebook(new_output("stream", name="stdout", text="x" * 1000))
    path = _write(nb, tmp_path)
    assert output_problems(path, max_text_bytes=1000) == []
    assert output_problems(path, max_text_bytes=999) == [
        "chapter.ipynb: 1000 bytes of text outputs, more than the limit of 999"
    ]


def test_images_do_not_count_as_text(tmp_path):
    nb = _notebook(new_output("display_data", data={"image/png": "A" * 5000, "text/plain": "<Figure>"}))
    assert output_problems(_write(nb, tmp_path), max_text_bytes=100) == []


# -- execute_chapter: text bars stream, then leave the stored notebook


def test_execute_chapter_keeps_printed_lines_and_drops_progress_bars(tmp_path, monkeypatch):
    monkeypatch.delenv("REIDBOOK_PROGRESS", raising=False)
    parameters = new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]})
    work = new_code_cell(
        "from reidbook.progress import progress_mode, tqdm\n"
        "print('mode', progress_mode())\n"
        "total = sum(tqdm(range(50), desc='toy', mininterval=0))\n"
        "print(f'{profile}: summed to {total}')"
    )
    source = tmp_path / "toy.ipynb"
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(new_notebook(cells=[parameters, work], metadata={"kernelspec": kernelspec}), source)
    execute_chapter(source, tmp_path / "out" / "toy.ipynb", {"profile": "smoke"})
    nb = nbformat.read(tmp_path / "out" / "toy.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0].metadata.tags
    outputs = nb.cells[-1].outputs
    assert all(o.output_type == "stream" and o.name == "stdout" for o in outputs), outputs
    assert "".join(o.text for o in outputs) == "mode text\nsmoke: summed to 1225\n"


# -- the kernel and make lab


def test_a_missing_kernel_is_an_error_that_says_how_to_register_it():
    with pytest.raises(
        RuntimeError, match=r"'no-such-reidbook-kernel' is not registered: run `make install`"
    ):
        require_kernel("no-such-reidbook-kernel")


def test_the_reidbook_kernel_runs_this_environment():
    require_kernel()  # make install registers it


def test_lab_command_serves_the_book_folder_on_localhost():
    command = lab_command(port=8899, open_browser=False, token="abc")
    assert command[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={REPO_ROOT / 'book'}" in command
    assert {"--ServerApp.ip=127.0.0.1", "--ServerApp.port=8899", "--no-browser"} <= set(command)
    assert "--IdentityProvider.token=abc" in command
    assert "--MappingKernelManager.default_kernel_name=reidbook" in command
    assert "--no-browser" not in lab_command()
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^lab: install\n\t\$\(BIN\)/python -m reidbook\.book --lab", makefile, re.M), (
        "make lab must run `python -m reidbook.book --lab`, the command the browser test starts"
    )


# -- the front page


def test_chapter_numbers_come_from_file_names():
    assert chapter_number(Path("book/06_qaconv_tlift.ipynb")) == 6
    with pytest.raises(ValueError, match="should be named <number>_<name>.ipynb"):
        chapter_number(Path("book/qaconv.ipynb"))


def test_edition_substitutions_link_exactly_the_chapters_of_the_toc():
    present = {chapter_number(ch): ch.stem for ch in toc_chapters()}
    subs = edition_substitutions()
    assert set(subs) == {f"chapter{n}" for n in BOOK_PLAN}
    for number in BOOK_PLAN:
        expected = f"{{doc}}`{present[number]}`" if number in present else "*in preparation*"
        assert subs[f"chapter{number}"] == expected
    index = (REPO_ROOT / "book" / "index.md").read_text()
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", index))
    assert used == set(subs), f"book/index.md should use every chapter substitution once: {used ^ set(subs)}"
    assert f"```{{figure}} {MAP_FIGURE}" in index


def test_every_toc_chapter_is_in_the_book_plan():
    missing = [ch.name for ch in toc_chapters() if chapter_number(ch) not in BOOK_PLAN]
    assert not missing, f"add these chapters to reidbook.book.BOOK_PLAN (the front page's map): {missing}"


def test_config_serves_mathjax_from_the_book_itself():
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]
    assert "mathjax_path" not in config["sphinx"].get("config", {}), "mathjax_path would point at a CDN again"
    assert config["title"] == "reidbook: person re-identification, by running the papers"


# -- the chapters executed in the smoke profile, and their HTML


@pytest.mark.notebook
@pytest.mark.parametrize("chapter", [nb.stem for nb in toc_chapters()])
def test_executed_chapter_outputs_are_clean(smoke_book, chapter):
    staging, outcome = smoke_book
    if not isinstance(outcome[chapter], float):
        pytest.fail(f"{chapter} did not execute: {outcome[chapter]}")
    problems = output_problems(staging / "book" / f"{chapter}.ipynb")
    assert not problems, "what readers would see on the page:\n" + "\n".join(problems)


@pytest.mark.notebook
def test_staged_front_page_has_its_map_and_edition(smoke_book):
    staging, _ = smoke_book
    with Image.open(staging / "book" / MAP_FIGURE) as image:
        assert image.width >= 1000 and image.height >= 700
    staged = yaml.safe_load((staging / "_config.yml").read_text())
    assert staged["parse"]["myst_substitutions"] == edition_substitutions()


@pytest.mark.notebook
def test_html_pages_are_small_local_and_load_mathjax_from_static(smoke_html):
    assert (smoke_html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    pages = sorted(smoke_html.rglob("*.html"))
    sizes = {}
    for page in pages:
        text = page.read_text()
        name = str(page.relative_to(smoke_html))
        sizes[name] = len(text.encode())
        leaked = [p for p in book.local_paths() if p in text]
        assert not leaked, f"{name} shows local paths {leaked}"
        scripts = re.findall(r'<script[^>]*src="([^"]+)"', text)
        remote = [s for s in scripts if "://" in s or s.startswith("//")]
        assert not remote, f"{name} loads scripts from the network: {remote}"
    print("\nHTML page sizes (kB):", {k: round(v / 1000) for k, v in sizes.items()})
    for chapter in toc_chapters():
        name = str(chapter.with_suffix(".html"))
        assert name in sizes, f"{name} was not built"
        assert sizes[name] <= MAX_PAGE_BYTES, f"{name}: {sizes[name]} bytes, more than {MAX_PAGE_BYTES}"
        text = (smoke_html / name).read_text()
        if 'class="math' in text:
            assert "_static/mathjax/tex-chtml.js" in text, f"{name} has equations but no local MathJax"
