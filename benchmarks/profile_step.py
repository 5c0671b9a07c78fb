"""Where the time of one training step goes: a profile by agent and by phase.

    python benchmarks/profile_step.py [--steps 3] [--base data/base] [key=value ...]

Runs the default config's first ``--steps`` steps in one process (``step.one_step``: each
learner's share through ``step.learner_step``, as the workers run it, but the phases run one
after another rather than overlapping as they do in the two-process pipeline), with timers
around:

    generation, per role     each ``Policy.act`` call, split into
                             tokenisation (the tokenizer's encode and decode calls),
                             prefill (the first forward pass of each ``generate``),
                             decode (the later forward passes) and the rest of ``generate``
    environment              the rest of the rollouts: tools, parsing, the episode controller
    batching                 each half of step.py outside its own update (rewards, advantages,
                             alignment, encoding trajectories into batches)
    update, per learner      forward passes (``token_logprobs``), the optimiser step, and the
                             rest of ``clipped_update`` (mostly backward)
    store                    writing and reading one step's rollout rows (a temporary store)
    evaluation               one held-out evaluation of ``eval_questions`` greedily, timed once

It prints a table and writes benchmarks/results/profile_step.json. Timers add a little
overhead of their own (a clock read per forward pass).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from common import machine, parser, write_result


class Clock:
    """Seconds per named phase, and counts."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        self.seconds[name] += seconds
        self.counts[name] += count

    def timed(self, call, name: str):
        """``call``, its time added to ``name`` at each call."""

        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            out = call(*args, **kwargs)
            self.add(name, time.perf_counter() - start)
            return out

        return timed_call


class TimedTokenizer:
    """A tokenizer whose encode and decode calls are timed, as generation's while a role is
    generating and as batching's otherwise; everything else is forwarded."""

    def __init__(self, tokenizer, clock: Clock, generating: dict):
        self.__dict__.update(_inner=tokenizer, _clock=clock, _generating=generating)

    def _timed(self, call, *args, **kwargs):
        start = time.perf_counter()
        out = call(*args, **kwargs)
        where = "generation" if self._generating.get("role") else "batching"
        self._clock.add(f"tokenisation/{where}", time.perf_counter() - start)
        return out

    def __call__(self, *args, **kwargs):
        return self._timed(self._inner, *args, **kwargs)

    def decode(self, *args, **kwargs):
        return self._timed(self._inner.decode, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)


def time_forward_passes(model, clock: Clock, role_of_call: dict) -> None:
    """Hooks that time every forward pass of ``model``: the first of a ``generate`` call is
    its prefill, the others decode steps; outside generation, a forward is the update's."""
    state = {"start": 0.0}

    def before(module, args, kwargs):
        state["start"] = time.perf_counter()

    def after(module, args, kwargs, output):
        seconds = time.perf_counter() - state["start"]
        role = role_of_call.get("role")
        if role is None:
            return
        kind = "prefill" if role_of_call["calls"] == 0 else "decode"
        role_of_call["calls"] += 1
        clock.add(f"generation/{role}/{kind}", seconds)

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)


def main() -> None:
    options = parser("profile_step", __doc__, steps=3)
    options.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = options.parse_args()

    import torch

    from mgrpo_ref import step as step_module
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.evaluate import evaluate
    from mgrpo_ref.seeding import rollout_salt, step_seed
    from mgrpo_ref.step import LAYOUTS, make_learner
    from mgrpo_ref.store import Store
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.train import held_out_questions, sample_questions
    from mgrpo_ref.world import load_questions

    cfg = replace(TrainConfig().override(args.overrides), base=args.base)
    layout = LAYOUTS[cfg.variant]
    clock = Clock()
    learners = {name: make_learner(cfg.base, cfg) for name in dict.fromkeys(layout.learners.values())}
    generating: dict = {"role": None, "calls": 0}
    for name, learner in learners.items():
        policy = learner.policy
        policy.tokenizer = TimedTokenizer(policy.tokenizer, clock, generating)
        time_forward_passes(policy.model.get_base_model(), clock, generating)
        policy.token_logprobs = clock.timed(policy.token_logprobs, f"update/{name}/forward")
        learner.optimizer.step = clock.timed(learner.optimizer.step, f"update/{name}/optimiser")

    class TimedAgent:
        def __init__(self, policy):
            self.policy = policy

        def act(self, role, contexts):
            generating.update(role=role, calls=0)
            start = time.perf_counter()
            out = self.policy.act(role, contexts)
            clock.add(f"generation/{role}/total", time.perf_counter() - start)
            generating["role"] = None  # counting the new tokens below is the profiler's own work
            clock.add(f"generation/{role}/new tokens", 0.0,
                      count=sum(len(self.policy.tokenizer._inner(t, add_special_tokens=False)["input_ids"]) for t in out))
            return out

    # The halves and updates, timed from outside (learner_step calls them from the module):
    # batching = half - nothing; update = clipped_update.
    for name in ("main_half", "sub_half", "clipped_update"):
        key = "update/clipped_update" if name == "clipped_update" else f"batching/{name}"
        setattr(step_module, name, clock.timed(getattr(step_module, name), key))

    pool, tools = load_questions("train"), ToolsByWorld()
    store_dir = Path(tempfile.mkdtemp(prefix="profile-store-"))
    store = Store(store_dir / "store.sqlite", create=True)
    agents = {role: TimedAgent(learners[name].policy) for role, name in layout.learners.items()}
    wall = {}
    for step in range(1, args.steps + 1):
        for i, learner in enumerate(learners.values()):
            learner.policy.generator.manual_seed(step_seed(cfg.seed, step, rollout_salt(i)))
        questions = sample_questions(pool, cfg.questions_per_step, cfg.seed, step)
        start = time.perf_counter()
        episodes = run_episodes(questions, tools, agents, layout.mode, cfg.limits, rollouts=cfg.rollouts)
        clock.add("rollouts", time.perf_counter() - start)
        start = time.perf_counter()
        step_module.one_step(episodes, learners, cfg, step)
        clock.add("one_step", time.perf_counter() - start)
        rows = [dict(question_index=i // cfg.rollouts, rollout=i % cfg.rollouts, qid=e.question.qid, main_reward=0.0,
                     correct=e.correct, format_valid=e.main.format_valid, n_sub=len(e.subs))
                for i, e in enumerate(episodes)]
        start = time.perf_counter()
        store.write_rollouts(step, rows)
        store.wait_rollouts(step, len(rows))
        clock.add("store", time.perf_counter() - start)
    store.close()
    s, counts, n = dict(clock.seconds), dict(clock.counts), args.steps  # the steps' figures, before evaluating
    start = time.perf_counter()
    greedy = {name: learner.policy for name, learner in learners.items()}
    for policy in greedy.values():
        policy.sampling = replace(policy.sampling, temperature=0.0)
    evaluate(held_out_questions(cfg), {role: greedy[name] for role, name in layout.learners.items()}, layout.mode,
             cfg.limits, batch_size=cfg.eval_questions, progress=False, tools_for=tools)
    wall["evaluation (once)"] = time.perf_counter() - start

    s = defaultdict(float, s)
    rows = []
    roles = sorted({k.split("/")[1] for k in s if k.startswith("generation/")})
    generation_total = sum(s[f"generation/{r}/total"] for r in roles)
    for r in roles:
        total = s[f"generation/{r}/total"]
        prefill, decode = s[f"generation/{r}/prefill"], s[f"generation/{r}/decode"]
        rows.append((f"generation, {r}", total))
        rows.append((f"  prefill ({counts[f'generation/{r}/prefill']} passes)", prefill))
        rows.append((f"  decode ({counts[f'generation/{r}/decode']} passes, "
                     f"{counts[f'generation/{r}/new tokens']} new tokens)", decode))
        rows.append(("  the rest of generate and act", total - prefill - decode))
    rows.append(("  tokenisation inside generation (all roles)", s["tokenisation/generation"]))
    rows.append(("environment (tools, parsing, episode control)", s["rollouts"] - generation_total))
    update_total = s["update/clipped_update"]
    batching = s["batching/main_half"] + s["batching/sub_half"]
    rows.append(("batching (rewards, advantages, alignment, encoding)", batching))
    rows.append(("  of which tokenisation (encoding trajectories)", s["tokenisation/batching"]))
    rows.append(("update (clipped_update, all learners)", update_total))
    for name in learners:
        rows.append((f"  {name}: forward", s[f"update/{name}/forward"]))
        rows.append((f"  {name}: optimiser step", s[f"update/{name}/optimiser"]))
    forward_and_step = sum(s[f"update/{name}/{k}"] for name in learners for k in ("forward", "optimiser"))
    rows.append(("  backward and the rest", update_total - forward_and_step))
    rows.append(("store (write and read one step's rows)", s["store"]))
    step_total = s["rollouts"] + s["one_step"] + s["store"]
    print(f"{n} steps of B={cfg.questions_per_step} K={cfg.rollouts} D={cfg.d_max} sub_batch={cfg.sub_batch}, "
          f"one process, {torch.get_num_threads()} threads; seconds per step:")
    for label, seconds in rows:
        print(f"  {label:62s} {seconds / n:7.3f} s  {100 * seconds / step_total:5.1f}%")
    print(f"  {'step (rollouts + halves and updates + store)':62s} {step_total / n:7.3f} s")
    print(f"  {'evaluation of ' + str(cfg.eval_questions) + ' questions, greedy (once)':62s} "
          f"{wall['evaluation (once)']:7.3f} s")
    result = {"command": "python benchmarks/profile_step.py " + " ".join(sys.argv[1:]),
              "machine": machine(),
              "config": {"questions_per_step": cfg.questions_per_step, "rollouts": cfg.rollouts,
                         "d_max": cfg.d_max, "sub_batch": cfg.sub_batch, "quantization": cfg.quantization,
                         "nf4_on_cpu": cfg.nf4_on_cpu, "microbatch": cfg.microbatch},
              "steps": n,
              "phases": [{"phase": label.strip(), "part_of_the_one_above": label.startswith(" "),
                          "seconds_per_step": seconds / n} for label, seconds in rows],
              "step_seconds": step_total / n, "evaluation_seconds": wall["evaluation (once)"],
              "raw_seconds": dict(s), "counts": counts}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
