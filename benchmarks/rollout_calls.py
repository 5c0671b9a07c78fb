"""Where a real step's rollouts spend their time: each generation call of one step, and what one
decode pass costs by the rows it computes.

    python benchmarks/rollout_calls.py [--base runs/speed-warm-up-300/adapter] [--pass-rows 1 4 16 64]

The rollouts of step 1 of a run at B = 8 questions x K = 8 rollouts, sampled at temperature 1
as the pipeline samples them (the same questions, each role's generator seeded as the trainer
seeds its worker), with the lean arm's prefix cache (512 MiB; ``real_step_speed.py``), empty at the start (in a
run it may also hold what the evaluation before step 1 kept, so it encodes less), both
roles' policies in this one process, one call at a time on every core as in the pipeline. For
each call of ``Policy.act``: its role, its rows, the context tokens it encoded and those it
took from the prefix cache, its passes (the longest turn it wrote, in tokens: one forward
pass per token, the first of them the one that encodes the contexts) and its seconds. Then one decode pass of the base, timed alone at each of
``--pass-rows`` rows after a context of ``--pass-context`` tokens (random ids, the adapter on
as in generation; the median of ``--repeats`` passes).

Writes benchmarks/results/real-model-cpu/rollout_calls.json and, beside it, rollout_calls.md
(its tables; docs/real-model.md section 6 shows them).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from common import ROOT, command_line, machine, parser, within_project, write_result

SMALL = 8
"""A call of at most this many rows is "small" in the summary: a few episodes' turns, whose
passes cost far more per row than a full call's (``decode_pass`` in the result)."""


class TimedAgent:
    """A policy as an ``episode.Agent`` that records each ``act`` call."""

    def __init__(self, policy, calls: list):
        self.policy, self.calls = policy, calls
        self.render = policy.render  # the policy's own format, as the pipeline's agents give it

    def act(self, role: str, contexts: list) -> list:
        import torch

        cache = self.policy.prefix_cache  # None without one: no tokens counted
        before = {} if cache is None else cache.counts()
        start = time.perf_counter()
        with torch.no_grad():
            turns = self.policy.act(role, contexts)
        seconds, after = time.perf_counter() - start, {} if cache is None else cache.counts()
        self.calls.append({"role": role, "rows": len(contexts), "seconds": round(seconds, 3),
                           **{key: after[key] - before[key] for key in ("encoded_tokens", "reused_tokens") if after},
                           "passes": max(len(turn.ids if turn.ids is not None else self.policy.encode(turn.text))
                                         for turn in turns)})
        return turns


def step_rollouts(cfg, policies: dict | None = None) -> tuple[list[dict], float, list]:
    """Step 1's rollouts under ``cfg``, each call recorded: (calls, seconds in all, episodes).

    ``policies`` maps each role ("main", "sub") to the policy that plays it (a learner's, to
    train on the episodes after); by default each role gets one loaded from ``cfg.base``."""
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.policy import SamplingSettings, load_policy
    from mgrpo_ref.seeding import rollout_salt, step_seed
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.train import min_hops_at, sample_questions, training_pool

    calls: list[dict] = []
    agents = {}
    for position, role in enumerate(("main", "sub")):
        policy = (policies or {}).get(role)
        if policy is None:
            policy = load_policy(cfg.base, quantization=cfg.quantization, lora=cfg.lora, seed=cfg.seed,
                                 sampling=SamplingSettings(cfg.temperature, cfg.top_p, cfg.max_new_tokens),
                                 prefix_cache_mib=cfg.prefix_cache_mib, dtype=cfg.dtype, trainable=False)
        policy.generator.manual_seed(step_seed(cfg.seed, 1, rollout_salt(position)))  # as Trainer.reseed at step 1
        agents[role] = TimedAgent(policy, calls)
    questions = sample_questions(training_pool(cfg, min_hops_at(cfg, 1)), cfg.questions_per_step, cfg.seed, 1)
    start = time.perf_counter()
    episodes = run_episodes(questions, ToolsByWorld(), agents, "multi", cfg.limits, rollouts=cfg.rollouts)
    return calls, time.perf_counter() - start, episodes


def pass_seconds(base: str, rows: list[int], context: int, repeats: int) -> list[dict]:
    """One decode pass of ``base`` (its adapter on, as in generation) at each number of rows after
    ``context`` tokens: the median seconds."""
    import torch

    from mgrpo_ref import prefix_cache
    from mgrpo_ref.policy import load_policy

    model = load_policy(base, quantization="none", device="cpu", trainable=False).model
    names = prefix_cache._forward_names(model)
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    out = []
    with torch.no_grad():
        for n in rows:
            ids = torch.randint(10, vocab, (n, context), generator=gen)
            mask = torch.ones(n, context, dtype=torch.long)
            _, past = prefix_cache.forward(model, ids, mask, prefix_cache.positions_of(mask), None, names)
            past = prefix_cache.with_room(past, repeats + 1)
            token = torch.randint(10, vocab, (n, 1), generator=gen)
            seconds = []
            for step in range(repeats + 1):  # the first pass warms up, and is not counted
                mask = torch.ones(n, context + step + 1, dtype=torch.long)
                start = time.perf_counter()
                prefix_cache.forward(model, token, mask, torch.full((n, 1), context + step), past, names)
                seconds.append(time.perf_counter() - start)
            out.append({"rows": n, "context_tokens": context, "median_s": statistics.median(seconds[1:])})
    return out


def summary(calls: list[dict]) -> dict:
    """Per role, and over the small calls: calls, rows, seconds, passes and tokens."""
    def total(chosen):
        return {"calls": len(chosen), "seconds": round(sum(c["seconds"] for c in chosen), 2),
                "passes": sum(c["passes"] for c in chosen),
                "encoded_tokens": sum(c["encoded_tokens"] for c in chosen),
                "reused_tokens": sum(c["reused_tokens"] for c in chosen)}

    return {"main": total([c for c in calls if c["role"] == "main"]),
            "sub": total([c for c in calls if c["role"] == "sub"]),
            "small": total([c for c in calls if c["rows"] <= SMALL])}


def tables(result: dict) -> str:
    """Markdown: the calls in order, then the decode pass by rows."""
    lines = ["| call | role | rows | context tokens encoded | taken from the cache | passes | seconds |",
             "|---|---|---|---|---|---|---|"]
    for i, c in enumerate(result["calls"], 1):
        lines.append(f"| {i} | {c['role']} | {c['rows']} | {c['encoded_tokens']:,} | {c['reused_tokens']:,} "
                     f"| {c['passes']} | {c['seconds']:.1f} |")
    s = result["summary"]
    lines.append(f"| all | | | {s['main']['encoded_tokens'] + s['sub']['encoded_tokens']:,} "
                 f"| {s['main']['reused_tokens'] + s['sub']['reused_tokens']:,} "
                 f"| {s['main']['passes'] + s['sub']['passes']} | {result['rollout_seconds']:.1f} |")
    lines += ["", "| rows of one decode pass | milliseconds | per row |", "|---|---|---|"]
    for p in result["decode_pass"]:
        lines.append(f"| {p['rows']} | {1000 * p['median_s']:.0f} | {1000 * p['median_s'] / p['rows']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    options = parser("real-model-cpu/rollout_calls", __doc__, repeats=5, base=False)
    options.add_argument("--base", default=str(ROOT / "runs" / "speed-warm-up-300" / "adapter"),
                         help="a warm-up adapter of SmolLM2 (default: runs/speed-warm-up-300/adapter, docs/real-model.md)")
    options.add_argument("--pass-rows", type=int, nargs="+", default=[1, 4, 16, 64])
    options.add_argument("--pass-context", type=int, default=300)
    options.add_argument("overrides", nargs="*", help="config overrides on top of the step's (key=value)")
    args = options.parse_args(argv)

    from mgrpo_ref.config import TrainConfig

    if not Path(args.base).exists():
        sys.exit(f"rollout_calls: no model at {args.base} (see docs/real-model.md, section 6)")
    cfg = TrainConfig().override([f"base={args.base}", "quantization=none", "questions_per_step=8", "rollouts=8",
                                  "max_new_tokens=48", "prefix_cache_mib=512", *args.overrides])
    calls, seconds, episodes = step_rollouts(cfg)
    result = {"command": command_line("benchmarks/rollout_calls.py", sys.argv[1:] if argv is None else argv),
              "machine": machine(), "base": within_project(args.base), "questions_per_step": cfg.questions_per_step,
              "rollouts": cfg.rollouts, "prefix_cache_mib": cfg.prefix_cache_mib,
              "rollout_seconds": round(seconds, 2), "episodes": len(episodes),
              "sub_calls_per_episode": sum(len(e.subs) for e in episodes) / len(episodes),
              "calls": calls, "summary": summary(calls),
              "decode_pass": pass_seconds(args.base, args.pass_rows, args.pass_context, args.repeats)}
    print(tables(result), end="")
    write_result(args.out, result)
    args.out.with_suffix(".md").write_text(tables(result))


if __name__ == "__main__":
    main()
