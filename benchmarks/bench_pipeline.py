"""Benchmark the decoupled pipeline (issue targets of the training step).

    python benchmarks/bench_pipeline.py timing  [--run-dir runs/mgrpo-s0]
    python benchmarks/bench_pipeline.py sub-flat [--base data/base]

timing   reads a finished run's metrics.jsonl and prints, per step and in total: step time,
         the share of it spent in store reads and writes (target <= 2%), and the update
         phase's wall time against the sum of the two workers' update times (overlap).
sub-flat times the sub-agent's update (update.sub_batch + update.policy_update, exactly what
         its worker runs) on batches whose distribution of sub-agent calls d differs (all
         d = 1, all d = 4, all d = 6, a realistic mix, half the rollouts d = 0) at a fixed
         D_max = 4: the aligned batch is always B*K*D rows, so the time should stay flat.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timing(run_dir: Path) -> None:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "time/step_s" in m]
    print(f"{'step':>4} {'step s':>7} {'rollout s':>9} {'upd wall':>8} {'upd sum':>8} {'store %':>8}")
    for m in steps:
        print(f"{m['step']:4d} {m['time/step_s']:7.2f} {m['time/rollout_s']:9.2f} {m['time/update_wall_s']:8.2f}"
              f" {m['time/update_sum_s']:8.2f} {100 * m['time/store_frac']:8.3f}")
    total = sum(m["time/step_s"] for m in steps)
    store = sum(m["time/store_s"] for m in steps)
    wall = sum(m["time/update_wall_s"] for m in steps)
    both = sum(m["time/update_sum_s"] for m in steps)
    print(f"total: {len(steps)} steps, {total:.1f} s; store {store:.2f} s = {100 * store / total:.3f}% of step time;"
          f" update phase wall {wall:.1f} s vs sum of both workers' updates {both:.1f} s"
          f" (overlap saves {100 * (1 - wall / both):.0f}%)")


def sub_flat(base: Path, repeats: int = 3) -> None:
    import torch

    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.policy import load_policy
    from mgrpo_ref.rewards import RewardConfig
    from mgrpo_ref.scripted import ScriptedAgent, TeacherNoise
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.update import RolloutRecord, policy_update, sub_batch
    from mgrpo_ref.world import load_questions

    torch.set_num_threads(1)  # as in a worker during the update phase
    cfg = TrainConfig()
    b, k, d_max = cfg.questions_per_step, cfg.rollouts, cfg.d_max
    questions = load_questions("train")[:b]
    teacher = ScriptedAgent(TeacherNoise(), seed=0)
    episodes = run_episodes(questions, ToolsByWorld(), {"main": teacher, "sub": teacher}, rollouts=k)
    pool = {i: [s for e in episodes[i * k:(i + 1) * k] for s in e.subs] for i in range(b)}  # per question
    policy = load_policy(base, quantization=cfg.quantization)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=0.0)  # lr 0: time without drifting
    rng = random.Random(0)
    shapes = {"all d=1": lambda: 1, "all d=4": lambda: 4, "all d=6": lambda: 6,
              "mix 0-6": lambda: rng.choice([0, 1, 1, 2, 2, 3, 4, 6]), "half d=0": lambda: rng.choice([0, 4])}
    print(f"B={b} K={k} D_max={d_max}: sub batch is always {b * k * d_max} rows")
    for name, draw in shapes.items():
        records = [RolloutRecord(q, r, questions[q], None, [rng.choice(pool[q]) for _ in range(draw())])
                   for q in range(b) for r in range(k)]
        rows = [dict(question=q, rollout=r, correct=rng.random() < 0.5) for q in range(b) for r in range(k)]
        times = []
        for _ in range(repeats):
            batch, _ = sub_batch(records, rows, policy.encode, policy.tokenizer.pad_token_id, b, k, d_max, 0,
                                 RewardConfig(), cfg.adv_eps)
            start = time.perf_counter()
            policy_update(policy, optimizer, batch, epochs=1, microbatch=cfg.microbatch, eps_low=0.2,
                          eps_high=0.28, kl_coef=0.0, max_grad_norm=1.0)
            times.append(time.perf_counter() - start)
        n = sum(len(r.subs) for r in records)
        print(f"{name:10s}: N={n:4d} distinct sub trajectories, {len(batch)} rows, update "
              f"{statistics.median(times):6.2f} s (median of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("timing", "sub-flat"))
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "mgrpo-s0")
    parser.add_argument("--base", type=Path, default=ROOT / "data" / "base")
    args = parser.parse_args()
    timing(args.run_dir) if args.what == "timing" else sub_flat(args.base)


if __name__ == "__main__":
    main()
