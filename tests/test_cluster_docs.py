"""docs/cluster.md's rehearsal on one machine, run as written: a Ray cluster of three nodes
started with `ray start`, a PostgreSQL server from `python -m mgrpo_ref.cluster database`, a
two-step run on them, its resume, and both stopped. Only the run's and the database's
directories move, from runs/ to a temporary directory."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def rehearsal() -> str:
    text = (ROOT / "docs" / "cluster.md").read_text()
    section = text.split("## Rehearsing on one machine", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.mark.cluster
def test_the_rehearsal_on_one_machine_runs_as_written(tmp_path):
    pytest.importorskip("ray", reason="the cluster tests need the extra .[cluster]")
    script = rehearsal()
    assert "cluster=ray" in script and "--resume runs/cluster-demo" in script
    script = script.replace("runs/", f"{tmp_path}/runs/")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "cluster-demo"
    assert "run directory: " in proc.stdout
    where = json.loads((run / "workers.json").read_text())
    assert where["main"]["node_id"] != where["sub"]["node_id"]
    assert not (run / "store.sqlite").exists() and (tmp_path / "runs" / "pg").is_dir()
    assert not subprocess.run(["pgrep", "-f", f"{tmp_path}/runs/pg"], capture_output=True).stdout  # stopped


def test_the_store_benchmark_table_in_the_docs_is_the_committed_one():
    table = (ROOT / "benchmarks" / "results" / "store.md").read_text()
    result = json.loads((ROOT / "benchmarks" / "results" / "store.json").read_text())
    assert table in (ROOT / "docs" / "cluster.md").read_text()
    assert {r["writers"] for rows in result["results"].values() for r in rows} == {2, 8, 32}
    assert result["command"].startswith("python benchmarks/bench_store.py")
