"""The shortest step two cores could make of a real step's work, whatever the schedule.

    python benchmarks/step_floor.py [--base runs/speed-warm-up-300/adapter] [--arms today "shared prefix, lean, skip"]

For each arm (its overrides from ``real_step_speed.py``, on the same CPU configuration at
B = 8 questions x K = 8 rollouts), in this one process, after one small step that is not timed
(``warm_up``: the process's first calls are paid there):

1. step 1's rollouts (``rollout_calls.step_rollouts``: the trainer's questions and seeds, both
   roles' policies here, each prefix cache empty where the arm has one), on one thread and
   then again, by fresh policies, on two;
2. each learner's share of the step (``step.learner_step``, main agent first) on the one-thread
   rollouts' episodes, on one thread and on two, ``REPEATS`` times each from the same adapter,
   the fastest counting (the update's ``sampled_nll`` on each count shows the same batch).

A phase's seconds on one thread are its work in core-seconds. Two cores cannot do that work in
less than half of it, however the phases are laid out (rollouts beside updates, one learner's
update during the other's generation): ``floor_s`` = (rollouts + main update + sub update, each
on one thread) / 2, as long as no phase runs more than twice as fast on two threads as on one
(its ``speedup``, also recorded, says whether it does; ``floor_holds`` is false where one
does). Beside it, ``pipeline_s``: the schedule the pipeline runs, rollouts on both threads,
then the two updates at once on one thread each (rollouts on two threads + the longer of the
two one-thread updates; no store, no pickling). Each per trained episode (over B*K), and as
ratios to the first arm's ``pipeline_s``.

What it answers: whether any schedule of an arm's work reaches a given time per episode on this
machine (a quarter of today's defaults', say), or only less work can.

Writes benchmarks/results/real-model-cpu/step_floor.json and, beside it, step_floor.md (its
table; docs/real-model.md section 6).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import ROOT, command_line, machine, parser, timed_shares, within_project, write_result
from real_step_speed import ARMS, CONFIG
from rollout_calls import SMALL, step_rollouts

PHASES = ("rollouts", "main_update", "sub_update")
REPEATS = 2
"""Each learner's update is timed this many times on each thread count, from the same adapter:
the fastest counts, so that no first call's costs (the allocator's, the kernels') inflate it."""


def learners_on(cfg) -> dict:
    """A main and a sub learner from ``cfg.base``, as the two workers load them."""
    from mgrpo_ref.step import make_learner

    return {name: make_learner(cfg.base, cfg) for name in ("main", "sub")}


def warm_up(cfg) -> None:
    """One small step (one question, two rollouts) played and trained, not timed: the process's
    first calls of generation and of the update are paid here, not by the first arm."""
    from dataclasses import replace

    small = replace(cfg, questions_per_step=1, rollouts=2)
    learners = learners_on(small)
    _, _, episodes = step_rollouts(small, {role: learners[role].policy for role in ("main", "sub")})
    timed_shares(learners, episodes, small, step=1)


def arm_phases(cfg, threads: list[int]) -> dict:
    """Each phase's seconds at each count of ``threads`` (the first count's episodes train),
    keyed by the count as a string, as the result's JSON keeps it."""
    import torch

    cores = torch.get_num_threads()
    seconds: dict = {phase: {} for phase in PHASES}
    sampled_nll: dict = {f"{name}_update": {} for name in ("main", "sub")}  # the same batch on each count
    rollouts: dict = {}
    trained = episodes = None
    try:
        for n in threads:
            torch.set_num_threads(n)
            learners = learners_on(cfg)  # fresh policies: no count's rollouts find the last count's cache
            calls, rollout_s, played = step_rollouts(cfg, {role: learners[role].policy for role in ("main", "sub")})
            seconds["rollouts"][str(n)] = rollout_s
            rollouts[str(n)] = {"calls": len(calls), "passes": sum(c["passes"] for c in calls),
                           "small_calls_s": sum(c["seconds"] for c in calls if c["rows"] <= SMALL),
                           "sub_calls_per_episode": sum(len(e.subs) for e in played) / len(played)}
            if trained is None:
                trained, episodes = learners, played
        for n in threads:
            torch.set_num_threads(n)
            shares = timed_shares(trained, episodes, cfg, step=1, repeats=REPEATS)
            for name, share in shares.items():
                seconds[f"{name}_update"][str(n)] = min(share.update_s)
                sampled_nll[f"{name}_update"][str(n)] = share.stats[f"{name}/sampled_nll"]
    finally:
        torch.set_num_threads(cores)
    return {"seconds": seconds, "rollouts": rollouts, "episodes": len(episodes), "sampled_nll": sampled_nll}


def bounds(phases: dict, one="1", two="2") -> dict:
    """The floor and the pipeline's schedule from the phases' seconds on ``one`` and ``two``
    threads. ``floor_holds``: no phase ran more than twice as fast on two threads as on one
    (else ``floor_s`` bounds nothing)."""
    s = phases["seconds"]
    work = sum(s[phase][one] for phase in PHASES)
    episodes = phases["episodes"]
    floor_s = work / 2
    pipeline_s = s["rollouts"][two] + max(s["main_update"][one], s["sub_update"][one])
    speedup = {phase: s[phase][one] / s[phase][two] if s[phase][two] > 0 else None for phase in PHASES}
    return {"work_core_s": round(work, 3), "floor_s": round(floor_s, 3), "pipeline_s": round(pipeline_s, 3),
            "floor_per_episode_s": round(floor_s / episodes, 4),
            "pipeline_per_episode_s": round(pipeline_s / episodes, 4),
            "speedup": {phase: None if x is None else round(x, 2) for phase, x in speedup.items()},
            "floor_holds": all(x is not None and x <= 2 for x in speedup.values())}


def table(result: dict) -> str:
    """Markdown: each arm's phases on one and two threads, its floor (where it holds) and its
    pipeline step, per trained episode, with their ratios to the first arm's pipeline step."""
    lines = ["| arm | rollouts, 1 / 2 threads (s) | main update, 1 / 2 (s) | sub update, 1 / 2 (s) "
             "| work (core-s) | floor per episode (s) | pipeline's schedule per episode (s) |",
             "|---|---|---|---|---|---|---|"]
    first = None
    for arm, a in result["arms"].items():
        s, b = a["seconds"], a["bounds"]
        first = first or b["pipeline_per_episode_s"]
        cells = [f"{s[phase]['1']:.1f} / {s[phase]['2']:.1f}" for phase in PHASES]
        floor = f"{b['floor_per_episode_s']:.2f} (x{b['floor_per_episode_s'] / first:.2f})"
        if not b["floor_holds"]:
            faster = max(x for x in b["speedup"].values() if x is not None)
            floor = f"no bound (a phase x{faster:.2f} on two threads)"
        lines.append(f"| {arm} | {' | '.join(cells)} | {b['work_core_s']:.0f} | {floor} "
                     f"| {b['pipeline_per_episode_s']:.2f} (x{b['pipeline_per_episode_s'] / first:.2f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    options = parser("real-model-cpu/step_floor", __doc__, base=False)
    options.add_argument("--base", default=str(ROOT / "runs" / "speed-warm-up-300" / "adapter"),
                         help="a warm-up adapter of SmolLM2 (default: runs/speed-warm-up-300/adapter, docs/real-model.md)")
    options.add_argument("--arms", nargs="+", choices=list(ARMS), default=["today", "shared prefix, lean, skip"],
                         help="arms of real_step_speed.py; the ratios are to the first")
    options.add_argument("overrides", nargs="*", help="config overrides on top of every arm's (key=value)")
    args = options.parse_args(argv)

    from mgrpo_ref.config import TrainConfig

    if not Path(args.base).exists():
        sys.exit(f"step_floor: no model at {args.base} (see docs/real-model.md, section 6)")
    def config_of(arm: str):
        return TrainConfig().override([f"base={args.base}", *CONFIG, *ARMS[arm], *args.overrides])

    arms = {}
    warm_up(config_of(args.arms[0]))
    for arm in args.arms:
        start = time.perf_counter()
        phases = arm_phases(config_of(arm), [1, 2])
        arms[arm] = {"overrides": ARMS[arm], **phases, "bounds": bounds(phases),
                     "wall_s": round(time.perf_counter() - start, 1)}
        print(f"{arm}: {arms[arm]['bounds']}", flush=True)
    result = {"command": command_line("benchmarks/step_floor.py", sys.argv[1:] if argv is None else argv),
              "machine": machine(), "base": within_project(args.base), "config": CONFIG,
              "overrides": args.overrides, "arms": arms}
    print(table(result), end="")
    write_result(args.out, result)
    args.out.with_suffix(".md").write_text(table(result))


if __name__ == "__main__":
    main()
