"""The real model's M-GRPO step at B = 8, K = 8, today's defaults against the levers.

Seconds per trained episode and each worker's peak memory, in the pipeline as a user runs it.

    python benchmarks/real_step_speed.py [--base runs/real-study/warm-up/adapter] [--steps 2]

Each arm trains ``--steps`` steps with ``python -m mgrpo_ref.train`` (two worker processes,
one per learner) from a warm-up adapter (by default the real-model study's,
``benchmarks/real_model_study.py``),
in a run directory of its own in a temporary folder, with the CPU configuration (full
precision, lr 1e-4, turns of 48 tokens) at 8 questions x 8 rollouts, and the arm's overrides:

    today           the defaults
    levers          prefix_cache_mib=2048 microbatch_tokens=1024 activation_checkpointing=true
    levers, bf16    the same with the base in bfloat16 (dtype=bfloat16; the adapters and the
                    optimiser stay in float32): fast where the CPU multiplies bfloat16
                    natively (AMX or AVX-512 BF16; ``machine`` in the result says which)
    no checkpointing, bf16  the prefix cache and the token budget in bfloat16, without
                    activation checkpointing (it recomputes the forward; bfloat16 halves the
                    activations it was there to bound)
    cache and budget  the prefix cache and the token budget alone: what the shared prefix
                    adds to them is "shared prefix" against this arm
    shared prefix   the prefix cache and the token budget, and each group's K rows encoding
                    their common prompt once in the update (share_prefix=32; it does not run
                    under activation checkpointing, so that stays off)
    shared prefix, lean  the same with a quarter of the cache (512 MiB) and half the token
                    budget (512): memory bounded without checkpointing
    shared prefix, lean, bf16  the same with the base in bfloat16: the fastest arm in float32
                    with bfloat16's matrix products on top (it does not compute the same
                    numbers: ``benchmarks/bf16_effect.py`` measures what it changes)
    shared prefix, lean, skip  the lean arm whose updates leave the rows of advantage 0 out
                    of the backward pass (skip_zero_advantage=true): the same gradient

``--arms`` runs some of them ("today" always, first: the ratios are to it).

Evaluations shrink to 6 held-out questions (before the first step and after the last) and
checkpoints to the last step, so the steps are what is measured. From each run's
metrics.jsonl: seconds per trained episode (a step's ``time/step_s`` over its B*K episodes;
the median over the steps; beside it each step's rollouts and its updates, ``time/rollout_s`` and
``time/update_wall_s``, and each learner's update, ``<learner>/update_s``; the two learners
update at once, one core each), and each worker's peak resident memory over its whole run
(``memory/<learner>_host_peak_mib`` of the last step), and their ratios to "today". The arms
run one after the other in one invocation, so the ratios come from one run of this machine.
Writes benchmarks/results/real-model-cpu/speed.json (or ``--out``), and its table beside it
(speed.md; docs/real-model.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from common import ROOT, RESULTS, command_line, machine, parser, within_project, write_result

CACHE_AND_BUDGET = ["prefix_cache_mib=2048", "microbatch_tokens=1024"]
LEVERS = [*CACHE_AND_BUDGET, "activation_checkpointing=true"]
LEAN = ["prefix_cache_mib=512", "microbatch_tokens=512", "share_prefix=32"]
ARMS = {"today": [],
        "levers": LEVERS,
        "levers, bf16": [*LEVERS, "dtype=bfloat16"],
        "no checkpointing, bf16": [*CACHE_AND_BUDGET, "dtype=bfloat16"],
        "cache and budget": CACHE_AND_BUDGET,
        "shared prefix": [*CACHE_AND_BUDGET, "share_prefix=32"],
        "shared prefix, lean": LEAN,
        "shared prefix, lean, bf16": [*LEAN, "dtype=bfloat16"],
        "shared prefix, lean, skip": [*LEAN, "skip_zero_advantage=true"]}
"""arm -> config overrides on top of CONFIG."""
CONFIG = ["quantization=none", "questions_per_step=8", "rollouts=8", "lr=1e-4", "max_new_tokens=48",
          "eval_questions=6", "eval_every=1000", "eval_sampled_temperature=0", "checkpoint_every=1000",
          "tensorboard=false"]


def figures(run: Path, episodes_per_step: int) -> dict:
    from mgrpo_ref.rundir import read_jsonl

    steps = [m for m in read_jsonl(run / "metrics.jsonl") if "time/step_s" in m]
    seconds = [m["time/step_s"] for m in steps]
    return {"step_seconds": [round(s, 1) for s in seconds],
            "rollout_seconds": [round(m["time/rollout_s"], 1) for m in steps],
            "update_seconds": [round(m["time/update_wall_s"], 1) for m in steps],
            "update_seconds_by_learner": {learner: [round(m[f"{learner}/update_s"], 1) for m in steps]
                                          for learner in ("main", "sub")},
            "seconds_per_episode": round(median(seconds) / episodes_per_step, 3),
            "peak_mib": {learner: round(steps[-1][f"memory/{learner}_host_peak_mib"]) for learner in ("main", "sub")}}


def main() -> None:
    options = parser("speed", __doc__, steps=2, base=False)
    options.add_argument("--base", default=str(ROOT / "runs" / "real-study" / "warm-up" / "adapter"),
                         help="the warm-up adapter (default: the real-model study's, runs/real-study/warm-up/adapter)")
    options.add_argument("--arms", nargs="+", choices=list(ARMS)[1:], default=list(ARMS)[1:],
                         help="the arms to run besides today (default: all)")
    options.set_defaults(out=RESULTS / "real-model-cpu" / "speed.json")
    args = options.parse_args()
    if not (Path(args.base) / "adapter_config.json").exists():
        sys.exit(f"error: no adapter at {args.base}; the real-model study's first stage makes one "
                 "(`python benchmarks/real_model_study.py`)")
    arms = {}
    with tempfile.TemporaryDirectory() as folder:
        for arm in ["today", *args.arms]:
            overrides = ARMS[arm]
            run = Path(folder) / arm
            command = [sys.executable, "-m", "mgrpo_ref.train", "--run-dir", str(run), f"base={args.base}",
                       f"steps={args.steps}", *CONFIG, *overrides]
            print(f"{arm}: {' '.join(overrides) or 'the defaults'}", flush=True)
            start = time.time()
            code = subprocess.run(command, cwd=ROOT).returncode
            arms[arm] = {"overrides": overrides, "wall_s": round(time.time() - start, 1)}
            if code == 0:
                arms[arm].update(figures(run, 64))
            else:  # kept, and said: an arm that cannot run at this size is a result too
                killed = " (killed: out of memory?)" if code in (-9, 137) else ""
                arms[arm]["failed"] = f"exit code {code}{killed}"
            print(f"{arm}: {json.dumps(arms[arm])}", flush=True)
    today = arms["today"]
    for f in arms.values():
        if "failed" in f or "failed" in today:
            continue
        f["ratio_to_today"] = {"seconds_per_episode": round(f["seconds_per_episode"] / today["seconds_per_episode"], 3),
                               **{f"{learner}_peak_mib": round(f["peak_mib"][learner] / today["peak_mib"][learner], 3)
                                  for learner in ("main", "sub")}}
    result = {"command": command_line("benchmarks/real_step_speed.py", sys.argv[1:]),
              "base": within_project(args.base), "config": CONFIG, "steps": args.steps, "machine": machine(), "arms": arms}
    write_result(args.out, result)
    args.out.with_suffix(".md").write_text(table(result))
    print(table(result))


def table(result: dict) -> str:
    """The arms side by side, each figure with its ratio to "today" (docs/real-model.md section 6)."""
    phases = all("rollout_seconds" in f for f in result["arms"].values() if "failed" not in f)  # not in older runs
    lines = ["| arm | overrides | step seconds " + ("| rollouts + updates (s) " if phases else "")
             + "| seconds per trained episode | main worker's peak (MiB) | sub worker's peak (MiB) |",
             "|---|---|---|" + ("---|" if phases else "") + "---|---|---|"]
    for arm, f in result["arms"].items():
        if "failed" in f:
            lines.append(f"| {arm} | {' '.join(f['overrides']) or 'the defaults'} | failed: {f['failed']} | | | |"
                         + (" |" if phases else ""))
            continue
        ratio = f.get("ratio_to_today", {"seconds_per_episode": float("nan"), "main_peak_mib": float("nan"),
                                         "sub_peak_mib": float("nan")})
        lines.append(f"| {arm} | {' '.join(f['overrides']) or 'the defaults'} | "
                     f"{', '.join(f'{s:.1f}' for s in f['step_seconds'])} | "
                     + (f"{', '.join(f'{r:.1f} + {u:.1f}' for r, u in zip(f['rollout_seconds'], f['update_seconds']))} | "
                        if phases else "") +
                     f"{f['seconds_per_episode']:.2f} (x{ratio['seconds_per_episode']:.2f}) | "
                     f"{f['peak_mib']['main']:,} (x{ratio['main_peak_mib']:.2f}) | "
                     f"{f['peak_mib']['sub']:,} (x{ratio['sub_peak_mib']:.2f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
