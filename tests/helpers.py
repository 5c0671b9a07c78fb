"""Shared test helpers: a replaying agent, question lookup, a metrics line without what varies
run to run, and whether a name the docs cite is in the package."""

import dataclasses
import importlib
import inspect
import os
from pathlib import Path

from mgrpo_ref.config import TrainConfig
from mgrpo_ref.world import load_questions

MODULES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "mgrpo_ref").glob("*.py") if p.stem != "__init__")


class Replay:
    """An agent that writes fixed turns, one list per role, in order."""

    def __init__(self, **turns):
        self.turns = {role: list(t) for role, t in turns.items()}

    def act(self, role, contexts):
        return [self.turns[role].pop(0) for _ in contexts]


def one_question(hops):
    """The first evaluation question with ``hops`` hops."""
    return next(q for q in load_questions("eval") if q.n_hops == hops)


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


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie still answers signal 0 until reaped; it runs nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def one_line(stderr: str, noise: tuple[str, ...] = ()) -> str:
    """The single line a fault may print (no traceback, nothing else), leaving out the lines that
    hold any of ``noise`` (a library's warnings, which the run does not print itself)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not any(n in line for n in noise)]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def imported(module: str) -> bool:
    """Whether this process has imported ``module`` (run in a worker process by a test)."""
    import sys

    return module in sys.modules
