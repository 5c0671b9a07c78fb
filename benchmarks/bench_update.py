"""The update's savings, each on and off, on real batches.

    python benchmarks/bench_update.py [--base data/base] [--steps 3] [--repeats 3]

For each of ``--steps`` training steps of the default config, the committed base plays the
step's rollouts (``common.real_steps``). Each learner's share of the step
(``step.learner_step``, through ``common.timed_shares``: its half, the sub-agent's as the
default distinct batch, then its update: forward, backward, optimiser step, every repeat on
the same adapter) is run in these arms, alternating, and its update timed (the ``update_s``
of ``step.clipped_update``):

    before         bitsandbytes' packed 4-bit layers, the output layer on every position,
                   rows in batch order, microbatches of 32 rows (the code before)
    longest first  rows taken longest first into microbatches (``step._microbatches``)
    head on loss   the output layer only where the loss has weight (``token_logprobs(where=)``)
    both           the two together
    both, mb 16    the two, with microbatches of 16 rows
    now            the three, on the base dequantised once at load (``nf4_on_cpu=dequantized``):
                   what the trainer does by default on a CPU

Two policies with the same seed hold the same adapter, one on packed layers and one
dequantised. The other savings are switched off by patching the two module-level functions
that ``learner_step`` ends up calling, nothing else. Each share runs on the threads its
worker gets (``worker.update_threads``). It checks that the arms all give the same loss,
prints median times and ratios against "before", and writes benchmarks/results/update.json.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import replace

from common import learner_and_config, machine, parser, real_steps, timed_shares, write_result

ARMS = {"before": ("packed", False, False, 32), "longest first": ("packed", True, False, 32),
        "head on loss": ("packed", False, True, 32), "both": ("packed", True, True, 32),
        "both, mb 16": ("packed", True, True, 16), "now": ("dequantized", True, True, 16)}
"""arm -> (nf4_on_cpu, rows longest first, output layer only on weighted positions, rows per microbatch)."""


def main() -> None:
    args = parser("update", __doc__, steps=3, repeats=3).parse_args()

    from mgrpo_ref import policy as policy_module
    from mgrpo_ref import step as step_module
    from mgrpo_ref.step import DirectChannel

    microbatches, plain_head = step_module._microbatches, policy_module._logits_are_the_head_of_the_last_state

    def set_arm(longest_first: bool, head_on_loss: bool) -> None:
        step_module._microbatches = functools.partial(microbatches, longest_first=longest_first)
        policy_module._logits_are_the_head_of_the_last_state = plain_head if head_on_loss else (lambda model: False)

    learner, cfg = learner_and_config(args.base)  # the default: nf4_on_cpu=dequantized
    packed, _ = learner_and_config(args.base, nf4_on_cpu="packed")
    learners = {"dequantized": learner, "packed": packed}
    rows = []
    for step, episodes in real_steps(learner.policy, cfg, args.steps):
        channel = DirectChannel()  # correct(M), from the main learner's first share to the sub learner's
        for name in ("main", "sub"):
            times: dict[str, list[float]] = {arm: [] for arm in ARMS}
            losses = {}
            for _ in range(args.repeats):
                for arm, (held, longest_first, head_on_loss, microbatch) in ARMS.items():  # alternating: drifts
                    set_arm(longest_first, head_on_loss)                                  # in load hit every arm
                    share = timed_shares({name: learners[held]}, episodes, replace(cfg, microbatch=microbatch), step,
                                         channel=channel, worker_threads=True)[name]
                    times[arm] += share.update_s
                    losses[arm] = share.stats[f"{name}/loss"]
            set_arm(True, True)
            spread = max(losses.values()) - min(losses.values())
            assert spread <= 1e-5 * max(1.0, abs(losses["before"])), losses
            (half,) = share.halves
            batch = half.batch
            median = {arm: statistics.median(t) for arm, t in times.items()}
            row = {"step": step, "learner": name, "rows": len(batch), "row_tokens": int(batch.attention_mask.sum()),
                   "weighted_tokens": int((batch.token_weights != 0).sum()), "threads": share.threads,
                   "median_s": median, "ratio_to_before": {arm: m / median["before"] for arm, m in median.items()},
                   "times_s": times, "loss": losses}
            rows.append(row)
            print(f"step {step} {name:4s}: {row['rows']:3d} rows, {row['weighted_tokens']:5d} of {row['row_tokens']:5d} "
                  "tokens weighted; " + ", ".join(f"{arm} {m:.2f} s" for arm, m in median.items())
                  + f" (now x{row['ratio_to_before']['now']:.2f})", flush=True)
    summary = {"command": f"python benchmarks/bench_update.py --steps {args.steps} --repeats {args.repeats}",
               "machine": machine(),
               "config": {"questions_per_step": cfg.questions_per_step, "rollouts": cfg.rollouts, "d_max": cfg.d_max,
                          "sub_batch": cfg.sub_batch, "quantization": cfg.quantization,
                          "base": "data/base"},
               "median_ratio_to_before": {name: {arm: statistics.median(r["ratio_to_before"][arm] for r in rows
                                                                        if r["learner"] == name) for arm in ARMS}
                                          for name in ("main", "sub")},
               "steps": rows}
    for name, ratios in summary["median_ratio_to_before"].items():
        print(f"{name}: update time against 'before', median over steps: "
              + ", ".join(f"{arm} x{r:.2f}" for arm, r in ratios.items() if arm != "before"))
    write_result(args.out, summary)


if __name__ == "__main__":
    main()
