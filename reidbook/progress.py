"""Progress bars for the whole package: one ``tqdm`` that draws the right kind of bar where the code runs.

Use it as a drop-in for ``tqdm.tqdm``::

    from reidbook.progress import tqdm

    for batch in tqdm(loader, desc="features", leave=False):
        ...

What it draws depends on the ``REIDBOOK_PROGRESS`` environment variable (read at every call):

- ``auto`` (the default): a widget bar in a Jupyter kernel that has ipywidgets (JupyterLab, ``make lab``),
  a plain text bar on stderr anywhere else (a terminal, a script, a kernel without ipywidgets).
- ``text``: always a plain text bar on stderr, refreshed at most once every :data:`TEXT_MININTERVAL`
  seconds. ``reidbook.book`` sets it for the chapters' kernels when it regenerates the book: papermill
  streams stderr to the terminal of ``make book``, and ``reidbook.book`` removes the bars from the executed
  notebooks afterwards, so the published pages never hold them.
- ``off``: no bar at all.

Unlike ``tqdm.auto``, choosing never emits a ``TqdmWarning`` ("IProgress not found"): without ipywidgets
the bar is simply text.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from tqdm.std import tqdm as text_tqdm

PROGRESS_ENV_VAR = "REIDBOOK_PROGRESS"
PROGRESS_MODES = ("auto", "text", "off")
#: Seconds between two refreshes of a text bar (tqdm's own default, 0.1 s, floods a streamed log).
TEXT_MININTERVAL = 1.0


def _in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (a ZMQ shell: JupyterLab, Notebook, VS Code, papermill)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _widgets_installed() -> bool:
    return importlib.util.find_spec("ipywidgets") is not None


def progress_mode() -> str:
    """The kind of bar :func:`tqdm` draws now: ``"widget"``, ``"text"`` or ``"off"``.

    Raises:
        ValueError: if ``REIDBOOK_PROGRESS`` holds something other than ``auto``, ``text`` or ``off``.
    """
    requested = os.environ.get(PROGRESS_ENV_VAR, "").strip().lower() or "auto"
    if requested not in PROGRESS_MODES:
        raise ValueError(
            f"{PROGRESS_ENV_VAR}={os.environ[PROGRESS_ENV_VAR]!r} is not a progress mode; "
            f"expected one of {', '.join(PROGRESS_MODES)}"
        )
    if requested != "auto":
        return requested
    return "widget" if _in_jupyter_kernel() and _widgets_installed() else "text"


def tqdm(*args: Any, **kwargs: Any) -> text_tqdm:
    """A progress bar of the kind :func:`progress_mode` names; takes ``tqdm.tqdm``'s arguments.

    ``disable=True`` still disables the bar in every mode; in ``off`` mode every bar is disabled.
    """
    mode = progress_mode()
    if mode == "widget":
        from tqdm.notebook import tqdm as widget_tqdm

        return widget_tqdm(*args, **kwargs)
    if mode == "off":
        kwargs["disable"] = True
    kwargs.setdefault("mininterval", TEXT_MININTERVAL)
    return text_tqdm(*args, **kwargs)
