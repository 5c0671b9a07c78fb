"""An agent's worker: its own OS process with its own policy, optimiser and random state.

PAPER.md section 6: the main agent and the sub-agent each have their own rollout engine and
trainer. Here each is one process (``multiprocess``, spawn start method) that owns one
QLoRA policy and answers the controller's messages over a pipe:

    ("act", role, contexts, step, temperature)  ->  ("ok", texts)            generation
    ("reseed", step, salt)                       ->  ("ok", None)             per-step sampling seed
    ("train", step, payload)                     ->  ("ok", stats)            this agent's update
    ("save", directory)                          ->  ("ok", None)             checkpoint
    ("stop",)                                    ->  the process exits

What crosses the pipe is text (contexts, generated turns, trajectories) and scalars (stats).
No gradient and no parameter ever leaves a worker; the sub-agent's worker gets the main
agent's results from the store, not from the controller.
"""

from __future__ import annotations

import random
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

AGENTS = ("main", "sub", "single", "shared")
"""main: trains on main trajectories; sub: on sub trajectories; single: the single agent;
shared: one adapter trained on both the main and the sub trajectories."""


def step_seed(seed: int, step: int, salt: int) -> int:
    """Per-step seeds: a resumed run samples exactly what the uninterrupted run would have."""
    return (seed * 1_000_003 + step * 7919 + salt) % (2**31 - 1)


def update_threads(agent: str, cores: int, d_max: int) -> int:
    """Threads of a worker's update phase, in which the main and the sub worker run at once.

    The sub batch holds D_max rows per rollout against the main batch's one, so the sub
    worker gets every core and the main worker a 1/(D_max + 1) share of them, at least one.
    The two overlap a little on purpose. On 2 cores (D_max = 4: main 1, sub 2) the update
    phase took 2.88 s and, in a second run, 3.16 s, against 2.99 s both times with one core
    each: no clear difference in ``python benchmarks/bench_pipeline.py threads``; in 12-step
    training runs, an update phase of 3.0 s against 3.4 s. Two threads each is clearly worse (3.5-5.3 s).
    A worker that updates alone (single, shared) gets every core.
    """
    if agent == "main":
        return max(1, round(cores / (d_max + 1)))
    return cores


class AgentWorker:
    """The state a worker process holds; ``serve`` is its message loop."""

    def __init__(self, agent: str, cfg, run_dir: Path, checkpoint: Path | None):
        from .policy import SamplingSettings, load_policy
        from .store import Store

        self.agent, self.cfg, self.run_dir = agent, cfg, Path(run_dir)
        self.cores = torch.get_num_threads()  # torch's default: the machine's physical cores
        source = checkpoint / agent if checkpoint is not None else cfg.base
        self.policy = load_policy(source, quantization=cfg.quantization, lora=cfg.lora,
                                  sampling=SamplingSettings(cfg.temperature, cfg.top_p, cfg.max_new_tokens),
                                  seed=cfg.seed)
        self.optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
        if checkpoint is not None:
            state = torch.load(checkpoint / f"{agent}_state.pt", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(state["python_rng"])
        self.store = Store(self.run_dir / "store.sqlite")
        self.encode = self.policy.encode

    # -- messages ----------------------------------------------------------------------

    def act(self, role: str, contexts: list[str], step: int, temperature: float) -> list[str]:
        torch.set_num_threads(self.cores)  # generation runs one worker at a time: every core
        self.policy.sampling = replace(self.policy.sampling, temperature=temperature)
        return self.policy.act(role, contexts)

    def reseed(self, step: int, salt: int) -> None:
        self.policy.generator.manual_seed(step_seed(self.cfg.seed, step, salt))

    def train(self, step: int, payload: dict) -> dict:
        """This agent's update for ``step`` (see update.py for the math)."""
        from .update import concat_batches, main_batch, main_rewards, policy_update, sub_batch

        from .config import learning_rate

        torch.set_num_threads(update_threads(self.agent, self.cores, self.cfg.d_max))
        cfg, records = self.cfg, payload["records"]
        lr = learning_rate(cfg.lr, cfg.lr_schedule, step, cfg.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        b, k, pad = payload["n_questions"], payload["n_rollouts"], self.policy.tokenizer.pad_token_id
        stats: dict = {}
        store_s = 0.0
        batches = []
        if self.agent in ("main", "single", "shared"):
            rows = main_rewards(records, cfg.reward)
            t = time.perf_counter()
            self.store.write_rollouts(step, rows)  # Eq. (R1) results: what the sub-agent will read
            store_s += time.perf_counter() - t
            batch, main_stats = main_batch(records, rows, self.encode, pad, b, k, cfg.adv_eps)
            batches.append(batch)
            stats.update({f"main/{key}": v for key, v in main_stats.items()})
        if self.agent in ("sub", "shared"):
            t = time.perf_counter()
            store_rows = self.store.wait_rollouts(step, b * k)  # the main agent's results
            store_s += time.perf_counter() - t
            batch, sub_stats = sub_batch(records, store_rows, self.encode, pad, b, k, cfg.d_max,
                                         step_seed(cfg.seed, step, 17), cfg.reward, cfg.adv_eps)
            batches.append(batch)
            stats.update({f"sub/{key}": v for key, v in sub_stats.items()})
        batch = batches[0] if len(batches) == 1 else concat_batches(batches, pad)
        update = policy_update(self.policy, self.optimizer, batch, epochs=cfg.epochs, microbatch=cfg.microbatch,
                               eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high, kl_coef=cfg.kl_coef,
                               max_grad_norm=cfg.max_grad_norm, train=payload.get("train", True))
        stats.update({f"{self.agent}/{key}": v for key, v in update.items()}, **{f"{self.agent}/lr": lr})
        t = time.perf_counter()
        self.store.write_stats(step, self.agent, stats)
        store_s += time.perf_counter() - t
        stats[f"{self.agent}/store_s"] = store_s
        return stats

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.policy.save_adapter(directory / self.agent)
        torch.save({"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate()}, directory / f"{self.agent}_state.pt")

    def serve(self, conn) -> None:
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the controller is gone
                return
            kind = message[0]
            try:
                if kind == "stop":
                    conn.send(("ok", None))
                    return
                if kind == "act":
                    _, role, contexts, step, temperature = message
                    reply = self.act(role, contexts, step, temperature)
                elif kind == "reseed":
                    reply = self.reseed(*message[1:])
                elif kind == "train":
                    reply = self.train(*message[1:])
                elif kind == "save":
                    reply = self.save(*message[1:])
                else:
                    raise ValueError(f"unknown message {kind!r}")
                conn.send(("ok", reply))
            except Exception:  # report, keep serving: the controller decides what to do
                conn.send(("error", traceback.format_exc()))


def worker_main(conn, agent: str, cfg_dict: dict, run_dir: str, checkpoint: str | None) -> None:
    """Entry point of a worker process (spawned: it imports everything itself)."""
    from .config import TrainConfig

    try:
        worker = AgentWorker(agent, TrainConfig.from_dict(cfg_dict), Path(run_dir),
                             Path(checkpoint) if checkpoint else None)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", "ready"))
    worker.serve(conn)
