"""The sub-agent's update with the slot batch against the distinct batch, on real rollouts.

    python benchmarks/bench_sub_batch.py [--base data/base] [--steps 3] [--repeats 3]

For each of ``--steps`` training steps of the default config, the committed base plays the
step's B*K rollouts at T = 1 (both roles, seeded as the trainer seeds them); the sub-agent's
half is built both ways (``sub_batch=slots``: B*K*D rows; ``sub_batch=distinct``: each distinct
trajectory once, weighted by its slot count), and the update (forward, backward, optimiser
step at learning rate 0, so every repeat sees the same adapter) is timed for each, the two
alternating. It prints rows, tokens, median times and their ratio, checks that the two give
the same loss, and writes benchmarks/results/sub_batch.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_steps import policy_and_config, real_steps, update  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=str(ROOT / "data" / "base"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sub_batch.json")
    args = parser.parse_args()

    import torch

    from mgrpo_ref.step import main_half, sub_half

    policy, cfg = policy_and_config(args.base)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=0.0)  # lr 0: the same adapter each repeat
    threads = torch.get_num_threads()  # each form's update alone, on every core
    rows = []
    for step, episodes in real_steps(policy, cfg, args.steps):
        correct = main_half(episodes, cfg, policy).correct
        halves = {form: sub_half(episodes, correct, replace(cfg, sub_batch=form), policy, step)
                  for form in ("slots", "distinct")}
        torch.set_num_threads(threads)  # as in the sub worker's update
        times: dict[str, list[float]] = {form: [] for form in halves}
        losses = {}
        for _ in range(args.repeats):
            for form, half in halves.items():  # alternating, so drifts in machine load hit both
                start = time.perf_counter()
                stats = update(policy, optimizer, half.batch, cfg)
                times[form].append(time.perf_counter() - start)
                losses[form] = stats["loss"]
        slots, distinct = halves["slots"], halves["distinct"]
        row = {"step": step, "n_trajectories": slots.stats["sub/n_trajectories"],
               "duplicated_frac": slots.stats["sub/align_duplicated_frac"],
               "dropped_frac": slots.stats["sub/align_dropped_frac"],
               "masked_frac": slots.stats["sub/align_masked_frac"],
               "rows": {"slots": len(slots.batch), "distinct": len(distinct.batch)},
               "row_tokens": {form: int(h.batch.attention_mask.sum()) for form, h in halves.items()},
               "median_s": {form: statistics.median(t) for form, t in times.items()},
               "times_s": times, "loss": losses}
        row["ratio_distinct_over_slots"] = row["median_s"]["distinct"] / row["median_s"]["slots"]
        assert abs(losses["slots"] - losses["distinct"]) <= 1e-5 * max(1.0, abs(losses["slots"])), losses
        rows.append(row)
        print(f"step {step}: N={row['n_trajectories']:3d}, duplicated {100 * row['duplicated_frac']:4.1f}% of slots; "
              f"rows {row['rows']['slots']} -> {row['rows']['distinct']}, tokens {row['row_tokens']['slots']} -> "
              f"{row['row_tokens']['distinct']}; update {row['median_s']['slots']:.2f} s -> "
              f"{row['median_s']['distinct']:.2f} s (x{row['ratio_distinct_over_slots']:.2f}); "
              f"loss {losses['slots']:+.5f} / {losses['distinct']:+.5f}")
    ratios = [r["ratio_distinct_over_slots"] for r in rows]
    summary = {"command": "python benchmarks/bench_sub_batch.py " + f"--steps {args.steps} --repeats {args.repeats}",
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, sub update on {threads}",
               "config": {"questions_per_step": cfg.questions_per_step, "rollouts": cfg.rollouts, "d_max": cfg.d_max,
                          "microbatch": cfg.microbatch, "quantization": cfg.quantization, "base": "data/base"},
               "median_ratio_distinct_over_slots": statistics.median(ratios), "steps": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"distinct / slots update time, median over {len(rows)} steps: x{summary['median_ratio_distinct_over_slots']:.2f}"
          f"  -> {args.out}")


if __name__ == "__main__":
    main()
