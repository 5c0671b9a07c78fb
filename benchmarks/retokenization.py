"""How often a sampled turn's text encodes to other token ids than the ones the policy drew.

Training scores each turn by the ids the policy drew (``episode.Segment.ids``). Encoding the
turn's text again instead can give other ids: the policy may write "o" + "pe" where the
tokenizer encodes "ope" as one token, and an update on that re-encoding scores a token the
policy never drew. This samples episodes from a policy and counts, per role, the turns (and
their tokens) whose re-encoding differs from what was drawn:

    python benchmarks/retokenization.py --policy data/base --name tiny-base
    python benchmarks/retokenization.py --policy runs/collapse/unaligned-s0/checkpoints/step_00050 \\
        --name unaligned-s0-step-50
    python benchmarks/retokenization.py --policy runs/real-study/warm-up/adapter --name smollm2-warm-up \\
        --questions 8 --rollouts 4

``--policy`` is a model or adapter directory that plays every role, or a training checkpoint
(``main/`` and ``sub/`` adapters inside, each playing its role). The episodes are the
validation split's first questions, each sampled ``--rollouts`` times at T = 1. Each result is
kept under its name in benchmarks/results/retokenization.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import ROOT, command_line, machine, within_project

OUT = ROOT / "benchmarks" / "results" / "retokenization.json"
EXAMPLES = 3
"""Turns shown per role whose re-encoding differs: the text, the ids drawn, the re-encoding."""


def count(episodes: list, policies: dict) -> dict:
    """Per role: turns, the turns whose text encodes to other ids than were drawn, the turns
    that kept no ids (a closing tag inside a token), tokens drawn, and a few examples."""
    out = {}
    for e in episodes:
        for traj in [e.main, *e.subs]:
            policy = policies[traj.role]
            row = out.setdefault(traj.role, {"turns": 0, "differ": 0, "without_ids": 0, "tokens": 0,
                                             "tokens_in_differing_turns": 0, "examples": []})
            for segment in (s for s in traj.segments if s.source == "agent"):
                row["turns"] += 1
                if segment.ids is None:
                    row["without_ids"] += 1
                    continue
                row["tokens"] += len(segment.ids)
                again = policy.encode(segment.text)
                if again != segment.ids:
                    row["differ"] += 1
                    row["tokens_in_differing_turns"] += len(segment.ids)
                    if len(row["examples"]) < EXAMPLES:
                        pieces = policy.tokenizer.convert_ids_to_tokens
                        row["examples"].append({"text": segment.text, "drawn": pieces(segment.ids),
                                                "encoded_again": pieces(again)})
    for row in out.values():
        row["share_of_turns"] = row["differ"] / row["turns"] if row["turns"] else 0.0
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.policy import SamplingSettings, load_policy
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.world import load_questions

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=TrainConfig().max_new_tokens)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    sampling = SamplingSettings(temperature=1.0, max_new_tokens=args.max_new_tokens)
    roles = [r for r in ("main", "sub") if (args.policy / r).is_dir()]
    if roles:  # a training checkpoint: each role its own adapter
        policies = {r: load_policy(args.policy / r, quantization="none", sampling=sampling, seed=i)
                    for i, r in enumerate(roles)}
    else:
        one = load_policy(args.policy, quantization="none", sampling=sampling, seed=0)
        policies = {"main": one, "sub": one}
    questions = load_questions("validation")[: args.questions]
    episodes = run_episodes(questions, ToolsByWorld(), policies, rollouts=args.rollouts)
    result = {"command": command_line("benchmarks/retokenization.py", sys.argv[1:] if argv is None else argv),
              "policy": within_project(args.policy), "machine": machine(), "questions": len(questions),
              "rollouts": args.rollouts, "roles": count(episodes, policies)}
    for role, row in result["roles"].items():
        print(f"{args.name} {role}: {row['differ']} of {row['turns']} turns ({100 * row['share_of_turns']:.1f}%) "
              f"encode to other ids than were drawn; {row['without_ids']} kept no ids")
        for ex in row["examples"]:
            print(f"    {ex['text']!r}: drawn {ex['drawn']}, encoded again {ex['encoded_again']}")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.name] = result
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
