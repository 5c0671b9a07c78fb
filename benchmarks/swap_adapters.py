"""Which agent's training made the gain: swap trained and base adapters, one agent at a time.

    python benchmarks/swap_adapters.py RUN_DIR [--base data/base] [--n 200] [--temperatures 0 1]
                                       [--out benchmarks/results/swap_adapters.json]

RUN_DIR is a finished M-GRPO run (its last complete checkpoint is used) or one checkpoint
directory holding ``main/`` and ``sub/`` adapters. On the first N held-out questions, four
teams play: base main + base sub, trained main + base sub, base main + trained sub, trained
main + trained sub, greedily and sampled at each temperature. For every team it prints the
accuracy and where the failed episodes first left the gold chain (evaluate.failure_kind):
the main agent's format, a subtask off the gold chain, a sub-agent that failed a gold hop,
an answer before the last hop, or a wrong final answer after right results. M-GRPO trains
both agents from one team reward; this shows which of the two carries the held-out gain,
and what still fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mgrpo_ref.evaluate import FAILURE_KINDS, evaluate, failure_kind, make_agent  # noqa: E402
from mgrpo_ref.policy import SamplingSettings  # noqa: E402
from mgrpo_ref.rundir import latest_checkpoint  # noqa: E402
from mgrpo_ref.world import load_questions  # noqa: E402

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
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of every agent")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    checkpoint = checkpoint_of(args.run)
    questions = load_questions("eval")[:args.n]
    print(f"checkpoint {checkpoint}, {len(questions)} held-out questions")
    rows = []
    for t in args.temperatures:
        sampling = SamplingSettings(temperature=t)
        models = {("main", "base"): args.base, ("sub", "base"): args.base,
                  ("main", "trained"): str(checkpoint / "main"), ("sub", "trained"): str(checkpoint / "sub")}
        agents = {key: make_agent(path, seed=args.seed, sampling=sampling) for key, path in models.items()}
        print(f"\nT = {t:g}  {'main':>8} {'sub':>8} {'accuracy':>9}  " + "  ".join(FAILURE_KINDS[1:]))
        for main_from, sub_from in TEAMS:
            report, episodes = evaluate(questions, {"main": agents[("main", main_from)], "sub": agents[("sub", sub_from)]},
                                        "multi", batch_size=len(questions), progress=False)
            kinds = Counter(failure_kind(e) for e in episodes)
            rows.append({"temperature": t, "main": main_from, "sub": sub_from, "accuracy": report["accuracy"],
                         "failures": {k: kinds.get(k, 0) for k in FAILURE_KINDS[1:]}})
            print(f"{'':6}{main_from:>8} {sub_from:>8} {100 * report['accuracy']:8.1f}%  "
                  + "  ".join(f"{kinds.get(k, 0):>{len(k)}d}" for k in FAILURE_KINDS[1:]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"checkpoint": str(checkpoint), "base": args.base, "n": len(questions),
                                        "seed": args.seed, "rows": rows}, indent=2) + "\n")
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
