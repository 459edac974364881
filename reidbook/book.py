"""Regenerate the book: execute every chapter of ``_toc.yml`` with papermill, then build the HTML.

``make book`` runs ``python -m reidbook.book --profile cpu``; the tests run the same functions in the
``smoke`` profile. Chapters are stored without outputs in ``book/``; executed copies go to a staging
folder (``_build/executed/<profile>/``) together with the book's configuration and text pages, and
Jupyter Book builds the HTML from there, so the sources stay clean.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
BOOK_FILES = ("_config.yml", "_toc.yml")


class ChapterFailed(RuntimeError):
    """A chapter raised an error while papermill executed it."""


def toc_chapters(root: Path = REPO_ROOT) -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in reading order, as paths relative to ``root``."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries: list[str] = []

    def walk(items: list[dict]) -> None:
        for item in items:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("chapters", []) + item.get("sections", []))
            for part in item.get("parts", []):
                walk(part.get("chapters", []))

    walk(toc.get("chapters", []) + [c for p in toc.get("parts", []) for c in p.get("chapters", [])])
    notebooks = [Path(e).with_suffix(".ipynb") for e in entries]
    return [nb for nb in notebooks if (root / nb).exists()]


def execute_chapter(
    source: Path, target: Path, parameters: dict, timeout: int | None = None, log_output: bool = False
) -> float:
    """Execute one chapter with papermill into ``target``; return the seconds it took.

    ``log_output`` streams the chapter's printed output (its progress bars included) to this process's log.

    The chapter runs with its own folder as working directory (as it does in Jupyter), and the cell
    papermill injects with the parameters is tagged ``remove-cell`` so the book does not show it.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters=parameters,
            cwd=str(source.parent),
            kernel_name="python3",
            progress_bar=False,
            log_output=log_output,
            execution_timeout=timeout,
        )
    except PapermillExecutionError as err:
        raise ChapterFailed(
            f"{source} failed in code cell {err.exec_count} (cell index {err.cell_index}):\n"
            f"{err.ename}: {err.evalue}\nThe partly executed notebook is at {target}."
        ) from None
    _hide_injected_parameters(target)
    return time.perf_counter() - start


def _hide_injected_parameters(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, path)


def stage_sources(staging: Path, root: Path = REPO_ROOT) -> None:
    """Copy the book's configuration and its non-notebook pages (Markdown, bibliography) to ``staging``."""
    staging.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        shutil.copy2(root / name, staging / name)
    for page in (root / "book").iterdir():
        if page.is_file() and page.suffix in (".md", ".bib", ".png", ".svg"):
            (staging / "book").mkdir(exist_ok=True)
            shutil.copy2(page, staging / "book" / page.name)


def build_html(staging: Path, output: Path) -> Path:
    """Build the HTML book from ``staging`` into ``output/_build/html`` (warnings are errors)."""
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book), "build", str(staging), "--path-output", str(output)]
    command += ["-W", "-n", "--keep-going"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"jupyter-book build failed ({' '.join(command)}):\n{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
        )
    return output / "_build" / "html"


def regenerate(
    profile: str, staging: Path, output: Path, only: list[str] | None = None, log_output: bool = True
) -> dict[str, float]:
    """Execute the chapters (all, or those whose name contains one of ``only``) and build the HTML."""
    stage_sources(staging)
    seconds: dict[str, float] = {}
    for chapter in toc_chapters():
        if only and not any(key in chapter.stem for key in only):
            continue
        print(f"[book] executing {chapter} (profile={profile}) ...", flush=True)
        seconds[chapter.stem] = execute_chapter(
            REPO_ROOT / chapter, staging / chapter, {"profile": profile}, log_output=log_output
        )
        print(f"[book] {chapter.stem}: {seconds[chapter.stem]:.0f} s", flush=True)
    html = build_html(staging, output)
    print(f"[book] HTML at {html / 'index.html'}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", help="smoke, cpu (default) or paper")
    parser.add_argument("--force", action="store_true", help="retrain runs found in the results store")
    parser.add_argument("--only", nargs="*", help="execute only the chapters whose file name contains these")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # papermill streams the chapters' output
    if args.force:
        os.environ["REIDBOOK_FORCE"] = "1"
    staging = REPO_ROOT / "_build" / "executed" / args.profile
    start = time.perf_counter()
    try:
        seconds = regenerate(args.profile, staging, REPO_ROOT, args.only)
    except ChapterFailed as err:
        sys.exit(f"[book] FAILED: {err}")
    for name, sec in seconds.items():
        print(f"  {name:<32s} {sec:7.0f} s")
    print(f"  {'total':<32s} {time.perf_counter() - start:7.0f} s")


if __name__ == "__main__":
    main()
