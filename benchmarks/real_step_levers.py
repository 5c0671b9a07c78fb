"""The real model's training step with each of the update's memory levers on and off.

    python benchmarks/real_step_levers.py [--base runs/real-model-cpu/sft/adapter] [--steps 1]

Each arm is one run of ``profile_step.py`` on SmolLM2-135M-Instruct after its warm-up
(``benchmarks/real_model_cpu.py --stages warm_up`` leaves the adapter in
runs/real-model-cpu/sft/adapter), in a process of its own so that its peak memory is its own,
with the configuration of the CPU M-GRPO run (B = 4, K = 4, full precision, lr 1e-4, turns of
48 tokens) and the arm's overrides:

    today                    the defaults: microbatches of 16 rows
    checkpointing            activation_checkpointing=true
    token budget             microbatch_tokens=4096
    both                     the two together
    token budget 2048        microbatch_tokens=2048
    token budget 1024        microbatch_tokens=1024
    prefix cache             prefix_cache_mib=2048: generation keeps each conversation's keys and values

``--arms`` runs some of them and keeps the others' figures from an earlier run in ``--out``.

Every arm plays the same step-1 rollouts (the same seeds; the update comes after them), so
its update trains on the same batches. For each arm it records each learner's update time
and the peak resident memory of the process during it, the whole step's time, and their
ratios to "today". Prints a table and writes benchmarks/results/real-model-cpu/levers.json;
each arm's full profile goes beside it (``levers-<arm>.json``), and ``levers.md`` beside it
holds the tables docs/real-model.md shows (``render``): where today's step goes, phase by
phase, against the FLOP rate of its matrix products alone, and the levers.
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import ROOT, RESULTS, command_line, machine, parser, within_project, write_result

ARMS = {"today": [], "checkpointing": ["activation_checkpointing=true"],
        "token budget": ["microbatch_tokens=4096"],
        "both": ["activation_checkpointing=true", "microbatch_tokens=4096"],
        "token budget 2048": ["microbatch_tokens=2048"], "token budget 1024": ["microbatch_tokens=1024"],
        "prefix cache": ["prefix_cache_mib=2048"]}
"""arm -> config overrides on top of the CPU run's."""
CONFIG = ["quantization=none", "questions_per_step=4", "rollouts=4", "lr=1e-4", "max_new_tokens=48"]


def update_figures(profile: dict, learner: str) -> dict:
    row = next(r for r in profile["phases"] if r["phase"] == f"{learner}: the whole update")
    return {"seconds": row["seconds_per_step"], "peak_mib": row["peak_mib"]}


def render(out) -> str:
    """The markdown of ``levers.md``, from ``levers.json`` and today's profile beside it."""
    levers = json.loads(out.read_text())
    today = json.loads((ROOT / levers["arms"]["today"]["profile"]).read_text())
    ordered = today["phases"]
    lines = ["| phase of today's step | seconds | share | tokens processed | GFLOP | GFLOP/s | its matrix products alone | "
             "ratio | peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    floor = 0.0
    for i, row in enumerate(ordered):
        if "gflop" not in row:
            continue
        if row["phase"].endswith(": the whole update"):  # "main: the whole update"
            label = f"update of the {row['phase'].split(':')[0]} learner"
        else:  # "prefill (6 passes)" under "generation, main"
            role = next(r for r in reversed(ordered[:i]) if not r["part_of_the_one_above"])["phase"].split(", ")[1]
            label = f"generation, {role}: {row['phase'].split(' (')[0]}"
        floor += row["gflop"] / row["matmul_gflop_s"]
        lines.append(f"| {label} | {row['seconds_per_step']:.1f} | {100 * row['seconds_per_step'] / today['step_seconds']:.0f}% | "
                     f"{row['tokens']:,.0f} | {row['gflop']:,.0f} | {row['achieved_gflop_s']:.1f} | "
                     f"{row['matmul_gflop_s']:.1f} | x{row['ratio']:.2f} | {row['peak_mib']:,.0f} |")
    counted = sum(r["seconds_per_step"] for r in ordered if "gflop" in r)
    lines.append(f"| the step | {today['step_seconds']:.1f} | | | | | | | |")
    lines += ["", f"The phases above take {counted:.1f} s of the step's {today['step_seconds']:.1f} s; at the rate "
              f"of their matrix products alone they would take {floor:.1f} s. "
              f"Resident after loading both learners: {today['resident_after_loading_mib']:,.0f} MiB.", ""]
    lines += ["| arm | overrides | step (s) | main update (s) | main update peak (MiB) | sub update (s) | "
              "sub update peak (MiB) |", "|---|---|---|---|---|---|---|"]
    for arm, f in levers["arms"].items():
        r, m, sub = f["ratio_to_today"], f["update"]["main"], f["update"]["sub"]
        lines.append(f"| {arm} | {' '.join(f['overrides']) or 'the defaults'} | {f['step_seconds']:.1f} (x{r['step_seconds']:.2f}) | "
                     f"{m['seconds']:.1f} (x{r['main_update_seconds']:.2f}) | {m['peak_mib']:,.0f} (x{r['main_update_peak_mib']:.2f}) | "
                     f"{sub['seconds']:.1f} (x{r['sub_update_seconds']:.2f}) | {sub['peak_mib']:,.0f} (x{r['sub_update_peak_mib']:.2f}) |")
    lines += ["", f"`{levers['command']}` (the last run; each arm's own command is in its profile, "
              f"`levers-<arm>.json`): {levers['steps']} step(s) per arm, each arm in its own process, both learners "
              f"in that process; {levers['machine']}. Peaks are the process's resident memory while the update "
              "ran: one measurement each, on a shared machine."]
    return "\n".join(lines) + "\n"


def main() -> None:
    options = parser("levers", __doc__, steps=1, base=False)
    options.add_argument("--base", default=str(ROOT / "runs" / "real-model-cpu" / "sft" / "adapter"),
                         help="the warmed-up adapter (default: runs/real-model-cpu/sft/adapter)")
    options.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    options.set_defaults(out=RESULTS / "real-model-cpu" / "levers.json")
    args = options.parse_args()
    if not (ROOT / args.base / "adapter_config.json").exists() and not (ROOT / args.base / "config.json").exists():
        sys.exit(f"error: no model at {args.base}; run `python benchmarks/real_model_cpu.py --stages warm_up` first")
    arms = json.loads(args.out.read_text())["arms"] if args.out.exists() else {}
    for arm in args.arms:
        overrides = ARMS[arm]
        out = args.out.with_name(f"levers-{arm.replace(' ', '-')}.json")
        command = [sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--base", str(args.base),
                   "--steps", str(args.steps), "--no-evaluation", "--out", str(out), *CONFIG, *overrides]
        print(f"{arm}: {' '.join(overrides) or 'the defaults'}", flush=True)
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"error: arm {arm!r} failed:\n{proc.stderr[-2000:]}")
        profile = json.loads(out.read_text())
        arms[arm] = {"overrides": overrides, "profile": within_project(out), "step_seconds": profile["step_seconds"],
                     "update": {learner: update_figures(profile, learner) for learner in ("main", "sub")}}
    if "today" not in arms:
        sys.exit("error: no figures of the arm 'today' to compare with; run it too (--arms today ...)")
    arms = {arm: arms[arm] for arm in ARMS if arm in arms}
    today = arms["today"]
    for figures in arms.values():
        figures["ratio_to_today"] = {
            "step_seconds": figures["step_seconds"] / today["step_seconds"],
            **{f"{learner}_update_{key}": figures["update"][learner][key] / today["update"][learner][key]
               for learner in ("main", "sub") for key in ("seconds", "peak_mib")}}
    print(f"{'arm':15s} {'step s':>8s} {'main update s':>14s} {'main peak MiB':>14s} {'sub update s':>13s} "
          f"{'sub peak MiB':>13s}")
    for arm, f in arms.items():
        m, s = f["update"]["main"], f["update"]["sub"]
        print(f"{arm:15s} {f['step_seconds']:8.1f} {m['seconds']:14.1f} {m['peak_mib']:14.0f} {s['seconds']:13.1f} "
              f"{s['peak_mib']:13.0f}")
    write_result(args.out, {"command": command_line("benchmarks/real_step_levers.py", sys.argv[1:]),
                            "machine": machine(), "base": within_project(args.base), "config": CONFIG,
                            "steps": args.steps, "arms": arms})
    table = args.out.with_suffix(".md")
    table.write_text(render(args.out))
    print(f"-> {table}")


if __name__ == "__main__":
    main()
