"""Which code keys a run (reidbook.fingerprint): a run is retrained when code it executes changes, and only
then. The invalidation rules are checked on a copy of the package, edited step by step, in a subprocess
that imports the copy (``PYTHONPATH`` wins over the editable install)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import reidbook
from reidbook.fingerprint import code_fingerprint, dependency_closure, is_presentation

PACKAGE_DIR = Path(reidbook.__file__).resolve().parent
BASELINE_ROOTS = ("reidbook.experiment", "reidbook.methods.baseline")  # experiment._code of the baseline
IANET_ROOTS = ("reidbook.experiment", "reidbook.methods.ianet")
NEWPAPER_ROOTS = ("reidbook.experiment", "reidbook.methods.newpaper")

NEW_MODEL = '''"""A new paper's network."""
from torch import nn

from .backbones import Backbone


class NewNet(nn.Module):
    def __init__(self, num_classes: int, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.feature_dim, num_classes)
'''
NEW_RECIPE = '''"""A new paper's recipe."""
from ..models.baseline import BaselineCriterion
from ..models.newpaper import NewNet
from .recipe import Recipe
from .registry import register

NEWPAPER = register(Recipe(
    name="newpaper", module=__name__, title="a new paper",
    build_model=lambda backbone, num_classes, profile, options: NewNet(num_classes, backbone),
    build_criterion=lambda model, num_classes, options: BaselineCriterion(num_classes),
))
'''
#: A module of the copy that imports a model through the ``reidbook.models`` package, which re-exports every
#: model: only the module defining the imported name may enter its closure.
PROBE = '''from .models import Baseline
from .data import VISIBLE
'''
COMMENT = "\n# an edit that changes the source, not the behaviour\n"

#: Edits applied one after the other to the copy: (step name, {relative path: text appended}).
STEPS = [
    ("viz", {"viz.py": COMMENT}),
    ("report", {"report.py": COMMENT}),
    ("paper_numbers", {"paper_numbers.py": COMMENT}),
    ("budgets", {"budgets.py": COMMENT}),
    ("newpaper", {"models/newpaper.py": NEW_MODEL, "methods/newpaper.py": NEW_RECIPE, "probe.py": PROBE}),
    ("ianet", {"models/ianet.py": COMMENT}),
    ("models/baseline", {"models/baseline.py": COMMENT}),
    ("losses", {"losses.py": COMMENT}),
    ("engine", {"engine.py": COMMENT}),
]

SCRIPT = r'''
import importlib, json, sys
from pathlib import Path

copy, steps = Path(sys.argv[1]), json.loads(sys.argv[2])
import reidbook.engine  # alone first: does the engine pull in the results store?

out = {"engine_loads_results": "reidbook.results" in sys.modules, "file": reidbook.__file__, "steps": []}
from reidbook.fingerprint import code_fingerprint, dependency_closure

roots = {"baseline": ("reidbook.experiment", "reidbook.methods.baseline"),
         "ianet": ("reidbook.experiment", "reidbook.methods.ianet")}
out["steps"].append(["start", {name: code_fingerprint(r) for name, r in roots.items()}])
for name, edits in steps:
    for relative, text in edits.items():
        with open(copy / "reidbook" / relative, "a", encoding="utf-8") as file:
            file.write(text)
    importlib.invalidate_caches()
    if name == "newpaper":
        roots["newpaper"] = ("reidbook.experiment", "reidbook.methods.newpaper")
        out["newpaper_closure"] = dependency_closure(roots["newpaper"])
        out["probe_closure"] = dependency_closure(["reidbook.probe"])
        from reidbook import methods
        out["names"] = methods.names()
    out["steps"].append([name, {n: code_fingerprint(r) for n, r in roots.items()}])
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def edited_copy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Fingerprints of a copy of the package before and after each of :data:`STEPS` (one subprocess)."""
    root = tmp_path_factory.mktemp("copy")
    real = {"baseline": code_fingerprint(BASELINE_ROOTS), "ianet": code_fingerprint(IANET_ROOTS)}
    shutil.copytree(PACKAGE_DIR, root / "reidbook", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(root), json.dumps(STEPS)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve() == (root / "reidbook" / "__init__.py").resolve()  # the copy ran
    out["by_step"], out["real"] = dict(out["steps"]), real
    return out


def fingerprints_around(out: dict, step: str) -> tuple[dict, dict]:
    """The fingerprints just before and just after ``step``."""
    names = [name for name, _ in out["steps"]]
    i = names.index(step)
    return out["steps"][i - 1][1], out["steps"][i][1]


def test_the_copy_gives_the_real_packages_fingerprints_before_any_edit(edited_copy):
    start = edited_copy["by_step"]["start"]
    assert start == edited_copy["real"]  # computed here just before copying (the package is being edited)
    assert start["baseline"] != start["ianet"]


@pytest.mark.parametrize("step", ["viz", "report", "paper_numbers", "budgets"])
def test_editing_presentation_code_changes_no_run(edited_copy, step):
    before, after = fingerprints_around(edited_copy, step)
    assert after == before


def test_a_new_paper_leaves_the_other_runs_alone(edited_copy):
    before, after = fingerprints_around(edited_copy, "newpaper")
    assert after["baseline"] == before["baseline"] and after["ianet"] == before["ianet"]
    # the new modules were seen: the new recipe is registered and its run depends on its model module
    assert "newpaper" in edited_copy["names"]
    closure = edited_copy["newpaper_closure"]
    assert {"reidbook.methods.newpaper", "reidbook.models.newpaper", "reidbook.models.baseline"} \
        <= set(closure)
    assert after["newpaper"] not in (after["baseline"], after["ianet"])


def test_editing_another_papers_model_retrains_only_that_paper(edited_copy):
    before, after = fingerprints_around(edited_copy, "ianet")
    assert after["baseline"] == before["baseline"] and after["newpaper"] == before["newpaper"]
    assert after["ianet"] != before["ianet"]


@pytest.mark.parametrize("step", ["models/baseline", "losses", "engine"])
def test_editing_code_the_baseline_executes_retrains_it(edited_copy, step):
    before, after = fingerprints_around(edited_copy, step)
    assert after["baseline"] != before["baseline"]
    assert after["ianet"] != before["ianet"]  # IANet is the baseline's network with IA blocks


def test_a_name_imported_through_a_package_depends_on_its_defining_module_only(edited_copy):
    closure = set(edited_copy["probe_closure"])
    assert {"reidbook.probe", "reidbook.models.baseline", "reidbook.losses"} <= closure
    # reidbook.models re-exports IANet and QAConvNet too: the probe does not use them
    assert closure.isdisjoint({"reidbook.models.ianet", "reidbook.models.qaconv", "reidbook.models"})
    assert "reidbook.data.records" in closure  # the constant VISIBLE, re-exported by reidbook.data


# ------------------------------------------------------------------------------ the closure, in process
def test_the_baselines_closure_follows_imports_and_package_side_effects():
    closure = dependency_closure(BASELINE_ROOTS)
    assert closure == sorted(closure)
    assert {"reidbook.experiment", "reidbook.methods.baseline", "reidbook.models.baseline",
            "reidbook.losses", "reidbook.engine", "reidbook.fingerprint", "reidbook.results"} <= set(closure)
    # reidbook.data runs `from . import readers` (registration by import): the readers count
    assert {"reidbook.data.readers", "reidbook.data.readers.bbox_folders"} <= set(closure)
    # names re-exported by reidbook.data resolve to their defining modules
    assert {"reidbook.data.records", "reidbook.data.registry"} <= set(closure)


def test_the_baselines_closure_holds_no_other_paper_and_no_presentation_module():
    closure = dependency_closure(BASELINE_ROOTS)
    assert not any(module.startswith(("reidbook.models.ianet", "reidbook.models.qaconv",
                                      "reidbook.methods.ianet", "reidbook.methods.qaconv"))
                   for module in closure)
    assert not any(is_presentation(module) for module in closure)
    # the baseline's recipe imports its paper numbers, which key nothing
    recipe_imports = _imported_modules(PACKAGE_DIR / "methods" / "baseline.py", "reidbook.methods")
    assert "reidbook.paper_numbers" in recipe_imports
    assert "reidbook.paper_numbers" not in closure


def test_presentation_modules_are_neither_roots_nor_followed():
    assert dependency_closure(["reidbook.viz", "reidbook.report"]) == []
    assert is_presentation("reidbook.viz") and is_presentation("reidbook.viz.panels")
    assert not is_presentation("reidbook.vizier") and not is_presentation("reidbook.engine")
    assert "reidbook.viz" not in dependency_closure(["reidbook.report", "reidbook.results"])


def test_the_ianet_run_depends_on_its_model_and_recipe():
    closure = set(dependency_closure(IANET_ROOTS))
    assert {"reidbook.models.ianet", "reidbook.methods.ianet", "reidbook.models.baseline"} <= closure
    assert "reidbook.models.qaconv" not in closure


def test_the_fingerprint_is_a_sha256_of_the_closure():
    fingerprint = code_fingerprint(BASELINE_ROOTS)
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert fingerprint == code_fingerprint(reversed(BASELINE_ROOTS))  # the order of roots does not matter


# --------------------------------------------------------------------------- no engine -> results cycle
def _imported_modules(path: Path, package: str) -> set[str]:
    """Modules named by the imports of the module at ``path`` in ``package`` (relative imports made
    absolute; ``from x import y`` names both ``x`` and ``x.y``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            source = ".".join(part for part in (base if node.level else "", node.module) if part)
            found |= {source} | {f"{source}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_the_engine_does_not_import_the_results_store(edited_copy):
    assert "reidbook.results" not in _imported_modules(PACKAGE_DIR / "engine.py", "reidbook")
    assert "reidbook.results" not in dependency_closure(["reidbook.engine"])
    assert not edited_copy["engine_loads_results"]  # importing reidbook.engine alone, in a fresh process
