"""Learners on a cluster (cluster.py, store_pg.py), on a local Ray cluster of a head and two worker
nodes and a PostgreSQL server, all started here and on this machine (docs/cluster.md):

* a run on the cluster computes what a local run computes with the same seed: the same metrics,
  store rows and adapter weights;
* the two learners' actors run on two different nodes;
* only text and scalars cross between the controller and the actors;
* a worker node lost mid-run ends the run in one line, and the run resumes to the same store;
* the database unreachable at start, or lost mid-run, ends the run in one line and loses no
  committed row; the run resumes to the same store.

Each run is the tiny base at a few small steps. The Ray cluster declares one CPU per worker node
and none on the head, so each learner's actor needs a worker node of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mgrpo_ref import rundir, train
from mgrpo_ref.rundir import deterministic
from mgrpo_ref.store import open_store

import helpers

SMALL = ["questions_per_step=2", "rollouts=2", "d_max=2", "eval_questions=4", "eval_every=2", "checkpoint_every=1",
         "keep_checkpoints=0", "max_new_tokens=12", "microbatch=8", "tensorboard=false"]
STEPS = 3
LEARNERS = ["main", "sub"]


def test_a_local_run_imports_neither_ray_nor_psycopg():
    code = ("import sys, mgrpo_ref.train, mgrpo_ref.worker, mgrpo_ref.rundir, mgrpo_ref.store; "
            "print(sorted(m for m in ('ray', 'psycopg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_only_text_and_scalars_pass_the_network_check():
    from mgrpo_ref.cluster import check_text_and_scalars
    from mgrpo_ref.episode import Limits

    check_text_and_scalars(("train", 3, [{"text": "a", "reward": 0.5, "ok": True, "none": None}], Limits()))
    for bad, where in ((torch.zeros(2), "message[1]"), (b"\x00raw", "message[1]"),
                       ({"adapter": {"w": torch.ones(1)}}, "message[1]['adapter']['w']")):
        with pytest.raises(TypeError, match="only text and scalars cross the network") as info:
            check_text_and_scalars(("save", bad))
        assert str(info.value).startswith(where)


# -- the cluster ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tiny_base):
    return tiny_base


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the cluster tests need the extra .[cluster]")
    from ray.cluster_utils import Cluster

    fast_failure = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                    "health_check_failure_threshold": 4}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "_system_config": fast_failure})
    for _ in LEARNERS:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def command(*args):
    return subprocess.Popen([sys.executable, "-m", "mgrpo_ref.train", "--quiet", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def one_line(stderr: str) -> str:
    """The run's one line; platformdirs' warning about XDG_RUNTIME_DIR (two lines, from the
    cluster packages) is not the run's."""
    return helpers.one_line(stderr, noise=("Warning", "user_runtime_dir"))


def outcome(run: Path, cfg_store: str = "") -> dict:
    """What a run computed: metrics and store rows without clocks and memory."""
    store = open_store(cfg_store or run / rundir.STORE, readonly=True)
    try:
        steps = sorted(store.complete_steps(LEARNERS))
        stats = [deterministic(s) for s in store.learner_stats()]
        rows = [store.rollouts(s) for s in steps]
    finally:
        store.close()
    metrics = [deterministic(r) for r in rundir.read_jsonl(run / rundir.METRICS)]
    return {"steps": steps, "stats": stats, "rollouts": rows, "metrics": metrics}


def weights(run: Path) -> dict:
    from safetensors.torch import load_file
    last = rundir.latest_checkpoint(run)
    return {learner: load_file(last / learner / "adapter_model.safetensors") for learner in LEARNERS}


def wait_for(condition, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended first: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """A local run (worker processes, SQLite): what every cluster run must compute."""
    run = tmp_path_factory.mktemp("local") / "run"
    code, err = finish(command("--run-dir", run, f"base={base}", f"steps={STEPS}", *SMALL))
    assert code == 0, err
    return run


@pytest.fixture(scope="module")
def ray_run(base, ray_cluster, postgres, tmp_path_factory):
    """The same run with cluster=ray and a PostgreSQL store, in this process (the Ray driver),
    every message's network check recorded."""
    from mgrpo_ref import cluster

    checked, check = [], cluster.check_text_and_scalars

    def recorded(value, where="message"):
        check(value, where)
        checked.append(where)

    run, url = tmp_path_factory.mktemp("ray") / "run", postgres.database()
    cluster.check_text_and_scalars = recorded
    try:
        code = train.main(["--quiet", "--run-dir", str(run), f"base={base}", f"steps={STEPS}", *SMALL,
                           "cluster=ray", f"store={url}"])
    finally:
        cluster.check_text_and_scalars = check
    assert code == 0
    return run, url, checked


@pytest.mark.cluster
def test_a_run_on_the_cluster_computes_what_a_local_run_computes(ray_run, reference):
    run, url, _ = ray_run
    assert not (run / rundir.STORE).exists()  # the store is the database
    assert outcome(run, url) == outcome(reference)
    assert outcome(run, url)["steps"] == list(range(1, STEPS + 1))
    mine, theirs = weights(run), weights(reference)
    for learner in LEARNERS:
        assert mine[learner].keys() == theirs[learner].keys()
        for name, tensor in mine[learner].items():
            assert torch.equal(tensor, theirs[learner][name]), (learner, name)


@pytest.mark.cluster
def test_each_learner_runs_on_a_node_of_its_own(ray_run, ray_cluster):
    import ray

    run, _, _ = ray_run
    where = json.loads((run / rundir.WORKERS).read_text())
    workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1}
    assert set(where) == set(LEARNERS)
    nodes = {where[learner]["node_id"] for learner in LEARNERS}
    assert len(nodes) == 2 and nodes <= workers  # two worker nodes, never the head


@pytest.mark.cluster
def test_a_cluster_without_a_node_for_each_learner_is_refused_in_one_line(ray_cluster, base, monkeypatch, tmp_path):
    from mgrpo_ref import cluster
    from mgrpo_ref.config import TrainConfig

    monkeypatch.setattr(cluster, "PLACEMENT_TIMEOUT_S", 2.0)
    cfg = TrainConfig(base=str(base), cluster="ray")
    with pytest.raises(ValueError, match=r"puts each of the 3 learners on a node of its own, but the Ray cluster "
                                         r"has 2 node\(s\) with a CPU after 2 s: add nodes"):
        cluster.start_workers(["a", "b", "c"], cfg, tmp_path, None)


@pytest.mark.cluster
def test_every_message_and_answer_was_checked_to_be_text_and_scalars(ray_run):
    _, _, checked = ray_run
    sent = {(kind, learner) for kind in ("act", "reseed", "train", "save", "chat_format") for learner in LEARNERS
            if f"the {kind!r} message to the {learner} worker" in checked}
    # every learner is reseeded, trains and saves; the main agent acts (the sub-agent only when called)
    assert {(kind, learner) for kind in ("reseed", "train", "save") for learner in LEARNERS} | {("act", "main")} <= sent
    for kind, learner in sent:
        assert f"the {learner} worker's answer to {kind!r}" in checked


@pytest.mark.cluster
def test_a_worker_node_lost_mid_run_is_one_line_and_the_run_resumes(base, ray_cluster, postgres, reference, tmp_path):
    run, url = tmp_path / "run", postgres.database()
    proc = command("--run-dir", run, f"base={base}", f"steps={STEPS}", *SMALL, "cluster=ray",
                   f"ray_address={ray_cluster.address}", f"store={url}")
    wait_for(lambda: (run / rundir.WORKERS).exists() and rundir.latest_checkpoint(run) is not None, proc)
    main_node = json.loads((run / rundir.WORKERS).read_text())["main"]["node_id"]
    node = next(n for n in ray_cluster.worker_nodes if n.node_id == main_node)
    ray_cluster.remove_node(node)
    code, err = finish(proc)
    line = one_line(err)
    assert code == 1 and "the main worker" in line and "died while" in line
    assert line.endswith(f"continue with: python -m mgrpo_ref.train --resume {run}")
    ray_cluster.add_node(num_cpus=1)  # the cluster has a node for each learner again
    ray_cluster.wait_for_nodes()
    code, err = finish(command("--resume", run))
    assert code == 0, err
    assert outcome(run, url) == outcome(reference)


@pytest.mark.cluster
def test_a_database_unreachable_at_start_is_one_line_and_leaves_nothing(base, tmp_path, capsys):
    run = tmp_path / "run"
    code = train.main(["--quiet", "--run-dir", str(run), f"base={base}", "steps=1", *SMALL,
                       f"store=postgresql://postgres@/absent?host={tmp_path}"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("error: cannot open postgresql://postgres@/absent")
    assert not run.exists()


@pytest.mark.cluster
def test_a_database_lost_mid_run_is_one_line_and_loses_no_committed_row(base, postgres, reference, tmp_path):
    run, url = tmp_path / "run", postgres.database()
    proc = command("--run-dir", run, f"base={base}", f"steps={STEPS}", *SMALL, f"store={url}")
    wait_for(lambda: rundir.latest_checkpoint(run) is not None, proc)
    postgres.stop()
    try:
        code, err = finish(proc)
    finally:
        postgres.start()
    line = one_line(err)
    assert code == 1 and "postgresql://" in line and "continue with: python -m mgrpo_ref.train --resume" in line
    done = rundir.checkpoint_step(rundir.latest_checkpoint(run))
    kept = outcome(run, url)
    assert set(range(1, done + 1)) <= set(kept["steps"])  # every step committed before the loss is there
    assert kept["rollouts"][:done] == outcome(reference)["rollouts"][:done]
    code, err = finish(command("--resume", run))
    assert code == 0, err
    assert outcome(run, url) == outcome(reference)
