"""The course as a whole: the glossary names what the package has, every notebook links it,
and every notebook carries exercises whose solutions the suite runs (nbval executes every
code cell, the collapsed solutions included; here we check that they are there and check
something).

Fast: reads the notebooks' JSON and the glossary, imports the package, loads no model.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

from mgrpo_ref.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "docs" / "glossary.md"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MODULES = [p.stem for p in (ROOT / "mgrpo_ref").glob("*.py") if p.stem != "__init__"]


def code_names(markdown: str) -> list[str]:
    """The backticked names in the last column of the glossary's tables."""
    names = []
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            last = line.strip().strip("|").split("|")[-1]
            names += re.findall(r"`([^`]+)`", last)
    return names


def resolves(name: str) -> bool:
    """Whether a glossary name is in the package: a config field (``d_max``, ``reward.b2``),
    ``module.attr[.attr]`` or ``Class.attr`` of any module's class; a call's arguments are ignored."""
    name = name.split("(")[0]
    config = TrainConfig()
    head, *rest = name.split(".")
    if head in {f.name for f in dataclasses.fields(TrainConfig)}:
        value = getattr(config, head)
        if all(has(value, part) for part in rest):
            return True
    if head in MODULES:  # "alignment" is a config field and a module
        obj = importlib.import_module(f"mgrpo_ref.{head}")
        for part in rest:
            if not has(obj, part):
                return False
            obj = getattr(obj, part, None)
        return True
    for module in MODULES:  # Class.attr, the class in any module
        cls = getattr(importlib.import_module(f"mgrpo_ref.{module}"), head, None)
        if inspect.isclass(cls) and all(has(cls, part) for part in rest):
            return True
    return False


def has(obj, name: str) -> bool:
    """An attribute, or a dataclass field (which a class without a default does not carry)."""
    return hasattr(obj, name) or name in getattr(obj, "__dataclass_fields__", {})


def test_every_name_in_the_glossary_is_in_the_package():
    names = code_names(GLOSSARY.read_text())
    assert len(names) > 30
    missing = [n for n in names if not resolves(n)]
    assert not missing, f"glossary names the package does not have: {missing}"


def test_the_name_check_can_fail():
    assert resolves("d_max") and resolves("reward.b2") and resolves("objective.k3_kl")
    assert resolves("Policy.token_logprobs(reference=True)") and resolves("PolicyBatch.token_weights")
    assert not resolves("reward.b9") and not resolves("objective.k4_kl") and not resolves("Episode.nothing")
    assert not resolves("no_such_field")


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_links_the_glossary_in_its_first_cell(path):
    assert "](../docs/glossary.md)" in source(cells(path)[0])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_exercises_each_with_a_collapsed_solution_that_checks_itself(path):
    nb = cells(path)
    exercises = [i for i, c in enumerate(nb) if c["cell_type"] == "markdown" and "**Exercise" in source(c)]
    assert len(exercises) >= 2, f"{path.name}: {len(exercises)} exercises"
    for i in exercises:
        solution = nb[i + 1]
        assert solution["cell_type"] == "code" and "solution" in solution["metadata"].get("tags", []), \
            f"{path.name}: the cell after exercise at cell {i} is not a tagged solution"
        assert solution["metadata"].get("jupyter", {}).get("source_hidden") is True  # collapsed in JupyterLab
        assert "assert" in source(solution), f"{path.name}: the solution at cell {i + 1} checks nothing"


def test_the_notebooks_are_numbered_in_reading_order():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(NOTEBOOKS) + 1))
    for path in NOTEBOOKS:  # the title's number is the file's
        assert source(cells(path)[0]).startswith(f"# {path.name[:2]} ·"), path.name
