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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_keep_each_progress_bar_on_one_line(path):
    """`make notebooks` merges a cell's consecutive stream outputs and resolves carriage
    returns: a progress bar is stored as its final line, not as dozens of output chunks."""
    for i, cell in enumerate(cells(path)):
        names = [o.get("name") for o in cell.get("outputs", [])]  # None for a display output
        repeated = [a for a, b in zip(names, names[1:]) if a is not None and a == b]
        assert not repeated, f"{path.name}, cell {i}: consecutive {repeated[0]} chunks"
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream":
                assert "\r" not in "".join(o["text"]), f"{path.name}, cell {i}: an unresolved carriage return"


SET_UP = ROOT / ".venv" / ".installed"


@pytest.mark.skipif(not SET_UP.exists() or SET_UP.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime,
                    reason="make lab would first (re)build .venv: run `make setup` first")
def test_make_lab_serves_the_course_with_the_project_kernel(tmp_path):
    """`make lab` registers the kernel and starts JupyterLab on the repository: its API lists
    the kernel and the notebooks. Started headless on a free port, then stopped; the kernel is
    registered in a temporary Jupyter data directory, not the user's."""
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "course-test"
    args = f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token} --ServerApp.port_retries=0"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    lab = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=ROOT, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def get(api):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{api}?token={token}", timeout=5) as reply:
                return json.loads(reply.read())

        deadline = time.monotonic() + 180
        while True:
            try:
                specs = get("kernelspecs")
                break
            except OSError:
                assert lab.poll() is None, "make lab exited"
                assert time.monotonic() < deadline, "JupyterLab did not answer within 3 minutes"
                time.sleep(1)
        assert "mgrpo-ref" in specs["kernelspecs"]
        listed = {item["name"] for item in get("contents/notebooks")["content"]}
        assert {p.name for p in NOTEBOOKS} <= listed
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(timeout=30)


NOISE = ("Warning", "Loading weights", "gemm_4bit_forward", "warnings.warn")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_carry_no_library_noise(path):
    """What the libraries print while loading (a progress bar per load, an optional-kernel
    note, deprecation and tqdm warnings) is silenced at its source (policy.quiet_loading)."""
    for i, cell in enumerate(cells(path)):
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream" and o["name"] == "stderr":
                text = "".join(o["text"])
                assert not any(n in text for n in NOISE), f"{path.name}, cell {i}: {text[:200]}"
