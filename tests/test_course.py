"""The course as a whole: the glossary names what the package has, every notebook links it,
and every notebook carries exercises whose solutions the suite runs (nbval executes every
code cell, the collapsed solutions included; here we check that they are there and check
something).

Fast: reads the notebooks' JSON and the glossary, imports the package, loads no model; runs
notebook 06 whole on the committed comparison, which it only reads.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from helpers import resolves

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "docs" / "glossary.md"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def code_names(markdown: str) -> list[str]:
    """The backticked names in the last column of the glossary's tables."""
    names = []
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            last = line.strip().strip("|").split("|")[-1]
            names += re.findall(r"`([^`]+)`", last)
    return names


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
        following = []  # the code cells up to the next markdown cell
        for cell in nb[i + 1:]:
            if cell["cell_type"] != "code":
                break
            following.append(cell)
        solutions = [c for c in following if "solution" in c["metadata"].get("tags", [])]
        assert len(solutions) == 1, f"{path.name}: exercise at cell {i} has {len(solutions)} tagged solutions"
        hidden = solutions[0]["metadata"].get("jupyter", {})
        assert hidden.get("source_hidden") is True and hidden.get("outputs_hidden") is True, \
            f"{path.name}: the solution of the exercise at cell {i} is not collapsed with its outputs hidden"
        assert checks_something(source(solutions[0])), \
            f"{path.name}: the solution of the exercise at cell {i} checks nothing"


def checks_something(code: str) -> bool:
    """Whether a cell holds a check that can fail: an ``assert`` on a name (not on constants
    alone), a call of ``check`` (course.check) or of an ``assert_...`` function
    (``torch.testing.assert_close``)."""
    tree = ast.parse("\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and any(isinstance(n, ast.Name) for n in ast.walk(node.test)):
            return True
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name == "check" or name.startswith("assert"):
                return True
    return False


def test_a_solution_that_asserts_only_constants_checks_nothing():
    assert not checks_something("print('done')  # assert nothing\nassert True\nassert 0.5**8 < 0.01")
    assert checks_something("x = 1\nassert x == 1")
    assert checks_something("%matplotlib inline\ncheck(my_function)")
    assert checks_something("torch.testing.assert_close(a, b)")


WRITING = [p for p in NOTEBOOKS if p.name[:2] in ("01", "02", "03", "04")]  # the notebooks on the math


@pytest.mark.parametrize("path", WRITING, ids=lambda p: p.stem)
def test_every_notebook_on_the_math_makes_the_learner_write_a_piece_of_it(path):
    """An empty function to fill in, a check cell that tests it against the package, and a
    solution that passes the same check."""
    nb = cells(path)
    tagged = lambda tag: [i for i, c in enumerate(nb) if tag in c["metadata"].get("tags", [])]  # noqa: E731
    blanks = tagged("exercise")
    assert blanks, f"{path.name}: no exercise cell for the learner to write in"
    for i in blanks:
        assert "raise NotImplementedError" in source(nb[i]), f"{path.name}: cell {i} is not left for the learner"
        assert i + 1 in tagged("check") and "check(" in source(nb[i + 1]), f"{path.name}: cell {i} has no check under it"
        solution = nb[i + 2]
        assert "solution" in solution["metadata"].get("tags", []) and "assert check(" in source(solution), \
            f"{path.name}: the solution of cell {i} does not pass the check"


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


# ---------------------------------------------------------------------------
# Shape comments: only the glossary's dimension letters


SHAPE_ITEM = re.compile(r"^(\.\.\.|\w+'?(=\d+)?(\s*[*+\-/]\s*\w+)*)$")  # "T", "B*K*D", "T-1", "M=2", "N'", "..."


def glossary_letters() -> set[str]:
    """The letters of the glossary's "Dimension letters" table (``m, t`` is two)."""
    section = GLOSSARY.read_text().split("## Dimension letters", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:]
    return {letter.strip() for row in rows for letter in row.split(",")}


def shape_comments(code: str) -> list[str]:
    """The comments of ``code`` that read as a shape: an opening ``(``, then comma-separated
    items of names, numbers and ``* + - /`` (``# (B*K, T)``, ``# (N,)``, ``# (...)``)."""
    found = []
    for line in code.splitlines():
        comment = re.search(r"#\s*\(([^()]*)\)", line)
        if comment is None or "#" in line[:comment.start()] or _in_string(line[:comment.start()]):
            continue
        items = [item.strip() for item in comment.group(1).split(",") if item.strip()]
        if items and all(SHAPE_ITEM.match(item) for item in items):
            found.append(comment.group(0))
    return found


def _in_string(prefix: str) -> bool:
    """Whether a '#' after ``prefix`` sits inside a string literal (an odd count of quotes)."""
    return prefix.count('"') % 2 == 1 or prefix.count("'") % 2 == 1


def unknown_letters(comment: str, letters: set[str]) -> set[str]:
    inside = comment[comment.index("(") + 1:comment.rindex(")")]
    return set(re.findall(r"[A-Za-z_]\w*", inside)) - letters


def every_source() -> list[tuple[str, str]]:
    """(where, code) of every module of the package and the benchmarks, and every notebook code cell."""
    sources = [(p.relative_to(ROOT).as_posix(), p.read_text())
               for p in sorted([*(ROOT / "mgrpo_ref").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")])]
    for path in NOTEBOOKS:
        sources += [(f"{path.name} cell {i}", source(c)) for i, c in enumerate(cells(path)) if c["cell_type"] == "code"]
    return sources


def test_every_shape_comment_uses_only_the_glossary_letters():
    letters = glossary_letters()
    assert {"B", "K", "D", "N", "M", "T", "m", "t"} <= letters
    checked, wrong = 0, []
    for where, code in every_source():
        for comment in shape_comments(code):
            checked += 1
            if unknown_letters(comment, letters):
                wrong.append(f"{where}: {comment}")
    assert checked > 100, "the shape comments were not found"
    assert not wrong, "shape comments with letters the glossary does not define:\n" + "\n".join(wrong)


def test_the_shape_comment_check_can_fail():
    letters = glossary_letters()
    code = ('x = f(y)  # (B*K, T)  Eq. (1)\nz = g(x)  # (n, T-1)\ns = "# (q, r)"\nw = 1  # (the cause) of it\n'
            "v = h(w)  # (Q=2, T')\n")
    comments = shape_comments(code)
    assert comments == ["# (B*K, T)", "# (n, T-1)", "# (Q=2, T')"]
    assert [unknown_letters(c, letters) for c in comments] == [set(), {"n"}, {"Q"}]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_cell_that_shows_the_package_code_has_its_output_checked(path):
    """A cell printing the package's lines (course.show_code) stores that text; nbval compares it
    with a fresh run only in cells marked NBVAL_CHECK_OUTPUT, so an edit to the package that the
    stored notebook does not show fails the suite."""
    unchecked = [i for i, c in enumerate(cells(path)) if c["cell_type"] == "code" and "show_code(" in source(c)
                 and "# NBVAL_CHECK_OUTPUT" not in source(c)]
    assert not unchecked, f"{path.name}: cells {unchecked} print package code without NBVAL_CHECK_OUTPUT"


def test_notebook_06_s_statements_hold_on_the_committed_comparison(monkeypatch):
    """The suite runs notebook 06 at smoke size (nbval, MGRPO_SMOKE=1), where its statements
    about the committed comparison (the cells under ``if not SMOKE``) are skipped; here it runs
    whole on the committed results, which it only reads (no training: seconds)."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("MGRPO_SMOKE", raising=False)  # the kernel inherits this process's environment
    path = ROOT / "notebooks" / "06_full_training_run.ipynb"
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # raises on a failed cell
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "mgrpo minus its base, greedy" in outputs  # the statements' cell ran its checks
