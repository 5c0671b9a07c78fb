"""The sub-agent's update with the slot batch against the distinct batch, on real rollouts.

    python benchmarks/bench_sub_batch.py [--base data/base] [--steps 3] [--repeats 3]

For each of ``--steps`` training steps of the default config, the committed base plays the
step's B*K rollouts at T = 1 (both roles, seeded as the trainer seeds them,
``common.real_steps``). The main learner takes its share once (correct(M) for the sub
learner); then the sub learner's share (``step.learner_step``, through
``common.timed_shares``: its half, then its update: forward, backward, optimiser step,
every repeat on the same adapter) is run both ways (``sub_batch=slots``: B*K*D rows;
``sub_batch=distinct``: each distinct trajectory once, weighted by its slot count), the two
alternating, and its update timed (the ``update_s`` of ``step.clipped_update``). It prints
rows, tokens, median times and their ratio, checks that the two give the same loss, and
writes benchmarks/results/sub_batch.json.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from common import learner_and_config, machine, parser, real_steps, timed_shares, write_result


def main() -> None:
    args = parser("sub_batch", __doc__, steps=3, repeats=3).parse_args()

    import torch

    from mgrpo_ref.step import DirectChannel

    learner, cfg = learner_and_config(args.base)
    threads = torch.get_num_threads()  # each form's update alone, on every core
    forms = ("slots", "distinct")
    rows = []
    for step, episodes in real_steps(learner.policy, cfg, args.steps):
        channel = DirectChannel()
        timed_shares({"main": learner}, episodes, cfg, step, channel=channel)  # correct(M), into the channel
        times: dict[str, list[float]] = {form: [] for form in forms}
        losses, halves = {}, {}
        for _ in range(args.repeats):
            for form in forms:  # alternating, so drifts in machine load hit both
                share = timed_shares({"sub": learner}, episodes, replace(cfg, sub_batch=form), step,
                                     channel=channel)["sub"]
                times[form] += share.update_s
                losses[form] = share.stats["sub/loss"]
                (halves[form],) = share.halves
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
               "machine": f"{machine()}, sub update on {threads}",
               "config": {"questions_per_step": cfg.questions_per_step, "rollouts": cfg.rollouts, "d_max": cfg.d_max,
                          "microbatch": cfg.microbatch, "quantization": cfg.quantization, "base": "data/base"},
               "median_ratio_distinct_over_slots": statistics.median(ratios), "steps": rows}
    print(f"distinct / slots update time, median over {len(rows)} steps: "
          f"x{summary['median_ratio_distinct_over_slots']:.2f}")
    write_result(args.out, summary)


if __name__ == "__main__":
    main()
