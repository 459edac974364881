"""The registry of recipes. Recipe modules of this package are imported by name when the registry is first
asked, so no shared module lists the methods (and a run's code fingerprint follows only its own recipe)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from .recipe import Recipe

_RECIPES: dict[str, Recipe] = {}
_INFRASTRUCTURE = {"registry", "recipe"}


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` under its name; a second recipe with the same name is an error."""
    existing = _RECIPES.get(recipe.name)
    if existing is not None and existing is not recipe:
        raise ValueError(f"a method named {recipe.name!r} is already registered (by {existing.module})")
    _RECIPES[recipe.name] = recipe
    return recipe


def _discover() -> None:
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name not in _INFRASTRUCTURE:
            importlib.import_module(f"{__package__}.{module.name}")


def names() -> list[str]:
    """Every registered method's name, sorted."""
    _discover()
    return sorted(_RECIPES)


def get(name: str) -> Recipe:
    """The recipe registered as ``name``.

    Raises:
        KeyError: naming the registered methods when ``name`` is not one of them.
    """
    _discover()
    if name not in _RECIPES:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_RECIPES))}")
    return _RECIPES[name]
