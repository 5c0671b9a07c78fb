"""Training: the controller of the decoupled pipeline, and its CLI.

    python -m mgrpo_ref.train --variant mgrpo --seed 0 [key=value ...]
    python -m mgrpo_ref.train --resume runs/mgrpo-s0

PAPER.md section 6. The controller (this process: the CLI, or a notebook kernel) runs the
world and its tools and drives the call-return interaction; every generation request goes
to the worker process of the agent that must answer, batched across rollouts. A step:

    1. sample B training questions (seeded by the step);
    2. K rollouts each: main turns -> delegations -> sub-agent turns with tools -> results;
    3. send each worker its own trajectories; the workers update in parallel: the main
       agent writes its rewards to the store, the sub-agent reads them from there;
    4. log one metrics line; every N steps evaluate on the held-out world and checkpoint.

Variants (one config field): mgrpo, frozen_sub, single_agent, shared (see config.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from .config import TrainConfig
from .episode import run_episodes
from .evaluate import evaluate
from .store import Store, StoreError
from .tools import ToolsByWorld
from .update import RolloutRecord
from .worker import step_seed, worker_main
from .world import load_questions

EVAL_KEYS = ("accuracy", "lenient_accuracy", "format_valid", "sub_format_valid", "mean_sub_calls", "accuracy_by_hops")
"""What each held-out evaluation logs, as ``eval/<key>`` (and ``eval_sampled/<key>``)."""

MP_START_METHOD = "spawn"  # torch and fork do not mix; spawn also works from notebooks via dill


class WorkerDied(RuntimeError):
    """A worker process ended while the controller waited for it."""


class WorkerFailed(RuntimeError):
    """A worker raised an exception; its traceback is in the message."""


class WorkerHandle:
    """The controller's end of one worker process."""

    def __init__(self, agent: str, cfg: TrainConfig, run_dir: Path, checkpoint: Path | None):
        import multiprocess

        ctx = multiprocess.get_context(MP_START_METHOD)
        self.agent = agent
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, name=f"mgrpo-{agent}", daemon=True,
                                   args=(child, agent, asdict(cfg), str(run_dir),
                                         str(checkpoint) if checkpoint else None))
        self.process.start()
        child.close()
        self.doing = "starting"
        self.receive()

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
            raise WorkerFailed(f"the {self.agent} worker failed while {self.doing}:\n{value}")
        return value

    def request(self, *message):
        self.send(*message)
        return self.receive()

    def _died(self):
        self.process.join(timeout=1)
        raise WorkerDied(f"the {self.agent} worker (pid {self.process.pid}) died while {self.doing} "
                         f"(exit code {self.process.exitcode})")

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

    def __init__(self, handle: WorkerHandle, step: int, temperature: float):
        self.handle, self.step, self.temperature = handle, step, temperature

    def act(self, role: str, contexts: list[str]) -> list[str]:
        return self.handle.request("act", role, contexts, self.step, self.temperature)


# ---------------------------------------------------------------------------


def worker_layout(variant: str) -> tuple[str, dict[str, str]]:
    """(episode mode, role -> worker agent name) of a variant."""
    return {
        "mgrpo": ("multi", {"main": "main", "sub": "sub"}),
        "frozen_sub": ("multi", {"main": "main", "sub": "sub"}),
        "single_agent": ("single", {"single": "single"}),
        "shared": ("multi", {"main": "shared", "sub": "shared"}),
    }[variant]


def sample_questions(pool: list, n: int, seed: int, step: int) -> list:
    return random.Random(step_seed(seed, step, 1)).sample(pool, n)


class Trainer:
    """Runs one training run in ``run_dir``; also usable from a notebook."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.mode, self.roles = worker_layout(cfg.variant)
        self.tools_for = ToolsByWorld()
        self.train_pool = load_questions("train")
        self.eval_questions = load_questions("eval")[: cfg.eval_questions]
        self.metrics_path = self.run_dir / "metrics.jsonl"
        checkpoint = self._prepare(resume)
        self.start_step = self._checkpoint_step(checkpoint) + 1 if checkpoint else 1
        self.store = Store(self.run_dir / "store.sqlite")  # the controller's one connection
        self.workers: dict[str, WorkerHandle] = {}
        try:
            for agent in dict.fromkeys(self.roles.values()):
                self.workers[agent] = WorkerHandle(agent, cfg, self.run_dir, checkpoint)
        except BaseException:
            self.close()
            raise
        (self.run_dir / "workers.json").write_text(json.dumps({a: w.process.pid for a, w in self.workers.items()}))

    # -- run directory -----------------------------------------------------------------

    def _prepare(self, resume: bool) -> Path | None:
        """Create the run directory, or on resume cut the store and metrics back to the checkpoint."""
        if not resume:
            if (self.run_dir / "store.sqlite").exists() or (self.run_dir / "config.json").exists():
                raise FileExistsError(f"{self.run_dir} already holds a run: resume it with --resume, "
                                      "or choose another --run-dir")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(self.cfg.to_json())
            store = Store(self.run_dir / "store.sqlite", create=True)
            store.set_meta(variant=self.cfg.variant, seed=self.cfg.seed)
            store.close()
            return None
        checkpoint = latest_checkpoint(self.run_dir)
        done = self._checkpoint_step(checkpoint) if checkpoint else 0
        store = Store(self.run_dir / "store.sqlite")
        store.truncate_after(done)  # steps after the checkpoint are redone, never repeated
        store.close()
        if self.metrics_path.exists():
            # Without a checkpoint the run restarts from the base, step-0 evaluation included.
            kept = [line for line in _readable_lines(self.metrics_path)
                    if checkpoint is not None and json.loads(line)["step"] <= done]
            _write_atomically(self.metrics_path, "".join(line + "\n" for line in kept))
        return checkpoint

    @staticmethod
    def _checkpoint_step(checkpoint: Path) -> int:
        return json.loads((checkpoint / "controller.json").read_text())["step"]

    def log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    # -- the loop ------------------------------------------------------------------------

    def agents(self, step: int, temperature: float) -> dict[str, WorkerAgent]:
        return {role: WorkerAgent(self.workers[agent], step, temperature) for role, agent in self.roles.items()}

    def evaluate(self, step: int) -> dict:
        """Held-out evaluation at ``eval_temperature`` (``eval/...``), and sampled at
        ``eval_sampled_temperature`` (``eval_sampled/...``) unless that is 0."""
        record = self._evaluate_at(step, self.cfg.eval_temperature, "eval")
        if self.cfg.eval_sampled_temperature > 0:
            record.update(self._evaluate_at(step, self.cfg.eval_sampled_temperature, "eval_sampled"))
        return record

    def _evaluate_at(self, step: int, temperature: float, prefix: str) -> dict:
        for w in self.workers.values():
            w.request("reseed", step, 99)
        report, _ = evaluate(self.eval_questions, self.agents(step, temperature), self.mode,
                             self.cfg.limits, batch_size=len(self.eval_questions), progress=False,
                             tools_for=self.tools_for)
        report["accuracy_by_hops"] = {str(h): a for h, a in report["accuracy_by_hops"].items()}  # JSON keys
        return {f"{prefix}/{key}": report[key] for key in EVAL_KEYS}

    def step(self, step: int) -> dict:
        cfg = self.cfg
        t_step = time.perf_counter()
        questions = sample_questions(self.train_pool, cfg.questions_per_step, cfg.seed, step)
        for i, w in enumerate(self.workers.values()):
            w.request("reseed", step, 3 + i)
        episodes = run_episodes(questions, self.tools_for, self.agents(step, cfg.temperature), self.mode,
                                cfg.limits, rollouts=cfg.rollouts)
        rollout_s = time.perf_counter() - t_step
        records = [RolloutRecord(i // cfg.rollouts, i % cfg.rollouts, e.question, e.main, e.subs)
                   for i, e in enumerate(episodes)]
        t_update = time.perf_counter()
        for agent, w in self.workers.items():
            payload = {"records": records, "n_questions": cfg.questions_per_step, "n_rollouts": cfg.rollouts,
                       "train": not (agent == "sub" and cfg.variant == "frozen_sub")}
            if agent == "sub":  # the sub-agent gets its own trajectories, not the main agent's
                payload["records"] = [replace(r, main=None) for r in records]
            w.send("train", step, payload)
        stats: dict = {}
        for w in self.workers.values():
            stats.update(w.receive())
        update_wall = time.perf_counter() - t_update
        t = time.perf_counter()
        self.store.finish_step(step)
        controller_store_s = time.perf_counter() - t
        update_sum = sum(v for k, v in stats.items() if k.endswith("/update_s"))
        store_s = controller_store_s + sum(v for k, v in stats.items() if k.endswith("/store_s"))
        step_s = time.perf_counter() - t_step
        stats.update({"step": step, "rollout/mean_sub_calls": sum(len(e.subs) for e in episodes) / len(episodes),
                      "time/rollout_s": rollout_s, "time/update_wall_s": update_wall,
                      "time/update_sum_s": update_sum, "time/store_s": store_s, "time/step_s": step_s,
                      "time/store_frac": store_s / step_s})
        return stats

    def save_checkpoint(self, step: int) -> None:
        directory = self.run_dir / "checkpoints" / f"step_{step:05d}"
        directory.mkdir(parents=True, exist_ok=True)
        for w in self.workers.values():
            w.request("save", directory)
        _write_atomically(directory / "controller.json", json.dumps({"step": step, "time": time.time()}))  # last: marks it complete
        for old in sorted((self.run_dir / "checkpoints").glob("step_*"))[:-2]:  # keep the last two
            shutil.rmtree(old)

    def run(self) -> dict:
        cfg = self.cfg
        first_eval = None
        if self.start_step == 1:
            first_eval = self.evaluate(0)
            self.log({"step": 0, **first_eval})
        bar = tqdm(range(self.start_step, cfg.steps + 1), desc=f"train {cfg.variant}", disable=not self.progress,
                   initial=self.start_step - 1, total=cfg.steps)
        last = None
        for step in bar:
            record = self.step(step)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                record.update(self.evaluate(step))
            self.log(record)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                self.save_checkpoint(step)
            last = record
            postfix = {k.split("/")[0]: f"{v:.2f}" for k, v in record.items() if k.endswith("reward_mean")}
            for key, name in (("eval/accuracy", "eval"), ("eval_sampled/accuracy", "eval_T")):
                if key in record:
                    postfix[name] = f"{record[key]:.2f}"
            bar.set_postfix(postfix)
        history = [json.loads(line) for line in _readable_lines(self.metrics_path)]

        def accuracy(key: str, which: int):  # the step-0 (which=0) or the last (-1) evaluation
            evals = [h for h in history if key in h]
            if not evals or (which == 0 and evals[0]["step"] != 0):
                return None
            return evals[which][key]

        return {"run_dir": str(self.run_dir), "last": last, "first_eval": first_eval,
                "base_accuracy": accuracy("eval/accuracy", 0), "final_accuracy": accuracy("eval/accuracy", -1),
                "base_sampled_accuracy": accuracy("eval_sampled/accuracy", 0),
                "final_sampled_accuracy": accuracy("eval_sampled/accuracy", -1)}

    def close(self) -> None:
        for w in self.workers.values():
            w.stop()
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _write_atomically(path: Path, text: str) -> None:
    """Write a temporary file, then rename it over ``path``: a reader sees the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _readable_lines(path: Path) -> list[str]:
    """The lines of a JSONL file that parse; a last line cut by a crash is dropped."""
    lines = []
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
            lines.append(line)
        except json.JSONDecodeError:
            continue
    return lines


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (its controller.json written last), or None."""
    done = [d for d in sorted((Path(run_dir) / "checkpoints").glob("step_*")) if (d / "controller.json").exists()]
    return done[-1] if done else None


def _decoding(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"sampled, T={temperature:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.train", description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default=None, help="mgrpo | frozen_sub | single_agent | shared")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--run-dir", type=Path, help="default: runs/<variant>-s<seed>")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. steps=20 reward.b2=0.6)")
    args = parser.parse_args(argv)
    try:
        if args.resume:
            if args.variant or args.seed is not None or args.overrides:
                parser.error("--resume takes the run's own config.json; no other options")
            run_dir, resume = args.resume, True
            cfg = TrainConfig.load(run_dir / "config.json")
        else:
            cfg = TrainConfig().override(args.overrides)
            cfg = replace(cfg, variant=args.variant or cfg.variant, seed=cfg.seed if args.seed is None else args.seed)
            run_dir, resume = args.run_dir or Path("runs") / f"{cfg.variant}-s{cfg.seed}", False
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    try:
        with Trainer(cfg, run_dir, resume=resume, progress=not args.quiet) as trainer:
            result = trainer.run()
    except (WorkerDied, WorkerFailed) as err:
        print(f"error: {err}\nThe store and the last checkpoint are intact. Continue with:\n"
              f"  python -m mgrpo_ref.train --resume {run_dir}", file=sys.stderr)
        return 1
    except (FileExistsError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = len(load_questions("eval")[: cfg.eval_questions])
    for name, temperature in (("", cfg.eval_temperature), ("_sampled", cfg.eval_sampled_temperature)):
        base, final = result[f"base{name}_accuracy"], result[f"final{name}_accuracy"]
        if base is not None and final is not None:
            print(f"held-out accuracy ({_decoding(temperature)}, {n} questions): "
                  f"base {100 * base:.1f}% -> final {100 * final:.1f}%")
    print(f"run directory: {result['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
