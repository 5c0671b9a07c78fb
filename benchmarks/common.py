"""The set-up the benchmarks share.

* ``parser``: their options (``--base``, ``--steps``, ``--repeats``, ``--out``), with each
  benchmark's own defaults; ``machine`` and ``write_result``: the machine line of a result
  and its JSON file;
* ``learner_and_config``: one learner (a policy and its optimiser, as ``step.make_learner``
  builds them) on a base, with the default config;
* ``real_steps``: the real episodes of the default config's first steps, played by one
  policy at T = 1 and seeded as the trainer seeds them, both roles sampled by that policy;
  ``recording_act_calls``: a record of the policy's ``act`` calls;
* ``timed_shares``: learners' shares of a step (``step.learner_step``, what ``one_step`` and
  the workers run), each repeat on the same adapter (``unchanged``), with the time of each
  update; ``given_correct``: a channel holding correct(M), for the sub learner's share alone;
* ``command_line`` and ``within_project``: recorded commands and paths relative to the
  project root.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------------------
# Options and results


def parser(name: str, doc: str, *, steps: int | None = None, repeats: int | None = None,
           base: bool = True) -> argparse.ArgumentParser:
    """A benchmark's parser, described by the first line of ``doc``: ``--base`` (the base
    model, default data/base) unless ``base`` is false, ``--steps`` and ``--repeats`` where
    given a default, and ``--out`` (default benchmarks/results/<name>.json)."""
    options = argparse.ArgumentParser(description=doc.split("\n")[0])
    if base:
        options.add_argument("--base", default=str(ROOT / "data" / "base"), help="the base model (default: data/base)")
    if steps is not None:
        options.add_argument("--steps", type=int, default=steps)
    if repeats is not None:
        options.add_argument("--repeats", type=int, default=repeats)
    options.add_argument("--out", type=Path, default=RESULTS / f"{name}.json",
                         help=f"the result's JSON file (default: benchmarks/results/{name}.json)")
    return options


def within_project(path) -> str:
    """``path`` as a recorded result gives it (``policy.within_project``): relative to the
    project root when it lies inside the project, as it is otherwise."""
    from mgrpo_ref.policy import within_project as relative

    return relative(path)


def command_line(script: str, arguments: list[str]) -> str:
    """The command that ran, as a result records it: ``python <script> <arguments>``, every
    argument that names a path inside the project (alone, or as ``--option=path``) written
    relative to the project root, so that the command reads the same on any machine."""
    shown = []
    for argument in arguments:
        option, equals, value = argument.rpartition("=") if argument.startswith("--") else ("", "", argument)
        if value.startswith("/"):
            value = within_project(value)
        shown.append(shlex.quote(f"{option}{equals}{value}"))
    return " ".join(["python", script, *shown])


def machine() -> str:
    """The machine a result was measured on: its architecture, torch's thread count, and the
    CPU's native bfloat16 instructions where Linux lists them (AMX, AVX-512 BF16)."""
    import torch

    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
                 for f in line.split(":", 1)[1].split()}
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return (f"{platform.machine()}, {torch.get_num_threads()} torch threads"
            + (f", {' and '.join(bf16)}" if bf16 else ""))


def write_result(out: Path, result: dict) -> None:
    """Write ``result`` as JSON to ``out`` (its folders made as needed) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")


# ---------------------------------------------------------------------------
# A learner and the episodes of real steps


def learner_and_config(base: str, **overrides):
    """(learner, cfg): the default config on ``base`` (fields replaced by ``overrides``) and
    a learner built from it by ``step.make_learner``."""
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.step import make_learner

    cfg = replace(TrainConfig(), base=str(base), **overrides)
    return make_learner(cfg.base, cfg), cfg


def real_steps(policy, cfg, steps: int):
    """Yield (step, episodes) for steps 1..``steps``: the step's B*K rollouts of ``policy``."""
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.seeding import rollout_salt, step_seed
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.train import sample_questions
    from mgrpo_ref.world import load_questions

    pool, tools = load_questions("train"), ToolsByWorld()
    for step in range(1, steps + 1):
        policy.generator.manual_seed(step_seed(cfg.seed, step, rollout_salt(0)))
        questions = sample_questions(pool, cfg.questions_per_step, cfg.seed, step)
        yield step, run_episodes(questions, tools, {"main": policy, "sub": policy}, "multi", cfg.limits,
                                 rollouts=cfg.rollouts)


@contextlib.contextmanager
def recording_act_calls(policy):
    """Within the block, every ``policy.act`` call is also appended, as (role, contexts), each
    context as text, to the list this yields; ``policy.act`` is restored after."""
    calls, act = [], policy.act

    def recording_act(role, contexts):
        calls.append((role, [c if isinstance(c, str) else c.context for c in contexts]))
        return act(role, contexts)

    policy.act = recording_act
    try:
        yield calls
    finally:
        policy.act = act


# ---------------------------------------------------------------------------
# Learners' shares of a step, timed


@contextlib.contextmanager
def unchanged(learner):
    """Within the block the learner may train; after it, its adapter's parameters, its
    optimiser's state and the half it holds back are as they were before."""
    import torch

    parameters = learner.policy.trainable_parameters()
    saved = [p.detach().clone() for p in parameters]
    state, held_back = copy.deepcopy(learner.optimizer.state_dict()), learner.held_back
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(parameters, saved):
                p.copy_(value)
        learner.optimizer.load_state_dict(copy.deepcopy(state))  # a copy: the optimiser updates its state in place
        learner.held_back = held_back


@dataclass
class Share:
    """One learner's share of a step, repeated."""

    halves: list
    """The halves of its last repeat (every repeat builds the same)."""
    stats: dict
    """The statistics of its last repeat (``learner_step``'s, ``<name>/...``)."""
    update_s: list[float]
    """Each repeat's ``<name>/update_s``: the time of the update (``step.clipped_update``) alone."""
    threads: int
    """The torch threads it ran on."""


def timed_shares(learners: dict, episodes, cfg, step: int, repeats: int = 1, *, channel=None,
                 worker_threads: bool = False) -> dict[str, Share]:
    """Each learner's share of ``step`` (``step.learner_step``), ``repeats`` times, the main
    agent's learner first.

    ``learners`` maps learner names (``LAYOUTS[cfg.variant]``) to ``step.Learner``; one
    Learner may stand under two names (one policy playing both roles). ``learner_step``
    trains at the config's learning rate; each repeat runs within ``unchanged``, so every
    repeat, and the next call, sees the same adapter. correct(M) passes through ``channel``
    (a new ``step.DirectChannel`` by default): pass the same one to a later call for the sub
    learner alone, or one from ``given_correct``. With ``worker_threads`` each learner runs on
    the threads its worker gets in the update phase (``worker.update_threads``, from torch's
    current count), which are restored after.
    """
    import torch

    from mgrpo_ref.step import LAYOUTS, DirectChannel, learner_step
    from mgrpo_ref.worker import update_threads

    channel = DirectChannel() if channel is None else channel
    cores, shares = torch.get_num_threads(), {}
    for name in sorted(learners, key=lambda name: name != LAYOUTS[cfg.variant].main_learner):
        learner = learners[name]
        threads = update_threads(name, cores, cfg.d_max, cfg.sub_batch) if worker_threads else cores
        torch.set_num_threads(threads)
        update_s = []
        try:
            for _ in range(repeats):
                with unchanged(learner):
                    halves, stats = learner_step(name, learner, episodes, cfg, step, channel)
                update_s.append(stats[f"{name}/update_s"])
        finally:
            torch.set_num_threads(cores)
        shares[name] = Share(halves, stats, update_s, threads)
    return shares


def given_correct(correct):
    """A ``step.DirectChannel`` that already holds correct(M), a (B, K) bool tensor: the sub
    learner's share without the main learner's."""
    from mgrpo_ref.step import DirectChannel

    channel = DirectChannel()
    channel.correct = correct  # (B, K)
    return channel
