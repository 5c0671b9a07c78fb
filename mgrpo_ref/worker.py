"""A learner's worker: its own OS process with its own policy, optimiser and random state.

docs/paper.md section 6: the main agent and the sub-agent each have their own rollout engine and
trainer. Here each learner (a QLoRA policy and its optimiser: main, sub, single or shared) is
one process (``multiprocess``, forked from a fork server or spawned: :func:`start_method`)
that answers the controller's messages over a pipe. Once loaded it sends ("ok", "ready")
(or ("error", traceback) if loading failed, and exits); then it answers each message in
turn (``LearnerWorker.serve``):

    ("act", role, contexts, temperature)  ->  ("ok", texts)    generation, for the agent ``role``
    ("reseed", step, salt)                ->  ("ok", None)     per-step sampling seed
    ("train", step, episodes)             ->  ("ok", stats)    this learner's share of the step
    ("save", directory)                   ->  ("ok", None)     checkpoint
    ("chat_format",)                      ->  ("ok", chat)     the model's ``chat.ChatFormat``
                                                               (None for our base, which has none)
    ("stop",)                             ->  ("ok", None), then the process exits

A message that raises, or of any other kind, is answered ("error", traceback), and the
worker goes on serving: the controller decides what to do (``WorkerHandle.receive`` raises
``WorkerFailed``). A worker ignores Ctrl-C (the controller stops it), and ends quietly when
the controller is gone.

What crosses the pipe is text (contexts, generated turns, episodes) and scalars (stats). No
gradient and no parameter ever leaves a worker. The sub-agent's learner gets its episodes
without their main trajectories and reads correct(M) from the store.

The math of a step is in step.py, and ``step.learner_step`` puts a learner's share together;
a worker adds only what is its own: the pipe, the store as the channel of correct(M) and the
keeper of the statistics, thread counts, timing and memory. ``WorkerHandle`` is the
controller's end.
"""

from __future__ import annotations

import contextlib
import functools
import random
import resource
import signal
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import multiprocess
import torch

from .chat import render
from .config import TrainConfig
from .seeding import step_seed
from .step import learner_step, make_learner
from .rundir import open_run_store
from .store import StoreChannel


def start_method() -> str:
    """How a worker process starts: "forkserver" on Linux without a GPU, else "spawn".

    Not "fork": a copy of a controller that has run torch may hang in its thread pool. The fork
    server is one clean process, started the first time a worker is needed, that imports
    :data:`PRELOAD` and nothing else; each worker is a fork of it and starts without importing
    torch, transformers or peft again (about 10 s per worker on 2 cores: most of a short
    run's start-up). The server lasts as long as the controller's process, so a notebook or
    a test session pays for those imports once. Like "spawn", it hands a worker its arguments
    by pickling (dill), and the worker runs in the controller's current directory with its
    ``sys.path``; but the server imported :data:`PRELOAD` as the package was when the server
    started (an edited module needs a new kernel), and its environment variables are the
    server's, as they were then.

    Where a GPU is present, importing bitsandbytes starts CUDA in the server, and CUDA cannot
    be used again in a fork of it: workers are spawned. On macOS and Windows they are spawned
    too (macOS's system libraries are not safe to fork once loaded; Windows has no fork)."""
    if sys.platform.startswith("linux") and not torch.cuda.is_available():
        return "forkserver"
    return "spawn"


PRELOAD = ["mgrpo_ref.worker", "mgrpo_ref.worker_imports"]
"""What the fork server imports (:func:`start_method`): this module, and everything a worker
loads a policy with."""


def process_context():
    """The ``multiprocess`` context workers start from: :func:`start_method`'s, with the fork
    server's :data:`PRELOAD` set (read when the server starts, the first time only)."""
    method = start_method()
    ctx = multiprocess.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def peak_memory_mib() -> dict[str, float]:
    """This process's peak memory so far, in MiB: resident host memory ("host_peak_mib"),
    and on a GPU the most its tensors held at once ("gpu_peak_mib"), which the host figure
    does not include."""
    peaks = {"host_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if torch.cuda.is_available():
        peaks["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def update_threads(learner: str, cores: int, d_max: int, sub_batch: str = "distinct") -> int:
    """Threads of a worker's update phase, in which the main and the sub learner's workers run at once.

    The split follows the two batches' sizes. The distinct sub batch holds about as many rows
    as the main batch's B*K, so each worker gets half the cores. The slot batch holds D_max
    rows per rollout against the main batch's one, so the sub worker gets every core and the
    main worker a 1/(D_max + 1) share. Always at least one thread; a worker that updates
    alone (single, shared) gets every core. ``python benchmarks/bench_pipeline.py threads``
    measures the split against others (docs/results.md, "Time").
    """
    if learner not in ("main", "sub"):
        return cores
    if sub_batch == "distinct":
        return max(1, cores // 2)
    return max(1, round(cores / (d_max + 1))) if learner == "main" else cores


class LearnerWorker:
    """The state a worker process holds for its learner; ``serve`` is its message loop."""

    def __init__(self, name: str, cfg: TrainConfig, run_dir: Path, checkpoint: Path | None):
        self.name, self.cfg = name, cfg  # the learner's name ("main", "sub", "single", "shared")
        self.cores = torch.get_num_threads()  # torch's default: the machine's physical cores
        self.learner = make_learner(checkpoint / name if checkpoint is not None else cfg.base, cfg)
        if checkpoint is not None:
            state = torch.load(checkpoint / f"{name}_state.pt", weights_only=False, map_location="cpu")
            self.learner.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(state["python_rng"])
            self.learner.held_back = state.get("held_back")  # a stale sub-agent's next batch
        self.store = open_run_store(run_dir, cfg)
        self.run_dir = Path(run_dir)
        self.cache_at_rollouts: dict[str, int] = {}  # the prefix cache's counts when the step's rollouts began

    # -- messages ----------------------------------------------------------------------

    def act(self, role: str, contexts: list, temperature: float) -> list:
        torch.set_num_threads(self.cores)  # generation runs one worker at a time: every core
        policy = self.learner.policy
        policy.sampling = replace(policy.sampling, temperature=temperature)
        return policy.act(role, contexts)

    def reseed(self, step: int, salt: int) -> None:
        """Seed the step's sampling; the step's rollouts begin (``Trainer.step``)."""
        self.learner.policy.generator.manual_seed(step_seed(self.cfg.seed, step, salt))
        self.cache_at_rollouts = self.cache_counts()

    def cache_counts(self) -> dict[str, int]:
        """The prefix cache's running counts (``PrefixCache.counts``), {} without a cache."""
        cache = self.learner.policy.prefix_cache
        return {} if cache is None else cache.counts()

    def train(self, step: int, episodes: list) -> dict:
        """This learner's share of ``step`` (``step.learner_step``), the store its channel."""
        torch.set_num_threads(update_threads(self.name, self.cores, self.cfg.d_max, self.cfg.sub_batch))
        channel = StoreChannel(self.store, self.cfg.rollouts)
        _, stats = learner_step(self.name, self.learner, episodes, self.cfg, step, channel, record_to=self.run_dir)
        start = time.perf_counter()
        self.store.write_learner_stats(step, self.name, stats)
        stats[f"{self.name}/store_s"] = channel.seconds + time.perf_counter() - start
        stats.update({f"memory/{self.name}_{key}": v for key, v in peak_memory_mib().items()})
        before = self.cache_at_rollouts
        stats.update({f"rollout/{self.name}_{key}": n - before.get(key, 0) for key, n in self.cache_counts().items()})
        return stats

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        with _writing(directory / self.name):
            self.learner.policy.save_adapter(directory / self.name)
        state = directory / f"{self.name}_state.pt"
        with _writing(state):
            torch.save({"optimizer": self.learner.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                        "python_rng": random.getstate(), "held_back": self.learner.held_back}, state)

    def answer(self, message: tuple) -> tuple:
        """The answer to one message other than "stop": ("ok", value), or ("error", traceback)
        for a message that raised or that no handler takes."""
        handlers = {"act": self.act, "reseed": self.reseed, "train": self.train, "save": self.save,
                    "chat_format": lambda: self.learner.policy.chat}
        kind, args = message[0], message[1:]
        try:
            if kind not in handlers:
                raise ValueError(f"unknown message {kind!r}")
            return ("ok", handlers[kind](*args))
        except Exception:  # report, keep serving: the controller decides what to do
            return ("error", traceback.format_exc())

    def serve(self, conn) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the controller is gone
                return
            if message[0] == "stop":
                _answer(conn, ("ok", None))
                return
            if not _answer(conn, self.answer(message)):
                return


@contextlib.contextmanager
def _writing(path: Path):
    """A failed write inside the block leaves as one OSError naming ``path`` (torch reports a
    failed save as a RuntimeError that names no file)."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        raise OSError(f"cannot write {path}: {' '.join(str(err).split())}") from err


def _answer(conn, message) -> bool:
    """Send ``message``; False (and nothing printed) when the controller is gone."""
    try:
        conn.send(message)
        return True
    except (BrokenPipeError, EOFError, OSError):
        return False


def worker_main(conn, learner: str, cfg_dict: dict, run_dir: str, checkpoint: str | None) -> None:
    """Entry point of a worker process (a fork of the fork server, which imported its modules,
    or spawned: :func:`start_method`).

    Ctrl-C in a terminal interrupts the whole process group; a worker ignores it and leaves the
    stopping to the controller, which stops every worker and says so in one line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker = LearnerWorker(learner, TrainConfig.from_dict(cfg_dict), Path(run_dir),
                               Path(checkpoint) if checkpoint else None)
    except Exception:
        _answer(conn, ("error", traceback.format_exc()))
        return
    if _answer(conn, ("ok", "ready")):
        worker.serve(conn)


# ---------------------------------------------------------------------------
# The controller's end


class WorkerDied(RuntimeError):
    """A worker process ended while the controller waited for it."""


class WorkerFailed(RuntimeError):
    """A worker raised an exception: the message says which worker, doing what, and the
    exception's last line; ``details`` holds the worker's full traceback."""

    def __init__(self, message: str, details: str):
        super().__init__(message)
        self.details = details


def failure(learner: str, doing: str, details: str) -> WorkerFailed:
    """The ``WorkerFailed`` of a worker that answered ``details`` (a traceback) while ``doing``."""
    cause = next((line for line in reversed(details.strip().splitlines()) if line.strip()), "unknown error")
    return WorkerFailed(f"the {learner} worker failed while {doing}: {cause.strip()}", details)


class WorkerHandle:
    """The controller's end of one worker process."""

    def __init__(self, learner: str, cfg: TrainConfig, run_dir: Path, checkpoint: Path | None):
        ctx = process_context()
        self.learner = learner
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, name=f"mgrpo-{learner}", daemon=True,
                                   args=(child, learner, asdict(cfg), str(run_dir),
                                         str(checkpoint) if checkpoint else None))
        self.process.start()
        child.close()
        self.doing = "starting"
        self.receive()

    @property
    def where(self) -> int:
        """Where the worker runs, for workers.json: its process id."""
        return self.process.pid

    def send(self, *message) -> None:
        self.doing = message[0]
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):
            self._died()

    def receive(self):
        while not self.conn.poll(0.05):
            if not self.process.is_alive():
                self._died()
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            self._died()
        if status == "error":
            raise failure(self.learner, self.doing, value)
        return value

    def request(self, *message):
        self.send(*message)
        return self.receive()

    def _died(self):
        self.process.join(timeout=1)
        raise WorkerDied(f"the {self.learner} worker (pid {self.process.pid}) died while {self.doing} "
                         f"(exit code {self.process.exitcode})")

    @functools.cached_property
    def chat(self):
        """The worker's model's chat format (``chat.ChatFormat``, None for our base), asked once."""
        return self.request("chat_format")

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not answer in time (it may be stuck
        waiting for store records that a failed peer will never write)."""
        if self.process.is_alive():
            try:
                self.conn.send(("stop",))
                if self.conn.poll(timeout):
                    self.conn.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
        self.process.join(timeout=timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class WorkerAgent:
    """The ``episode.Agent`` interface over a worker: one batched request per call."""

    def __init__(self, handle: WorkerHandle, temperature: float):
        self.handle, self.temperature = handle, temperature

    def act(self, role: str, contexts: list) -> list:
        return self.handle.request("act", role, contexts, self.temperature)

    def render(self, trajectory):
        """The trajectory in the worker's model's own format (chat.py)."""
        return render(trajectory, self.handle.chat)
