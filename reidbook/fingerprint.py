"""Which code a run uses: the ``reidbook`` modules reachable from a few root modules through their imports.

A run's key hashes its config together with the source of these modules only, so adding a paper's model
module, or editing another paper's, leaves every other run's key (and stored result) as it is, while an edit
to any code the run executes retrains it.

How imports are followed (read from the source with :mod:`ast`, wherever they appear, function bodies too):

* ``import reidbook.x.y`` and ``from reidbook.x import y`` where ``y`` is a module: that module;
* ``from reidbook.x import Name`` where ``Name`` is a class, function or constant: the module that *defines*
  it (a package's ``__init__`` that merely re-exports ``Name`` is skipped, so ``from .models import
  Baseline`` depends on ``models/baseline.py``, not on every model the package re-exports);
* a package is executed before any of its modules: its ``__init__`` counts through the whole modules it
  imports for their side effects (``from . import readers`` registers the dataset readers), not through
  the names it re-exports.

Modules that only draw or publish results (:data:`PRESENTATION`) are neither hashed nor followed. Imports made
by name at run time (``importlib``) are not seen: the method registry imports recipes that way, which is why
a run's roots name its recipe's module explicitly.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
from collections.abc import Iterable
from functools import cache
from pathlib import Path

PACKAGE = "reidbook"
#: Modules (and packages, with everything under them) that cannot change a run's numbers.
PRESENTATION = (
    "reidbook.viz", "reidbook.report", "reidbook.paper_numbers", "reidbook.book", "reidbook.progress",
    "reidbook.budgets",
)


def is_presentation(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PRESENTATION)


def _is_ours(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _source_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"cannot find the source of module {module!r}")
    return Path(spec.origin)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{target}" if target else base


def _defining_module(package: str, name: str) -> str:
    """Where ``package.name`` is defined: itself if a module; a class's or function's ``__module__``; else
    (a constant, an object) the module it is imported from."""
    if _is_module(f"{package}.{name}"):
        return f"{package}.{name}"
    owner = getattr(importlib.import_module(package), name, None)
    defined_in = getattr(owner, "__module__", None)
    if (inspect.isclass(owner) or inspect.isfunction(owner)) and isinstance(defined_in, str) \
            and _is_ours(defined_in):
        return defined_in
    return package


@cache
def _imports(module: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(modules ``module`` depends on, whole modules it imports): both within ``reidbook``."""
    path = _source_path(module)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    depends: set[str] = set()
    whole: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_ours(alias.name):
                    depends.add(alias.name)
                    whole.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node.level, node.module)
            if not _is_ours(source):
                continue
            for alias in node.names:
                if alias.name == "*":
                    depends.add(source)
                    continue
                target = _defining_module(source, alias.name)
                depends.add(target)
                if target == f"{source}.{alias.name}":
                    whole.add(target)
    return tuple(sorted(depends)), tuple(sorted(whole))


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def dependency_closure(roots: Iterable[str]) -> list[str]:
    """Every ``reidbook`` module the ``roots`` depend on (roots included), presentation modules excluded,
    in sorted order."""
    seen: set[str] = set()
    pending = [r for r in roots if not is_presentation(r)]
    while pending:
        module = pending.pop()
        if module in seen or is_presentation(module):
            continue
        seen.add(module)
        depends, _ = _imports(module)
        pending.extend(depends)
        for package in _parents(module):  # executed first: its side-effect imports count
            pending.extend(_imports(package)[1])
    return sorted(seen)


def code_fingerprint(roots: Iterable[str]) -> str:
    """SHA-256 of the names and source bytes of :func:`dependency_closure` of ``roots``."""
    digest = hashlib.sha256()
    for module in dependency_closure(roots):
        digest.update(module.encode())
        digest.update(b"\0")
        digest.update(_source_path(module).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()
