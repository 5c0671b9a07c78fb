"""What moved before a comparison run collapsed: one run of the comparison again, every step
recorded, and what its own files say (``mgrpo_ref.diagnosis``).

    python benchmarks/collapse_diagnosis.py --arm unaligned --seed 0
    python benchmarks/collapse_diagnosis.py --arm mgrpo --seed 4 --preset cpu
    python benchmarks/collapse_diagnosis.py --report      # README.md again from the JSON files

The run is the comparison's (``compare.run_config``: the preset, the arm's overrides, the
seed), with ``record_steps`` at every step, in runs/collapse/<arm>-s<seed> (resumed if
killed); recording reads the policy without drawing from any generator, so the run is the
one the comparison trained (tests/test_diagnosis.py checks a short run logs the same numbers
with and without it). From its metrics and records: its held-out curve, the step from which
each role's format validity stays below 80% (``diagnosis.format_loss_step``), the steps
before that step, and for a few recorded steps up to it the tokens that carry most of the
gradient (``diagnosis.heaviest_tokens``, ``diagnosis.gradient_split``). Writes
benchmarks/results/collapse/<arm>-s<seed>.json and the README.md beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import ROOT, command_line, within_project

OUT = ROOT / "benchmarks" / "results" / "collapse"
THRESHOLD = 0.8
"""Format validity below which a role counts as having lost its format."""
SHOWN_STEPS = 4
"""Recorded steps whose heaviest tokens are kept: the last ones up to the loss of format."""


def diagnose(run_dir: Path, roles: tuple[str, ...], steps: int) -> dict:
    """The diagnosis of a finished (or stopped) run from its metrics and records."""
    from mgrpo_ref.diagnosis import format_loss_step, gradient_split, heaviest_tokens, steps_before
    from mgrpo_ref.rundir import read_jsonl
    from mgrpo_ref.viewer import read_records

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    evals = {m["step"]: m["eval/accuracy"] for m in metrics if "eval/accuracy" in m}
    lost = {role: format_loss_step(metrics, role, THRESHOLD) for role in roles}
    first = min((s for s in lost.values() if s is not None), default=None)
    anchor = first if first is not None else steps  # a run that kept its format: its last steps
    shown = [s for s in range(max(1, anchor - 3 * (SHOWN_STEPS - 1)), anchor + 1, 3)][-SHOWN_STEPS:]
    tokens = {}
    for step in shown:
        for record in read_records(run_dir, step):
            tokens[f"{step}/{record['learner']}"] = {"split": gradient_split(record["trajectories"]),
                                                     "heaviest": heaviest_tokens(record["trajectories"], 8)}
    return {"held_out": evals, "best": max(evals.values()), "final": evals[max(evals)],
            "format_lost_at": lost, "steps_before": steps_before(metrics, anchor, roles, window=10),
            "tokens": tokens}


def render(results: dict) -> str:
    """README.md: one section per diagnosed run."""
    parts = ["# Collapses, diagnosed\n\nWritten by `python benchmarks/collapse_diagnosis.py`; each run "
             "is the comparison's, every step recorded (see the script's docstring).\n"]
    for name, r in sorted(results.items()):
        d = r["diagnosis"]
        curve = ", ".join(f"{100 * a:.1f} ({s})" for s, a in sorted(d["held_out"].items(), key=lambda kv: int(kv[0])))
        lost = ", ".join(f"{role}: {'step ' + str(s) if s else 'never'}" for role, s in d["format_lost_at"].items())
        parts.append(f"## {name}\n\n`{r['command']}`\n\nHeld-out greedy accuracy (step): {curve}. "
                     f"Format validity below {THRESHOLD:.0%} to the end: {lost}.\n")
        roles = list(d["format_lost_at"])
        head = "| step | " + " | ".join(f"{role} grad norm | {role} sampled NLL | {role} format valid | "
                                        f"{role} reward" for role in roles) + " |"
        rows = [head, "|---" * (1 + 4 * len(roles)) + "|"]
        for row in d["steps_before"]:
            cells = [row["step"]] + [_cell(row[f"{role}/{key}"]) for role in roles
                                     for key in ("grad_norm", "sampled_nll", "format_valid", "reward_mean")]
            rows.append("| " + " | ".join(str(c) for c in cells) + " |")
        parts.append("\n".join(rows) + "\n")
        for key, t in d["tokens"].items():
            step, learner = key.split("/")
            tops = "; ".join(f"{tok['token']!r} {100 * tok['share']:.0f}% (p {tok['mean_p']:.2f}, "
                             f"{100 * tok['from_negative']:.0f}% from A < 0)" for tok in t["heaviest"][:5])
            parts.append(f"- step {step}, {learner}: {100 * t['split']['from_negative']:.0f}% of the gradient weight "
                         f"from A < 0, {100 * t['split']['on_unlikely_tokens']:.0f}% on tokens of p < 0.5; "
                         f"{100 * t['split']['never_sampled_tokens']:.1f}% of its trained tokens at p < 0.001; "
                         f"heaviest: {tops}")
        parts.append("")
    return "\n".join(parts) + "\n"


def _cell(value) -> str:
    return "" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    from mgrpo_ref.compare import ARMS, PRESETS, run_config, train_run
    from mgrpo_ref.step import LAYOUTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", choices=list(ARMS), default="unaligned")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "collapse")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report", action="store_true", help="only write README.md from the JSON files in --out")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, key=value (a smaller run to try it)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        probe = run_config(PRESETS[args.preset], args.arm, args.seed, list(args.overrides))
        every = ",".join(str(s) for s in range(1, probe.steps + 1))
        cfg = run_config(PRESETS[args.preset], args.arm, args.seed,
                         list(args.overrides) + [f"record_steps={every}", "tensorboard=false"])
        run_dir = args.runs / f"{args.arm}-s{args.seed}"
        train_run(cfg, run_dir, progress=True)
        roles = tuple(dict.fromkeys(LAYOUTS[cfg.variant].learners))
        result = {"arm": args.arm, "seed": args.seed, "run": within_project(run_dir),
                  "command": command_line("benchmarks/collapse_diagnosis.py", sys.argv[1:] if argv is None else argv),
                  "diagnosis": diagnose(run_dir, roles, cfg.steps)}
        (args.out / f"{args.arm}-s{args.seed}.json").write_text(json.dumps(result, indent=1) + "\n")
    results = {p.stem: json.loads(p.read_text()) for p in sorted(args.out.glob("*-s*.json"))}
    text = render(results)
    (args.out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
