"""Regenerate the book: execute every chapter of ``_toc.yml`` with papermill, then build the HTML.

``make book`` runs ``python -m reidbook.book --profile cpu``; the tests run the same functions in the
``smoke`` profile; ``make lab`` runs ``python -m reidbook.book --lab`` (JupyterLab on ``book/``).

Chapters are stored without outputs in ``book/``; executed copies go to a staging folder
(``_build/executed/<profile>/``) together with the book's configuration, its text pages and the map figure
of the front page, and Jupyter Book builds the HTML from there, so the sources stay clean.

What the executed copies keep is what a reader should see: the chapters' kernels draw plain-text progress
bars (``REIDBOOK_PROGRESS=text``, see :mod:`reidbook.progress`), which papermill streams to the terminal,
and :func:`strip_progress` removes them (and any progress widget) from the stored outputs afterwards.
:func:`output_problems` lists what must not reach a page: warnings, tracebacks, error outputs, stderr
output, absolute paths of this machine, and more text than :data:`MAX_OUTPUT_TEXT_BYTES` per chapter.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import yaml

from .progress import PROGRESS_ENV_VAR

REPO_ROOT = Path(__file__).resolve().parent.parent
KERNEL_NAME = "reidbook"
KERNEL_DISPLAY_NAME = "reidbook (.venv)"
MAP_FIGURE = "book_map.png"
FAVICON = "favicon.png"
ICON_PRESET = "market"
#: Text of a chapter's outputs (streams, text/html/markdown/plain; images excluded), summed over its cells.
MAX_OUTPUT_TEXT_BYTES = 200_000
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: What no output may contain: a warning of any class (``UserWarning: ...``, ``WARNING:root``), a traceback.
FORBIDDEN_OUTPUT = re.compile(r"\w*Warning\b|\bWARNING\b|Traceback")


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


def chapter_number(chapter: Path) -> int:
    """The number a chapter's file name starts with (``book/02_ianet.ipynb`` -> 2)."""
    match = re.match(r"(\d+)_", chapter.name)
    if match is None:
        raise ValueError(f"chapter file {chapter} should be named <number>_<name>.ipynb, e.g. 02_ianet.ipynb")
    return int(match.group(1))


def require_kernel(name: str = KERNEL_NAME) -> None:
    """Raise a RuntimeError that says how to fix it unless the Jupyter kernel ``name`` runs this
    environment's Python (``make install`` registers it)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    fix = (
        f"run `make install`, or `{sys.executable} -m ipykernel install --sys-prefix --name {name} "
        f'--display-name "{KERNEL_DISPLAY_NAME}"`'
    )
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise RuntimeError(f"the Jupyter kernel {name!r} is not registered: {fix}") from None
    if Path(spec.argv[0]).parent.parent != Path(sys.prefix):
        raise RuntimeError(
            f"the Jupyter kernel {name!r} ({spec.resource_dir}) runs {spec.argv[0]}, not this environment's "
            f"Python ({sys.prefix}): {fix}"
        )


@contextlib.contextmanager
def _progress_as_text() -> Iterator[None]:
    """Kernels started inside draw text progress bars (unless the caller's environment chose a mode)."""
    if PROGRESS_ENV_VAR in os.environ:
        yield
        return
    os.environ[PROGRESS_ENV_VAR] = "text"
    try:
        yield
    finally:
        os.environ.pop(PROGRESS_ENV_VAR, None)


def execute_chapter(
    source: Path, target: Path, parameters: dict, timeout: int | None = None, log_output: bool = False
) -> float:
    """Execute one chapter with papermill into ``target``; return the seconds it took.

    ``log_output`` streams the chapter's printed output (its progress bars included) to this process's log.

    The chapter runs in the ``reidbook`` kernel with its own folder as working directory (as it does in
    JupyterLab); the cell papermill injects with the parameters is tagged ``remove-cell`` so the book does
    not show it, and progress bars are removed from the stored outputs (:func:`strip_progress`).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    require_kernel()
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with _progress_as_text():
            papermill.execute_notebook(
                str(source),
                str(target),
                parameters=parameters,
                cwd=str(source.parent),
                kernel_name=KERNEL_NAME,
                progress_bar=False,
                log_output=log_output,
                execution_timeout=timeout,
            )
    except PapermillExecutionError as err:
        raise ChapterFailed(
            f"{source} failed in code cell {err.exec_count} (cell index {err.cell_index}):\n"
            f"{err.ename}: {err.evalue}\nThe partly executed notebook is at {target}."
        ) from None
    nb = nbformat.read(target, as_version=4)
    _hide_injected_parameters(nb)
    strip_progress(nb)
    nbformat.write(nb, target)
    return time.perf_counter() - start


def _hide_injected_parameters(nb: nbformat.NotebookNode) -> None:
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]


def _without_progress_lines(text: str) -> str:
    """``text`` less its progress lines: those redrawn in place with a carriage return (a trailing
    ``\\r`` of a Windows line end does not count)."""
    lines = re.findall(r"[^\n]*\n|[^\n]+", text)  # each with its line end
    return "".join(line for line in lines if "\r" not in line.rstrip("\n").rstrip("\r"))


def strip_progress(nb: nbformat.NotebookNode) -> int:
    """Remove progress bars from ``nb``'s outputs in place; return how many outputs were removed.

    Text bars are the carriage-return lines of stderr streams (other stderr lines stay, so that
    :func:`output_problems` sees them); widget bars are outputs holding a widget view, and the notebook's
    saved widget state goes with them.
    """
    removed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                output.text = _without_progress_lines(output.text)
                if not output.text.strip():
                    removed += 1
                    continue
            elif WIDGET_VIEW in output.get("data", {}):
                removed += 1
                continue
            kept.append(output)
        cell.outputs = kept
    nb.metadata.pop("widgets", None)
    return removed


def local_paths() -> list[str]:
    """Absolute paths of this machine that no page may show: the repository, the Python environment,
    the home and temporary folders."""
    paths = {str(REPO_ROOT), sys.prefix, str(Path.home()) + os.sep, tempfile.gettempdir() + os.sep}
    return sorted(p for p in paths if len(p) > 1)


def _output_texts(output: nbformat.NotebookNode) -> list[str]:
    if output.output_type == "stream":
        return [output.text]
    if output.output_type == "error":
        return [f"{output.ename}: {output.evalue}", *output.traceback]
    data = output.get("data", {})
    return [
        "".join(value) if isinstance(value, list) else str(value)
        for mime, value in data.items()
        if mime.startswith("text/") or mime in ("application/json", "application/javascript")
    ]


def output_problems(path: Path, max_text_bytes: int = MAX_OUTPUT_TEXT_BYTES) -> list[str]:
    """What a reader must not see in the outputs of the executed chapter at ``path``, one line each:
    error outputs, stderr output, warnings and tracebacks (:data:`FORBIDDEN_OUTPUT`), absolute paths of
    this machine (:func:`local_paths`), and more than ``max_text_bytes`` of text in all."""
    nb = nbformat.read(path, as_version=4)
    private = local_paths()
    problems: list[str] = []
    total = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "remove-cell" in cell.metadata.get("tags", []):
            continue
        where = f"{path.name} cell {index}"
        for output in cell.outputs:
            if output.output_type == "error":
                problems.append(f"{where}: error output {output.ename}: {output.evalue}")
            if output.output_type == "stream" and output.name == "stderr":
                problems.append(f"{where}: stderr output {output.text.strip()[:200]!r}")
            for text in _output_texts(output):
                total += len(text.encode())
                if (match := FORBIDDEN_OUTPUT.search(text)) is not None:
                    context = text[max(match.start() - 80, 0) : match.end() + 120]
                    problems.append(f"{where}: {match.group()!r} in output: {context!r}")
                problems += [
                    f"{where}: local path {p!r} in output: {_around(text, p)!r}" for p in private if p in text
                ]
    if total > max_text_bytes:
        problems.append(
            f"{path.name}: {total} bytes of text outputs, more than the limit of {max_text_bytes}"
        )
    return problems


def _around(text: str, needle: str, width: int = 80) -> str:
    at = text.index(needle)
    return text[max(at - width, 0) : at + len(needle) + width]


# ----------------------------------------------------------------------------------------------------
# The front page: which chapters this edition holds, and the map figure


#: The book's chapters by number: a short title, and what the chapter's method changes at each step of the
#: pipeline drawn on the front page (a step it does not name: as in the strong baseline).
PIPELINE_STEPS = ("data", "backbone", "head", "training loss", "matching")
BOOK_PLAN: dict[int, tuple[str, dict[str, str]]] = {
    0: (
        "the world and the protocol",
        {"data": "built-in world\nin real formats", "matching": "CMC, mAP, mINP"},
    ),
    1: (
        "strong baseline",
        {
            "backbone": "ResNet,\nlast stride 1",
            "head": "GAP, BN-neck",
            "training loss": "smoothed CE\n+ triplet",
            "matching": "Euclidean\ndistance",
        },
    ),
    2: ("IANet", {"backbone": "SIA + CIA\nblocks"}),
    3: ("Pyramid", {"head": "coarse-to-fine\npart pyramid", "training loss": "dynamic\nmulti-loss"}),
    4: ("IPAD", {"head": "self-guided\ndynamic branch", "matching": "mutual-guided\ndynamic branch"}),
    5: (
        "DDAG",
        {
            "data": "visible +\ninfrared",
            "head": "part + graph\nattention",
            "training loss": "dynamic dual\naggregation",
        },
    ),
    6: (
        "QAConv + TLift",
        {
            "head": "feature-map\nneck",
            "training loss": "class memory\n+ focal",
            "matching": "query-adaptive\nconv + TLift",
        },
    ),
    7: ("comparison", {"matching": "every method,\nside by side"}),
}


def edition_substitutions(root: Path = REPO_ROOT) -> dict[str, str]:
    """MyST substitutions ``chapter0`` ... ``chapter7`` for the front page's table: a link to the chapter
    where ``_toc.yml`` lists it, "*in preparation*" where it does not."""
    present = {chapter_number(ch): ch for ch in toc_chapters(root)}
    return {
        f"chapter{number}": f"{{doc}}`{present[number].stem}`" if number in present else "*in preparation*"
        for number in BOOK_PLAN
    }


def _world_samples(preset: str, count: int) -> list[tuple[Any, str]]:
    """``count`` images of one identity of a small ``preset`` world, taking its cameras in turn, planned
    and rendered by the world generator itself; each with a caption (its camera, IR for infrared)."""
    from PIL import Image

    from .data.synthetic.presets import resolve_spec
    from .data.synthetic.writers import PLANNERS, render_jobs

    plan = PLANNERS[preset](resolve_spec(preset, {"world_size": "small"}), 0)
    by_pid: dict[int, dict[int, list]] = {}
    for job in plan.jobs:
        if job.pid > 0:  # not a distractor (0) or a junk crop (-1)
            by_pid.setdefault(job.pid, {}).setdefault(job.camera.index, []).append(job)
    cameras = max(by_pid.values(), key=len)  # the first identity seen by the most cameras
    turns = [jobs[i] for i in range(count) for _, jobs in sorted(cameras.items()) if i < len(jobs)][:count]
    with tempfile.TemporaryDirectory() as folder:
        render_jobs(turns, Path(folder), workers=1, progress=False, desc=preset)
        images = [Image.open(Path(folder) / job.relpath).convert("RGB") for job in turns]
    # Only person cameras have an infrared flag; road cameras are visible ones.
    captions = [
        f"cam {j.camera.index}" + (" IR" if getattr(j.camera, "infrared", False) else "") for j in turns
    ]
    return list(zip(images, captions))


def draw_book_map(path: Path, chapters: list[int], per_preset: int = 6) -> Path:
    """Draw the front page's figure into ``path`` (PNG) and return ``path``.

    Top: ``per_preset`` images of one identity from every preset of the built-in world, rendered by the
    world generator itself. Bottom: the pipeline every chapter shares (data, backbone, head, training loss,
    matching), with what each chapter's method changes in it (:data:`BOOK_PLAN`); chapters not in
    ``chapters`` (this edition) are greyed out.
    """
    from matplotlib.figure import Figure

    from .data.synthetic.presets import PRESETS

    cols = 2
    rows = -(-len(PRESETS) // cols)
    fig = Figure(figsize=(12, 2.3 * rows + 4.6), dpi=100, layout="constrained")
    world, methods = fig.subfigures(2, 1, height_ratios=[2.3 * rows, 4.6])
    world.suptitle("The built-in world: one identity per preset, across its cameras", fontsize=13)
    for panel, preset in zip(world.subfigures(rows, cols).flat, PRESETS):
        panel.suptitle(f"preset {preset!r}", fontsize=11)
        for ax, (image, caption) in zip(panel.subplots(1, per_preset), _world_samples(preset, per_preset)):
            ax.imshow(image)
            ax.set_title(caption, fontsize=8)
            ax.set_axis_off()
    methods.suptitle(
        "The methods: what each chapter changes in the pipeline (blank: as in the baseline)", fontsize=13
    )
    ax = methods.subplots()
    ax.set_xlim(-2.2, len(PIPELINE_STEPS))
    ax.set_ylim(len(BOOK_PLAN) - 0.5, -1.6)
    ax.set_axis_off()
    for x, step in enumerate(PIPELINE_STEPS):
        ax.annotate(
            "", xy=(x + 0.95, -0.8), xytext=(x + 0.05, -0.8), arrowprops={"arrowstyle": "-|>", "lw": 1.5}
        )
        ax.text(x + 0.5, -1.0, step, ha="center", va="bottom", fontsize=10, weight="bold")
    for y, (number, (title, changes)) in enumerate(sorted(BOOK_PLAN.items())):
        present = number in chapters
        colour = "black" if present else "0.6"
        label = f"{number}  {title}" + ("" if present else "\n   (in preparation)")
        ax.text(-2.1, y, label, ha="left", va="center", fontsize=9.5, color=colour)
        for x, step in enumerate(PIPELINE_STEPS):
            if step in changes:
                face = "#dbe8f6" if present else "#f0f0f0"
                ax.add_patch(_box(x + 0.04, y - 0.42, 0.92, 0.84, face, colour))
                ax.text(x + 0.5, y, changes[step], ha="center", va="center", fontsize=8, color=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def draw_favicon(path: Path, size: int = 64) -> Path:
    """Draw the book's icon into ``path`` (PNG): the first person of the front page's map, on a square."""
    from PIL import Image

    person = _world_samples(ICON_PRESET, 1)[0][0]  # (64, 128) RGB
    square = Image.new("RGBA", (person.height, person.height), (0, 0, 0, 0))
    square.paste(person, ((person.height - person.width) // 2, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    square.resize((size, size), Image.LANCZOS).save(path)
    return path


def _box(x: float, y: float, width: float, height: float, face: str, edge: str) -> object:
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0,rounding_size=0.08", fc=face, ec=edge)


def stage_sources(staging: Path, root: Path = REPO_ROOT) -> None:
    """Stage the book's configuration, its non-notebook pages (Markdown, bibliography, pictures), the
    front page's map figure and the site's icon in ``staging``; the staged ``_config.yml`` gains the
    edition substitutions."""
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "_toc.yml", staging / "_toc.yml")
    config = yaml.safe_load((root / "_config.yml").read_text())
    config.setdefault("parse", {})["myst_substitutions"] = edition_substitutions(root)
    (staging / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    (staging / "book").mkdir(exist_ok=True)
    for page in (root / "book").iterdir():
        if page.is_file() and page.suffix in (".md", ".bib", ".png", ".svg"):
            shutil.copy2(page, staging / "book" / page.name)
    draw_book_map(staging / "book" / MAP_FIGURE, [chapter_number(ch) for ch in toc_chapters(root)])
    draw_favicon(staging / "book" / FAVICON)


def _drop_repeated_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Keep one copy of each script of a page. Sphinx 7.4 lists an inline script that an extension adds
    once the build has started twice (as file ``None`` and as file ``""``); sphinx-thebe's repeated
    ``const THEBE_JS_URL`` is then a console error on every page."""
    seen, kept = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", script.priority, *sorted(script.attributes.items()))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app: Any) -> dict[str, bool]:
    """This module is also a Sphinx extension (``_config.yml``: ``sphinx.extra_extensions``)."""
    app.connect("html-page-context", _drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


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
    profile: str, staging: Path, output: Path, only: list[str] | None = None, log_output: bool = True,
    device: str = "auto",
) -> dict[str, float]:
    """Execute the chapters (all, or those whose name contains one of ``only``) with the parameters
    ``profile`` and ``device``, and build the HTML.

    What :func:`output_problems` finds in the executed chapters is printed at the end, not raised: the book
    is still built, and ``make test`` fails on it."""
    stage_sources(staging)
    seconds: dict[str, float] = {}
    for chapter in toc_chapters():
        if only and not any(key in chapter.stem for key in only):
            continue
        print(f"[book] executing {chapter} (profile={profile}, device={device}) ...", flush=True)
        seconds[chapter.stem] = execute_chapter(
            REPO_ROOT / chapter, staging / chapter, {"profile": profile, "device": device},
            log_output=log_output,
        )
        spent = budget_line(profile, chapter.stem, seconds[chapter.stem])
        print(f"[book] {chapter.stem}: {spent}", flush=True)
    html = build_html(staging, output)
    for chapter in toc_chapters():
        page = html / chapter.with_suffix(".html")
        problems = output_problems(staging / chapter) if (staging / chapter).exists() else []
        size = f"{page.stat().st_size / 1000:.0f} kB" if page.exists() else "not built"
        print(f"[book] {chapter.stem}: page {size}" + "".join(f"\n  PROBLEM {p}" for p in problems))
    print(f"[book] HTML at {html / 'index.html'}")
    return seconds


def budget_line(profile: str, chapter: str, seconds: float) -> str:
    """``"412 s (budget 420 s)"``, with ``OVER BUDGET`` when the profile's chapter budget is exceeded."""
    from .profiles import get_profile

    budget = get_profile(profile).budgets.get(chapter)
    if budget is None:
        return f"{seconds:.0f} s (no budget set)"
    return f"{seconds:.0f} s (budget {budget:.0f} s)" + ("  OVER BUDGET" if seconds > budget else "")


# ----------------------------------------------------------------------------------------------------
# make lab


def lab_command(port: int | None = None, open_browser: bool = True, token: str | None = None) -> list[str]:
    """The command of ``make lab``: JupyterLab from this environment, on the book's folder, new notebooks in
    the ``reidbook`` kernel, listening on localhost only, fetching no news and no extension index.
    ``token=None`` lets Jupyter make one (it prints the URL to open)."""
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={REPO_ROOT / 'book'}",
        "--ServerApp.ip=127.0.0.1",
        f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if os.geteuid() == 0:  # CI and containers run as root, which Jupyter refuses unless told
        command.append("--allow-root")
    if port is not None:
        command += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if not open_browser:
        command.append("--no-browser")
    if token is not None:
        command.append(f"--IdentityProvider.token={token}")
    return command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", help="smoke, cpu (default) or paper")
    parser.add_argument("--force", action="store_true", help="retrain runs found in the results store")
    parser.add_argument("--only", nargs="*", help="execute only the chapters whose file name contains these")
    parser.add_argument("--device", default="auto",
                        help="the chapters' device parameter: auto (default), cpu, cuda, cuda:1, mps")
    lab = parser.add_argument_group("make lab: start JupyterLab on book/ instead of regenerating the book")
    lab.add_argument("--lab", action="store_true", help="start JupyterLab (what `make lab` runs)")
    lab.add_argument("--port", type=int, help="JupyterLab's port (default: Jupyter's choice)")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser")
    lab.add_argument("--token", help="JupyterLab's access token (default: Jupyter makes one)")
    args = parser.parse_args(argv)
    if args.lab:
        require_kernel()
        command = lab_command(args.port, not args.no_browser, args.token)
        os.execv(command[0], command)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # papermill streams the chapters' output
    if args.force:
        os.environ["REIDBOOK_FORCE"] = "1"
    staging = REPO_ROOT / "_build" / "executed" / args.profile
    start = time.perf_counter()
    try:
        seconds = regenerate(args.profile, staging, REPO_ROOT, args.only, device=args.device)
    except ChapterFailed as err:
        sys.exit(f"[book] FAILED: {err}")
    for name, sec in seconds.items():
        print(f"  {name:<32s} {budget_line(args.profile, name, sec)}")
    print(f"  {'total (chapters and HTML)':<32s} {time.perf_counter() - start:7.0f} s")


if __name__ == "__main__":
    main()
