"""The training step's wall time with the slot batch against the distinct batch, in one run.

    python benchmarks/bench_step_time.py [--steps 10] [--pairs 2]

Trains the default config (two worker processes, as ``make train`` does) for ``--steps``
steps with ``sub_batch=slots``, then the same with ``sub_batch=distinct``, ``--pairs`` times
in alternation, each in a fresh temporary run directory (evaluations cut to the minimum:
8 questions at the start and the end, outside the timed steps). It prints the mean step
time and update-phase time of each form, their ratio, and writes
benchmarks/results/step_time.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "step_time.json")
    args = parser.parse_args()

    import torch

    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.rundir import read_jsonl
    from mgrpo_ref.train import Trainer

    runs = []
    for pair in range(args.pairs):
        for form in ("slots", "distinct"):
            cfg = TrainConfig().override([f"steps={args.steps}", f"sub_batch={form}", "eval_questions=8",
                                          f"eval_every={args.steps}", f"checkpoint_every={args.steps}",
                                          "eval_sampled_temperature=0"])
            run_dir = Path(tempfile.mkdtemp(prefix=f"step-time-{form}-")) / "run"
            with Trainer(cfg, run_dir, progress=False) as trainer:
                trainer.run()
            steps = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["step"] > 0]
            run = {"pair": pair, "sub_batch": form,
                   "step_s": statistics.fmean(r["time/step_s"] for r in steps),
                   "rollout_s": statistics.fmean(r["time/rollout_s"] for r in steps),
                   "update_wall_s": statistics.fmean(r["time/update_wall_s"] for r in steps),
                   "sub_update_s": statistics.fmean(r["sub/update_s"] for r in steps),
                   "main_update_s": statistics.fmean(r["main/update_s"] for r in steps),
                   "sub_rows": statistics.fmean(r["sub/n_rows"] for r in steps)}
            runs.append(run)
            print(f"pair {pair} {form:8s}: step {run['step_s']:.2f} s (rollouts {run['rollout_s']:.2f} s, update "
                  f"phase {run['update_wall_s']:.2f} s; sub update {run['sub_update_s']:.2f} s on "
                  f"{run['sub_rows']:.0f} rows, main update {run['main_update_s']:.2f} s)", flush=True)

    def mean(form: str, key: str) -> float:
        return statistics.fmean(r[key] for r in runs if r["sub_batch"] == form)

    summary = {"command": f"python benchmarks/bench_step_time.py --steps {args.steps} --pairs {args.pairs}",
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
               "ratio_step_distinct_over_slots": mean("distinct", "step_s") / mean("slots", "step_s"),
               "ratio_update_phase_distinct_over_slots": mean("distinct", "update_wall_s") / mean("slots", "update_wall_s"),
               "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"distinct / slots: step time x{summary['ratio_step_distinct_over_slots']:.2f}, update phase "
          f"x{summary['ratio_update_phase_distinct_over_slots']:.2f}  -> {args.out}")


if __name__ == "__main__":
    main()
