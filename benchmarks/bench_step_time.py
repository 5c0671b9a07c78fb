"""``make train``'s step time now, against the code before the speed-ups, in one run.

    python benchmarks/bench_step_time.py [--steps 10] [--pairs 2] [--before 7307547]

Trains the default config (``python -m mgrpo_ref.train``, two worker processes, as
``make train`` does) for ``--steps`` steps in three arms, ``--pairs`` times in alternation,
each in a fresh temporary run directory with evaluations cut to the minimum (8 questions at
the start and the end, outside the timed steps):

    before      the package as it was at commit ``--before`` (extracted with ``git archive``
                into a temporary folder; by default the last commit before the step was
                made faster, whose sub-agent batch is the fixed-shape slot batch)
    now, slots  this tree with ``sub_batch=slots``
    now         this tree with its defaults (the distinct batch)

It prints each arm's mean step time, rollout time and update phase, the ratios of "now"
to the others, and writes benchmarks/results/step_time.json.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine, parser, write_result

SHORT = ["eval_questions=8", "eval_sampled_temperature=0"]


def extract(commit: str) -> Path:
    """The repository's tree at ``commit`` in a temporary folder."""
    where = Path(tempfile.mkdtemp(prefix=f"before-{commit[:7]}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def train(tree: Path, steps: int, overrides: list[str]) -> dict:
    """Run the trainer of ``tree`` and average its step records."""
    from mgrpo_ref.rundir import read_jsonl

    run_dir = Path(tempfile.mkdtemp(prefix="step-time-")) / "run"
    settings = [f"steps={steps}", f"eval_every={steps}", f"checkpoint_every={steps}", *SHORT, *overrides]
    subprocess.run([sys.executable, "-m", "mgrpo_ref.train", "--run-dir", str(run_dir), "--quiet", *settings],
                   cwd=tree, check=True, capture_output=True, env=os.environ | {"PYTHONPATH": str(tree)})
    steps_ = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["step"] > 0]
    return {key: statistics.fmean(r[f"time/{key}"] for r in steps_) for key in ("step_s", "rollout_s", "update_wall_s")} | {
        "sub_rows": statistics.fmean(r["sub/n_rows"] for r in steps_)}


def main() -> None:
    options = parser("step_time", __doc__, steps=10, base=False)
    options.add_argument("--pairs", type=int, default=2)
    options.add_argument("--before", default="7307547", help="the commit to compare against")
    args = options.parse_args()

    before = extract(args.before)
    arms = {"before": (before, []), "now, slots": (ROOT, ["sub_batch=slots"]), "now": (ROOT, [])}
    runs = []
    for pair in range(args.pairs):
        for arm, (tree, overrides) in arms.items():
            run = {"pair": pair, "arm": arm, **train(tree, args.steps, overrides)}
            runs.append(run)
            print(f"pair {pair} {arm:10s}: step {run['step_s']:.2f} s (rollouts {run['rollout_s']:.2f} s, update "
                  f"phase {run['update_wall_s']:.2f} s; {run['sub_rows']:.0f} sub rows)", flush=True)

    def mean(arm: str, key: str) -> float:
        return statistics.fmean(r[key] for r in runs if r["arm"] == arm)

    summary = {"command": f"python benchmarks/bench_step_time.py --steps {args.steps} --pairs {args.pairs} "
                          f"--before {args.before}",
               "machine": machine(),
               "before": args.before,
               "mean_s": {arm: {key: mean(arm, key) for key in ("step_s", "rollout_s", "update_wall_s")} for arm in arms},
               "ratio_step_now_over_before": mean("now", "step_s") / mean("before", "step_s"),
               "ratio_step_now_over_now_slots": mean("now", "step_s") / mean("now, slots", "step_s"),
               "ratio_rollouts_now_over_before": mean("now", "rollout_s") / mean("before", "rollout_s"),
               "ratio_update_phase_now_over_before": mean("now", "update_wall_s") / mean("before", "update_wall_s"),
               "runs": runs}
    print(f"now / before ({args.before}): step time x{summary['ratio_step_now_over_before']:.2f} (rollouts "
          f"x{summary['ratio_rollouts_now_over_before']:.2f}, update phase "
          f"x{summary['ratio_update_phase_now_over_before']:.2f}); now / now with slots: "
          f"x{summary['ratio_step_now_over_now_slots']:.2f}")
    write_result(args.out, summary)


if __name__ == "__main__":
    main()
