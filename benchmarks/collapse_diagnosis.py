"""What moved before a run collapsed: one run of a comparison or trial again, every step
recorded, and what its own files say (``mgrpo_ref.diagnosis``).

    python benchmarks/collapse_diagnosis.py --arm unaligned --seed 0
    python benchmarks/collapse_diagnosis.py --arm mgrpo --seed 4 --preset cpu
    python benchmarks/collapse_diagnosis.py --arm lr_3e-3 --seed 1 --preset cpu-long \
        --same-as runs/recipes/lr_3e-3-s1 eval_split=validation eval_every=20 checkpoint_every=20
    python benchmarks/collapse_diagnosis.py --report      # README.md again from the JSON files
    python benchmarks/collapse_diagnosis.py --steps runs/recipes --name recipes-cpu   # a trial's own records

The run is the one ``compare`` trains for that arm (any of ``compare.TRAINABLE``, a recipe
too) and seed (``compare.run_config``: the preset, the arm's overrides, the seed, then the
extra overrides given), with ``record_steps`` at every step, in runs/collapse/<arm>-s<seed>
(resumed if killed); recording reads the policy without drawing from any generator, so the
run is the one the comparison trained (tests/test_diagnosis.py checks a short run logs the
same numbers with and without it), and ``--same-as RUN`` counts the numbers it logged that
differ from those of the run first trained. From its metrics and records: its held-out
curve, the step from which each role's format validity stays below 80%
(``diagnosis.format_loss_step``), or, in a run that kept its format, the first evaluation
more than 20 points below the best before it; the steps before that one; the range of each
learner's ratio and clip fraction (``diagnosis.ratio_range``); and for a few recorded steps up
to it the tokens that carry most of the gradient (``diagnosis.heaviest_tokens``,
``diagnosis.gradient_split``). Writes benchmarks/results/collapse/<arm>-s<seed>.json and the
README.md beside it.

``--steps DIR`` trains nothing: it reads the metrics of every run directory in DIR (a
comparison's or a trial's ``--runs``) and keeps each run's per-step records, rounded
(``diagnosis.step_series``: each role's gradient norm, sampled-token NLL, format validity,
reward, mean ratio and clip fraction, and the held-out curve), in steps-<name>.json, which
the README summarises run by run: the sampled-token NLL of each role over windows of
``WINDOW`` steps, and the range of its ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import ROOT, command_line, within_project
from mgrpo_ref.diagnosis import FORMAT_THRESHOLD as THRESHOLD  # below it, a role has lost its format

OUT = ROOT / "benchmarks" / "results" / "collapse"
WINDOW = 20
"""Steps per window of the per-step summaries (``diagnosis.window_means``)."""
SHOWN_STEPS = 4
"""Recorded steps whose heaviest tokens are kept: the last ones up to the loss of format."""


def diagnose(run_dir: Path, roles: dict[str, str], steps: int) -> dict:
    """The diagnosis of a finished (or stopped) run from its metrics and records. The steps
    shown end at the first step from which a role stays below the format threshold; in a run
    that kept its format, at the first held-out evaluation more than ``COLLAPSE_DROP`` points
    below the best before it (the steps shown then span the evaluation interval before it);
    in a run that did neither, at its last step. ``roles``: role -> learner
    (``diagnosis.logged_roles``)."""
    from mgrpo_ref.compare_tables import COLLAPSE_DROP
    from mgrpo_ref.diagnosis import (collapse_eval, format_loss_step, gradient_split, heaviest_tokens,
                                     ratio_range, steps_before)
    from mgrpo_ref.rundir import read_jsonl
    from mgrpo_ref.viewer import read_records

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    evals = {m["step"]: m["eval/accuracy"] for m in metrics if "eval/accuracy" in m}
    lost = {role: format_loss_step(metrics, role, THRESHOLD) for role in roles}
    first = min((s for s in lost.values() if s is not None), default=None)
    fell = collapse_eval(evals, COLLAPSE_DROP / 100)
    window = 10
    if first is not None:
        anchor = first
    elif fell is not None:  # the held-out accuracy fell while the training rollouts kept their format
        anchor = fell[1]
        window = fell[1] - max(s for s in evals if s < fell[1])
    else:  # a run that kept its format and its accuracy: its last steps
        anchor = steps
    stride = max(3, window // SHOWN_STEPS)
    shown = [s for s in range(max(1, anchor - stride * (SHOWN_STEPS - 1)), anchor + 1, stride)][-SHOWN_STEPS:]
    tokens = {}
    for step in shown:
        for record in read_records(run_dir, step):
            tokens[f"{step}/{record['learner']}"] = {"split": gradient_split(record["trajectories"]),
                                                     "heaviest": heaviest_tokens(record["trajectories"], 8)}
    return {"held_out": evals, "best": max(evals.values()), "final": evals[max(evals)],
            "format_lost_at": lost, "fell_at": fell[1] if fell else None,
            "steps_before": steps_before(metrics, anchor, roles, window=window),
            "ratios": {role: ratio_range(metrics, learner) for role, learner in roles.items()}, "tokens": tokens}


def render(results: dict) -> str:
    """README.md: one section per diagnosed run."""
    parts = ["# Collapses, diagnosed\n\nWritten by `python benchmarks/collapse_diagnosis.py`: each "
             "section on one run is that run of a comparison or a trial trained again from its seed with every "
             "step recorded; a section on a trial's own records trains nothing (see the script's docstring).\n"]
    for name, r in sorted(results.items()):
        d = r["diagnosis"]
        curve = ", ".join(f"{100 * a:.1f} ({s})" for s, a in sorted(d["held_out"].items(), key=lambda kv: int(kv[0])))
        lost = ", ".join(f"{role}: {'step ' + str(s) if s else 'never'}" for role, s in d["format_lost_at"].items())
        fell = (f" First evaluation more than 20 points below the best before it: step {d['fell_at']}."
                if d.get("fell_at") else "")
        ratios = "; ".join(f"{role}: {x['min_ratio']:.3f} to {x['max_ratio']:.3f}, clip fraction at most "
                           f"{x['max_clip_frac']:.3f}" for role, x in d.get("ratios", {}).items() if x)
        ratios = f" Mean importance ratio over its {max(x['steps'] for x in d['ratios'].values() if x)} steps, " \
                 f"{ratios}." if ratios else ""
        if "same_as" in r:
            same = r["same_as"]
            ratios += (f" Against the run first trained in `{same['run']}`, {same['differ']} of the "
                       f"{same['values']} numbers it logged differ (times and memory aside).")
        parts.append(f"## {name}\n\n`{r['command']}`\n\nHeld-out greedy accuracy (step): {curve}. "
                     f"Format validity below {THRESHOLD:.0%} to the end: {lost}.{fell}{ratios}\n")
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


def same_numbers(run_dir: Path, original: Path) -> dict:
    """Whether a re-run retraced a run: how many numbers either logged (wall-clock times and
    memory peaks aside) the other did not log alike, at the same step and key; ``values`` counts
    the keys the two logged together."""
    from mgrpo_ref.rundir import METRICS, deterministic, read_jsonl

    def numbers(path: Path) -> dict:
        return {(m["step"], "eval/accuracy" in m, k): v for m in read_jsonl(path / METRICS)
                for k, v in deterministic(m).items() if isinstance(v, (int, float))}

    ours, theirs = numbers(run_dir), numbers(original)
    keys = ours.keys() | theirs.keys()
    return {"run": within_project(original), "values": len(keys),
            "differ": sum(1 for k in keys if ours.get(k, "absent") != theirs.get(k, "absent"))}


def collect_steps(runs: Path) -> dict:
    """Every run directory under ``runs`` (those with a config.json): its variant, seed,
    learning rate and ``diagnosis.step_series``, by directory name."""
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.diagnosis import logged_roles, step_series
    from mgrpo_ref.rundir import CONFIG, METRICS, read_jsonl
    from mgrpo_ref.step import LAYOUTS

    out = {}
    for run_dir in sorted(p for p in runs.iterdir() if (p / CONFIG).exists()):
        cfg = TrainConfig.load(run_dir / CONFIG)
        out[run_dir.name] = {"variant": cfg.variant, "seed": cfg.seed, "lr": cfg.lr,
                             "series": step_series(read_jsonl(run_dir / METRICS), logged_roles(LAYOUTS[cfg.variant]))}
    if not out:
        raise SystemExit(f"{runs}: no run directory (none holds a {CONFIG})")
    return out


def render_steps(name: str, steps: dict) -> str:
    """A README section: per run its held-out greedy curve, each role's mean sampled-token NLL
    over windows of ``WINDOW`` steps, and the range of its mean ratio and clip fraction."""
    from mgrpo_ref.diagnosis import window_means

    lines = [f"## {name}: every run's own records\n\n`{steps['command']}` (trains nothing; it reads "
             f"each run's metrics)\n\nPer run: held-out greedy "
             f"accuracy at each evaluation (%), each role's sampled-token NLL (nats, mean over steps "
             f"1-{WINDOW}, {WINDOW + 1}-{2 * WINDOW}, ...), and over every step the lowest and highest mean "
             f"importance ratio and the largest clip fraction.\n",
             "| run | held out (%) | main sampled NLL by window | sub sampled NLL by window | mean ratio | clip fraction |",
             "|---|---|---|---|---|---|"]
    for run, r in steps["runs"].items():
        x = r["series"]
        cells = [run, " ".join(f"{100 * a:.0f}" for a in x["eval_accuracy"])]
        for role in ("main", "sub"):
            values = x.get(f"{role}/sampled_nll")
            cells.append(" ".join(f"{v:.2f}" for v in window_means(x["step"], values, WINDOW).values())
                         if values else "")
        ratios = [v for role in ("main", "sub") for v in x.get(f"{role}/mean_ratio", []) if v is not None]
        clips = [v for role in ("main", "sub") for v in x.get(f"{role}/clip_frac", []) if v is not None]
        cells += [f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else "", f"{max(clips):.3f}" if clips else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return "" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    from mgrpo_ref.compare import PRESETS, TRAINABLE, run_config, train_run
    from mgrpo_ref.diagnosis import logged_roles
    from mgrpo_ref.step import LAYOUTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", choices=list(TRAINABLE), default="unaligned")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "collapse")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report", action="store_true", help="only write README.md from the JSON files in --out")
    parser.add_argument("--steps", type=Path, metavar="DIR",
                        help="train nothing: keep the per-step records of every run in DIR in --out/steps-NAME.json")
    parser.add_argument("--name", help="the NAME of --steps (default: DIR's name)")
    parser.add_argument("--same-as", type=Path, metavar="RUN",
                        help="the run directory this run was first trained in: count the logged numbers that differ")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, key=value (a smaller run to try it)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.steps:
        name = args.name or args.steps.name
        steps = {"command": command_line("benchmarks/collapse_diagnosis.py", sys.argv[1:] if argv is None else argv),
                 "window": WINDOW, "runs": collect_steps(args.steps)}
        (args.out / f"steps-{name}.json").write_text(json.dumps(steps) + "\n")
    elif not args.report:
        probe = run_config(PRESETS[args.preset], args.arm, args.seed, list(args.overrides))
        every = ",".join(str(s) for s in range(1, probe.steps + 1))
        cfg = run_config(PRESETS[args.preset], args.arm, args.seed,
                         list(args.overrides) + [f"record_steps={every}", "tensorboard=false"])
        run_dir = args.runs / f"{args.arm}-s{args.seed}"
        train_run(cfg, run_dir, progress=True)
        roles = logged_roles(LAYOUTS[cfg.variant])
        result = {"arm": args.arm, "seed": args.seed, "run": within_project(run_dir),
                  "command": command_line("benchmarks/collapse_diagnosis.py", sys.argv[1:] if argv is None else argv),
                  "diagnosis": diagnose(run_dir, roles, cfg.steps)}
        if args.same_as:
            result["same_as"] = same_numbers(run_dir, args.same_as)
        (args.out / f"{args.arm}-s{args.seed}.json").write_text(json.dumps(result, indent=1) + "\n")
    results = {p.stem: json.loads(p.read_text()) for p in sorted(args.out.glob("*-s*.json"))
               if not p.name.startswith("steps-")}
    text = render(results) + "".join("\n" + render_steps(p.stem.removeprefix("steps-"), json.loads(p.read_text()))
                                     for p in sorted(args.out.glob("steps-*.json")))
    (args.out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
