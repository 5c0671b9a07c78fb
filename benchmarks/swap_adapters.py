"""Which agent's training made the gain: swap trained and base adapters, one agent at a time.

    python benchmarks/swap_adapters.py RUN_DIR [--base data/base] [--split eval_worlds] [--n N]
                                       [--temperatures 0 1] [--out benchmarks/results/swap_adapters.json]

RUN_DIR is a finished M-GRPO run (its last complete checkpoint is used) or one checkpoint
directory holding ``main/`` and ``sub/`` adapters. On the held-out questions (all of the
split, or the first N), four teams play: base main + base sub, trained main + base sub, base
main + trained sub, trained main + trained sub, greedily and sampled at each temperature. For
every team it prints the accuracy (overall, on default-size and on large worlds), its
difference from base/base with a 95% interval (paired by question: the same questions, each
team's agents seeded alike before it plays), what each trained agent adds to the trained team (the team against the team
with that agent's base), and where the failed episodes first left the gold chain (evaluate.failure_kind):
the main agent's format, a subtask off the gold chain, a subtask past the last hop (an
overshoot), a sub-agent that failed a gold hop, an answer before the last hop, or a wrong
final answer after right results. M-GRPO trains
both agents from one team reward; this shows which of the two carries the held-out gain,
and what still fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mgrpo_ref.evaluate import FAILURE_KINDS, evaluate, failure_counts, make_agent  # noqa: E402
from mgrpo_ref.policy import SamplingSettings  # noqa: E402
from mgrpo_ref.rundir import latest_checkpoint  # noqa: E402
from mgrpo_ref.intervals import paired_difference  # noqa: E402
from mgrpo_ref.world import WORLD_SCALES, load_questions  # noqa: E402

TEAMS = (("base", "base"), ("trained", "base"), ("base", "trained"), ("trained", "trained"))


def checkpoint_of(path: Path) -> Path:
    if (path / "main").is_dir() and (path / "sub").is_dir():
        return path
    found = latest_checkpoint(path) if (path / "checkpoints").is_dir() else None
    if found is None:
        raise SystemExit(f"{path}: neither a checkpoint (main/ and sub/) nor a run with a complete checkpoint")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--base", default="data/base")
    parser.add_argument("--split", default="eval_worlds", help="held-out split (default: eval_worlds)")
    parser.add_argument("--n", type=int, default=None, help="the first N questions (default: all)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of every agent")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    checkpoint = checkpoint_of(args.run)
    questions = load_questions(args.split)[:args.n]
    large = [WORLD_SCALES.get(q.world_seed, 1) > 1 for q in questions]
    print(f"checkpoint {checkpoint}, {len(questions)} held-out questions of {args.split} "
          f"({sum(large)} in large worlds)")
    rows = []
    for t in args.temperatures:
        sampling = SamplingSettings(temperature=t)
        models = {("main", "base"): args.base, ("sub", "base"): args.base,
                  ("main", "trained"): str(checkpoint / "main"), ("sub", "trained"): str(checkpoint / "sub")}
        agents = {key: make_agent(path, seed=args.seed, sampling=sampling) for key, path in models.items()}
        print(f"\nT = {t:g}  {'main':>8} {'sub':>8} {'accuracy':>9} {'default':>8} {'large':>6}  "
              f"{'vs base/base (95% CI)':>24}  " + "  ".join(FAILURE_KINDS[1:]))
        base_correct = None
        for main_from, sub_from in TEAMS:
            for (role, _), agent in agents.items():  # every team samples from the same seeds
                agent.generator.manual_seed(args.seed + (role == "sub"))
            report, episodes = evaluate(questions, {"main": agents[("main", main_from)], "sub": agents[("sub", sub_from)]},
                                        "multi", batch_size=len(questions), progress=False)
            correct = [float(e.correct) for e in episodes]
            base_correct = correct if base_correct is None else base_correct
            diff = paired_difference(correct, base_correct)
            by_size = {size: _mean([c for c, big in zip(correct, large) if big == (size == "large")])
                       for size in ("default", "large")}
            kinds = failure_counts(episodes)
            rows.append({"temperature": t, "main": main_from, "sub": sub_from, "accuracy": report["accuracy"],
                         "accuracy_by_size": by_size, "accuracy_by_world": report["accuracy_by_world"],
                         "vs_base": _interval(diff), "correct": [int(c) for c in correct],
                         "failures": {k: kinds[k] for k in FAILURE_KINDS[1:]}})
            interval = _points(_interval(diff)) if diff.high > diff.low else ""
            print(f"{'':6}{main_from:>8} {sub_from:>8} {100 * report['accuracy']:8.1f}% "
                  f"{100 * by_size['default']:7.1f}% {100 * by_size['large']:5.1f}%  {interval:>24}  "
                  + "  ".join(f"{kinds[k]:>{len(k)}d}" for k in FAILURE_KINDS[1:]))
        team = {(r["main"], r["sub"]): r["correct"] for r in rows if r["temperature"] == t}
        for agent, without in (("sub", ("trained", "base")), ("main", ("base", "trained"))):
            gain = paired_difference(team[("trained", "trained")], team[without])
            rows[-1][f"{agent}_gain_in_team"] = _interval(gain)
            print(f"      the trained {agent}-agent in the trained team (against {'/'.join(without)}): "
                  + _points(rows[-1][f"{agent}_gain_in_team"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        results = {"checkpoint": str(checkpoint), "base": args.base, "split": args.split, "n": len(questions),
                   "seed": args.seed, "rows": rows}
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(tables(results))
        print(f"\nwritten to {args.out} and {args.out.with_suffix('.md')}")


def tables(results: dict) -> str:
    """The two markdown tables of docs/results.md ("Which agent learned what") from the JSON."""
    kinds = list(results["rows"][0]["failures"])  # the kinds of the code that wrote the file
    teams = ["| decoding | main | sub | accuracy | default / large worlds | against base/base | "
             + " | ".join(kinds) + " |", "|---" * (6 + len(kinds)) + "|"]
    gains = ["| decoding | trained sub-agent (team - trained main + base sub) "
             "| trained main agent (team - base main + trained sub) |", "|---|---|---|"]
    for r in results["rows"]:
        decoding = "greedy" if r["temperature"] == 0 else f"T = {r['temperature']:g}"
        against = "" if (r["main"], r["sub"]) == ("base", "base") else _points(r["vs_base"])
        size = r["accuracy_by_size"]
        teams.append(f"| {decoding} | {r['main']} | {r['sub']} | {100 * r['accuracy']:.1f}% "
                     f"| {100 * size['default']:.1f} / {100 * size['large']:.1f}% | {against} | "
                     + " | ".join(str(r["failures"][k]) for k in kinds) + " |")
        if "sub_gain_in_team" in r:
            gains.append(f"| {decoding} | {_points(r['sub_gain_in_team'])} | {_points(r['main_gain_in_team'])} |")
    return "\n".join(teams) + "\n\n" + "\n".join(gains) + "\n"


def _points(x: dict) -> str:
    """An interval of accuracies (fractions) in points: "+3.3 [+1.0, +5.6]"."""
    return f"{100 * x['mean']:+.1f} [{100 * x['low']:+.1f}, {100 * x['high']:+.1f}]"


def _interval(interval) -> dict:
    return {"mean": interval.mean, "low": interval.low, "high": interval.high, "n": interval.n}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


if __name__ == "__main__":
    main()
