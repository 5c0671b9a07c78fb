"""The update's savings, each on and off, on real batches.

    python benchmarks/bench_update.py [--base data/base] [--steps 3] [--repeats 3]

For each of ``--steps`` training steps of the default config, the committed base plays the
step's rollouts (``real_steps.py``) and both halves are built (the sub-agent's as the
default distinct batch). Each batch's update (forward, backward, optimiser step at learning
rate 0, so every repeat sees the same adapter) is timed in these arms, alternating:

    before         bitsandbytes' packed 4-bit layers, the output layer on every position,
                   rows in batch order, microbatches of 32 rows (the code before)
    longest first  rows taken longest first into microbatches (``step._microbatches``)
    head on loss   the output layer only where the loss has weight (``token_logprobs(where=)``)
    both           the two together
    both, mb 16    the two, with microbatches of 16 rows
    now            the three, on the base dequantised once at load (``nf4_on_cpu=dequantized``):
                   what the trainer does by default on a CPU

Two policies with the same seed hold the same adapter, one on packed layers and one
dequantised. The other savings are switched off by patching the two functions, nothing else. Each
update runs on the threads its worker gets (``worker.update_threads``). It checks that the
arms all give the same loss, prints median times and ratios against "before", and writes
benchmarks/results/update.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_steps import policy_and_config, real_steps, update  # noqa: E402

ARMS = {"before": ("packed", False, False, 32), "longest first": ("packed", True, False, 32),
        "head on loss": ("packed", False, True, 32), "both": ("packed", True, True, 32),
        "both, mb 16": ("packed", True, True, 16), "now": ("dequantized", True, True, 16)}
"""arm -> (nf4_on_cpu, rows longest first, output layer only on weighted positions, rows per microbatch)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=str(ROOT / "data" / "base"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "update.json")
    args = parser.parse_args()

    import torch

    from mgrpo_ref import policy as policy_module
    from mgrpo_ref import step as step_module
    from mgrpo_ref.worker import update_threads

    microbatches, plain_head = step_module._microbatches, policy_module._logits_are_the_head_of_the_last_state

    def set_arm(longest_first: bool, head_on_loss: bool) -> None:
        step_module._microbatches = functools.partial(microbatches, longest_first=longest_first)
        policy_module._logits_are_the_head_of_the_last_state = plain_head if head_on_loss else (lambda model: False)

    policy, cfg = policy_and_config(args.base)  # the default: nf4_on_cpu=dequantized
    packed, _ = policy_and_config(args.base, nf4_on_cpu="packed")
    policies = {"dequantized": policy, "packed": packed}
    optimizers = {name: torch.optim.AdamW(p.trainable_parameters(), lr=0.0)  # lr 0: the same adapter each repeat
                  for name, p in policies.items()}
    cores = torch.get_num_threads()
    rows = []
    for step, episodes in real_steps(policy, cfg, args.steps):
        main = step_module.main_half(episodes, cfg, policy)
        halves = {"main": main, "sub": step_module.sub_half(episodes, main.correct, cfg, policy, step)}
        for agent, half in halves.items():
            torch.set_num_threads(update_threads(agent, cores, cfg.d_max, cfg.sub_batch))
            times: dict[str, list[float]] = {arm: [] for arm in ARMS}
            losses = {}
            for _ in range(args.repeats):
                for arm, (held, longest_first, head_on_loss, microbatch) in ARMS.items():  # alternating: drifts
                    set_arm(longest_first, head_on_loss)                                  # in load hit every arm
                    start = time.perf_counter()
                    stats = update(policies[held], optimizers[held], half.batch, cfg, microbatch)
                    times[arm].append(time.perf_counter() - start)
                    losses[arm] = stats["loss"]
            set_arm(True, True)
            torch.set_num_threads(cores)
            spread = max(losses.values()) - min(losses.values())
            assert spread <= 1e-5 * max(1.0, abs(losses["before"])), losses
            batch = half.batch
            median = {arm: statistics.median(t) for arm, t in times.items()}
            row = {"step": step, "agent": agent, "rows": len(batch), "row_tokens": int(batch.attention_mask.sum()),
                   "weighted_tokens": int((batch.token_weights != 0).sum()),
                   "threads": update_threads(agent, cores, cfg.d_max, cfg.sub_batch),
                   "median_s": median, "ratio_to_before": {arm: m / median["before"] for arm, m in median.items()},
                   "times_s": times, "loss": losses}
            rows.append(row)
            print(f"step {step} {agent:4s}: {row['rows']:3d} rows, {row['weighted_tokens']:5d} of {row['row_tokens']:5d} "
                  "tokens weighted; " + ", ".join(f"{arm} {m:.2f} s" for arm, m in median.items())
                  + f" (now x{row['ratio_to_before']['now']:.2f})", flush=True)
    summary = {"command": f"python benchmarks/bench_update.py --steps {args.steps} --repeats {args.repeats}",
               "machine": f"{platform.machine()}, {cores} torch threads",
               "config": {"questions_per_step": cfg.questions_per_step, "rollouts": cfg.rollouts, "d_max": cfg.d_max,
                          "sub_batch": cfg.sub_batch, "quantization": cfg.quantization,
                          "base": "data/base"},
               "median_ratio_to_before": {agent: {arm: statistics.median(r["ratio_to_before"][arm] for r in rows
                                                                         if r["agent"] == agent) for arm in ARMS}
                                          for agent in ("main", "sub")},
               "steps": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    for agent, ratios in summary["median_ratio_to_before"].items():
        print(f"{agent}: update time against 'before', median over steps: "
              + ", ".join(f"{arm} x{r:.2f}" for arm, r in ratios.items() if arm != "before"))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
