"""Learners on several hosts: each learner's worker a Ray actor on a node of its own (cluster=ray).

docs/paper.md section 6: the paper trains its main agent and its sub-agents on separate
servers that share only statistics. With ``cluster=ray`` the controller (this process) is a
Ray driver and each learner's worker (worker.py's ``LearnerWorker``, unchanged) lives in a Ray
actor. The actors are placed by a placement group of one bundle per learner (a CPU, and a GPU
when the cluster has one per learner) with the STRICT_SPREAD strategy, so no two learners
share a node. Each actor answers the messages of the pipe protocol (act, reseed, train, save,
chat_format) through ``LearnerWorker.answer``; ``RayWorkerHandle`` is the controller's end,
with the interface of ``worker.WorkerHandle``.

What crosses the network is what crosses the pipe on one machine: text (contexts, turns,
episodes) and scalars (statistics). ``check_text_and_scalars`` checks every message and
every answer on its way, so a tensor, an array or raw bytes never travel: a learner's adapter,
parameters and gradients stay on its node, and its checkpoints are written from there into
the run directory, which every node sees at the same path (a shared file system). The learners'
store is a PostgreSQL database both nodes reach (``store=postgresql://...``, store_pg.py).

An actor uses every core its node gives the process (``os.sched_getaffinity``), as a local
worker uses torch's default. A node that leaves the cluster mid-run ends the run in one line
(``worker.WorkerDied``), and ``--resume`` goes on from the last checkpoint once the cluster has
two nodes again. Ray is imported only here, and only when cluster=ray asks for it
(``pip install -e '.[cluster]'``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import asdict
from pathlib import Path

from .cli import first_line
from .config import TrainConfig
from .worker import WorkerDied, failure

PLACEMENT_TIMEOUT_S = 60.0
"""How long the learners' placement may wait for nodes before the run is refused."""
PLAIN = (str, int, float, bool, type(None), Path)
"""What crosses the network as it is: text, numbers, flags, nothing, and paths (text)."""


def check_text_and_scalars(value, where: str = "message") -> None:
    """Refuse (``TypeError`` naming the place) anything but text and scalars, in lists,
    tuples, dicts and dataclasses of them: what may cross the network between nodes."""
    if isinstance(value, PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_text_and_scalars(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text_and_scalars(key, f"{where} key")
            check_text_and_scalars(item, f"{where}[{key!r}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            check_text_and_scalars(getattr(value, f.name), f"{where}.{f.name}")
    else:
        raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__name__}: only text and scalars "
                        "cross the network between nodes")


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError("cluster=ray needs the ray package: pip install -e '.[cluster]'") from None
    return ray


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` ("": RAY_ADDRESS, else a new one on this machine),
    unless this process is already a driver of one."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


class _LearnerActor:
    """A learner's worker inside a Ray actor (``ray.remote`` is applied in ``start_workers``)."""

    def __init__(self, learner: str, cfg_dict: dict, run_dir: str, checkpoint: str | None, cwd: str):
        import torch

        from .worker import LearnerWorker

        self.failed = None
        try:
            if not Path(cwd).is_dir():
                raise FileNotFoundError(f"this node has no directory {cwd}, the controller's working directory: "
                                        "cluster=ray needs the project at the same path on every node")
            os.chdir(cwd)  # relative paths (the base, the run directory) read as the controller reads them
            torch.set_num_threads(len(os.sched_getaffinity(0)))
            self.worker = LearnerWorker(learner, TrainConfig.from_dict(cfg_dict), Path(run_dir),
                                        Path(checkpoint) if checkpoint else None)
        except Exception:
            import traceback
            self.failed = traceback.format_exc()

    def ready(self) -> tuple:
        """("ok", (node id, pid)) once loaded, or ("error", traceback)."""
        import ray
        if self.failed:
            return ("error", self.failed)
        return ("ok", (ray.get_runtime_context().get_node_id(), os.getpid()))

    def answer(self, message: tuple) -> tuple:
        return self.worker.answer(message)


class _Placement:
    """The learners' placement group, removed once (``release``)."""

    def __init__(self, group):
        self.group = group

    def release(self) -> None:
        if self.group is not None:
            from ray.util import remove_placement_group
            try:
                remove_placement_group(self.group)
            except Exception:  # the cluster is gone already: nothing is left to release
                pass
            self.group = None


def start_workers(learners: list[str], cfg: TrainConfig, run_dir: Path, checkpoint: Path | None) -> dict:
    """One actor per learner, each on a node of its own; learner -> ``RayWorkerHandle``.

    Refused in one line (``ValueError``) when the cluster cannot give every learner a node of
    its own within ``PLACEMENT_TIMEOUT_S``."""
    ray = _ray()
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    connect(cfg.ray_address)
    # Ray hides every GPU from an actor that asks for none: on a cluster with a GPU per learner,
    # each learner's bundle takes one
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= len(learners) else 0
    bundle = {"CPU": 1, "GPU": 1} if gpus else {"CPU": 1}
    group = placement_group([bundle for _ in learners], strategy="STRICT_SPREAD", name="mgrpo-learners")
    ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
    placement = _Placement(group)
    if not ready:
        placement.release()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive") and all(n.get("Resources", {}).get(k, 0) >= v
                                                                         for k, v in bundle.items()))
        raise ValueError(f"cluster=ray puts each of the {len(learners)} learners on a node of its own, but the "
                         f"Ray cluster has {nodes} node(s) with {' and '.join(f'a {k}' for k in bundle)} after "
                         f"{PLACEMENT_TIMEOUT_S:.0f} s: add nodes (ray start --address=...) or free them")
    actor_class = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(_LearnerActor)
    handles = {}
    try:
        for i, learner in enumerate(learners):
            actor = actor_class.options(
                name=None, scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)
            ).remote(learner, asdict(cfg), str(run_dir), str(checkpoint) if checkpoint else None, os.getcwd())
            handles[learner] = RayWorkerHandle(learner, actor, placement)
    except BaseException:
        for handle in handles.values():
            handle.stop()
        placement.release()
        raise
    return handles


class RayWorkerHandle:
    """The controller's end of one learner's actor: ``worker.WorkerHandle``'s interface."""

    def __init__(self, learner: str, actor, placement: _Placement):
        self.learner, self.actor, self.placement = learner, actor, placement
        self.pending, self.doing = actor.ready.remote(), "starting"
        self.node_id, self.pid = self.receive()

    @property
    def where(self) -> dict:
        """Where the worker runs, for workers.json: its Ray node and its pid there."""
        return {"node_id": self.node_id, "pid": self.pid}

    def send(self, *message) -> None:
        check_text_and_scalars(message, f"the {message[0]!r} message to the {self.learner} worker")
        self.doing = message[0]
        self.pending = self.actor.answer.remote(message)

    def receive(self):
        ray = _ray()
        try:
            while not ray.wait([self.pending], timeout=0.05)[0]:
                pass
            status, value = ray.get(self.pending)
        except ray.exceptions.RayActorError as err:
            raise WorkerDied(f"the {self.learner} worker (a Ray actor on node {getattr(self, 'node_id', '?')[:12]}) "
                             f"died while {self.doing}: {type(err).__name__}: {first_line(err)}") from None
        if status == "error":
            raise failure(self.learner, self.doing, value)
        check_text_and_scalars(value, f"the {self.learner} worker's answer to {self.doing!r}")
        return value

    def request(self, *message):
        self.send(*message)
        return self.receive()

    @functools.cached_property
    def chat(self):
        """The worker's model's chat format (``chat.ChatFormat``, None for our base), asked once."""
        return self.request("chat_format")

    def stop(self, timeout: float = 5.0) -> None:
        """End the actor at once (it holds nothing a checkpoint has not saved) and the learners'
        placement group (``timeout`` is ``WorkerHandle.stop``'s, not needed here)."""
        try:
            _ray().kill(self.actor, no_restart=True)
        except Exception:  # already gone, with its node or its cluster
            pass
        self.placement.release()


# ---------------------------------------------------------------------------
# A database for a cluster on one machine (docs/cluster.md, "Rehearsing on one machine")


def local_database(directory: Path, name: str) -> str:
    """Start a PostgreSQL server with its data in ``directory`` (pgserver; kept running after
    this process ends, reused when already running), make its database ``name`` if absent, and
    return the database's address. The server listens on a Unix socket in ``directory`` only:
    hosts other than this one cannot reach it."""
    import re

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only, not starting with a digit")
    try:
        import pgserver
        import psycopg
    except ImportError:
        raise ValueError("a local database needs pgserver and psycopg: pip install -e '.[cluster]'") from None
    directory.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(directory.resolve(), cleanup_mode=None)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f"CREATE DATABASE {name}")
    return server.get_uri(name)


def stop_local_database(directory: Path) -> None:
    """Stop the server ``local_database`` started in ``directory`` (its data stays there)."""
    import pgserver

    pgserver.get_server(directory.resolve(), cleanup_mode="stop").cleanup()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from .cli import one_line

    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.cluster",
                                     description="A PostgreSQL server on this machine, for a cluster run rehearsed "
                                                 "on one machine (docs/cluster.md).")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("database", help="start (or reuse) the server in DIR; print the address of its "
                                                 "database NAME, made if absent")
    start.add_argument("dir", type=Path)
    start.add_argument("name")
    stop = commands.add_parser("stop-database", help="stop the server in DIR (its data stays)")
    stop.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "database":
            print(local_database(args.dir, args.name))
        else:
            stop_local_database(args.dir)
    except Exception as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
