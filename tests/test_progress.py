"""reidbook.progress: the bar fits where the code runs, and choosing it never warns."""

from __future__ import annotations

import io
import sys
import types
import warnings

import pytest
import tqdm.notebook
import tqdm.std

from reidbook import progress
from reidbook.progress import PROGRESS_ENV_VAR, TEXT_MININTERVAL, progress_mode
from reidbook.progress import tqdm as progress_tqdm


class ZMQInteractiveShell:
    """Stands for ipykernel's shell: only its class name is looked at."""


@pytest.fixture
def in_kernel(monkeypatch):
    """Pretend to run inside a Jupyter kernel (IPython's get_ipython returns a ZMQ shell)."""
    fake = types.ModuleType("IPython")
    fake.get_ipython = ZMQInteractiveShell
    monkeypatch.setitem(sys.modules, "IPython", fake)


def test_text_mode_draws_carriage_return_lines_on_the_given_file(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV_VAR, "text")
    out = io.StringIO()
    with progress_tqdm(total=3, desc="toy", file=out) as bar:
        for _ in range(3):
            bar.update(1)
    assert type(bar) is tqdm.std.tqdm
    assert bar.mininterval == TEXT_MININTERVAL
    assert "\r" in out.getvalue() and "toy" in out.getvalue() and "3/3" in out.getvalue()


def test_explicit_arguments_win_over_the_text_defaults(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV_VAR, "text")
    bar = progress_tqdm(range(2), mininterval=0.0, file=io.StringIO())
    assert bar.mininterval == 0.0
    assert list(bar) == [0, 1]


def test_off_mode_disables_every_bar_but_still_iterates(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV_VAR, "off")
    out = io.StringIO()
    bar = progress_tqdm(range(4), desc="toy", file=out)
    assert bar.disable
    assert list(bar) == [0, 1, 2, 3]
    assert out.getvalue() == ""


def test_an_unknown_mode_is_an_error_that_names_the_variable(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV_VAR, "fancy")
    with pytest.raises(ValueError, match=r"REIDBOOK_PROGRESS='fancy'.*auto, text, off"):
        progress_mode()


def test_auto_outside_a_kernel_is_text(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV_VAR, raising=False)
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert progress_mode() == "text"


def test_auto_in_a_kernel_with_ipywidgets_is_a_widget(monkeypatch, in_kernel):
    monkeypatch.delenv(PROGRESS_ENV_VAR, raising=False)
    monkeypatch.setattr(progress, "_widgets_installed", lambda: True)
    assert progress_mode() == "widget"
    bar = progress_tqdm(range(2), disable=True)  # disabled: nothing is displayed outside a real frontend
    assert isinstance(bar, tqdm.notebook.tqdm)


def test_text_wins_in_a_kernel_when_asked_for(monkeypatch, in_kernel):
    monkeypatch.setenv(PROGRESS_ENV_VAR, "text")
    monkeypatch.setattr(progress, "_widgets_installed", lambda: True)
    assert progress_mode() == "text"


@pytest.mark.parametrize("mode", ["", "auto", "text", "off"])
@pytest.mark.parametrize("widgets", [True, False])
def test_choosing_a_bar_never_warns(monkeypatch, in_kernel, mode, widgets):
    """tqdm.auto warns "IProgress not found" in a kernel without ipywidgets; this module must not."""
    monkeypatch.setenv(PROGRESS_ENV_VAR, mode)
    monkeypatch.setattr(progress, "_widgets_installed", lambda: widgets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = progress_tqdm(range(3), disable=True, file=io.StringIO())
        assert list(bar) == [0, 1, 2]
    expected = tqdm.notebook.tqdm if widgets and mode in ("", "auto") else tqdm.std.tqdm
    assert type(bar) is expected
