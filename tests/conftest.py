"""Session fixtures shared by the book's tests: the chapters executed once in the smoke profile, and the
HTML book built once from those outputs (tests/test_notebooks.py, test_book_pages.py, test_browser.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reidbook.book import REPO_ROOT, ChapterFailed, build_html, execute_chapter, stage_sources, toc_chapters


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float | str]]:
    """Execute every chapter in the smoke profile once; record each one's seconds or failure."""
    staging = tmp_path_factory.mktemp("book")
    stage_sources(staging)
    outcome: dict[str, float | str] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REIDBOOK_RESULTS", str(staging / "results"))
        for chapter in toc_chapters():
            start = time.perf_counter()
            try:
                execute_chapter(REPO_ROOT / chapter, staging / chapter, {"profile": "smoke"})
                outcome[chapter.stem] = time.perf_counter() - start
            except ChapterFailed as err:
                outcome[chapter.stem] = str(err)
    seconds = {k: (round(v) if isinstance(v, float) else "FAILED") for k, v in outcome.items()}
    print("\nsmoke execution seconds:", seconds)
    return staging, outcome


@pytest.fixture(scope="session")
def smoke_html(
    smoke_book: tuple[Path, dict[str, float | str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The HTML book built from the smoke outputs (its ``_build/html`` folder); fails if a chapter failed."""
    staging, outcome = smoke_book
    failed = [k for k, v in outcome.items() if not isinstance(v, float)]
    if failed:
        pytest.fail(f"chapters failed, so the book cannot be built: {failed}")
    return build_html(staging, tmp_path_factory.mktemp("html"))
