"""The speed tables of the README and docs/results.md, computed from the committed results.

    python benchmarks/speed_table.py        # writes benchmarks/results/speed.md

Reads step_time.json, generation.json, update.json, sub_batch.json, profile_step.json, limits.json and
vs_trl*.json under
benchmarks/results/ (each written by the script of the same name) and writes one markdown
file. The README copies its rows verbatim, and tests/test_docs.py checks both that the
file is what this script makes of the JSON and that the README's rows are in it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def render() -> str:
    lines = ["# Speed", "", "Made by `python benchmarks/speed_table.py` from the JSON files beside it; "
             "every figure on the same 2-core CPU, each ratio measured within one run.", ""]
    step, generation, update = load("step_time.json"), load("generation.json"), load("update.json")
    lines += ["## The step against the code before", "",
              "| measure | before | now | now / before |", "|---|---|---|---|"]
    commands = []
    if step:
        before, now = step["mean_s"]["before"], step["mean_s"]["now"]
        runs = sum(1 for r in step["runs"] if r["arm"] == "now")
        for key, label in (("step_s", "`make train`'s step, two processes (1)"), ("rollout_s", "of which rollouts (1)"),
                           ("update_wall_s", "of which the update phase (1)")):
            lines.append(f"| {label} | {before[key]:.2f} s | {now[key]:.2f} s | x{now[key] / before[key]:.2f} |")
        commands.append(f"- (1) `{step['command']}`: mean step of {runs} runs of each, alternating; before is "
                        f"commit {step['before']}.")
    if generation:
        g = generation["generation"]
        lines.append(f"| generation at equal work, {g['calls']} calls x {g['new_tokens_per_row']} tokens (2) | "
                     f"{g['median_s']['before']:.2f} s | {g['median_s']['now']:.2f} s | x{g['ratio_to_before']['now']:.2f} |")
        commands.append(f"- (2) `{generation['command']}`: median of the repeats.")
    if update:
        for learner in ("main", "sub"):
            rows = [r for r in update["steps"] if r["learner"] == learner]
            before = sum(r["median_s"]["before"] for r in rows) / len(rows)
            now = sum(r["median_s"]["now"] for r in rows) / len(rows)
            lines.append(f"| {learner}-agent update alone, mean over {len(rows)} steps (3) | {before:.2f} s | {now:.2f} s | "
                         f"x{update['median_ratio_to_before'][learner]['now']:.2f} (median of the steps' ratios) |")
        commands.append(f"- (3) `{update['command']}`: each arm's median of the repeats, per step.")
    lines += [""] + commands
    if generation:
        lines += ["", "## Drawing one token", "",
                  "| rows x vocabulary | torch.multinomial | inverse CDF | ratio |", "|---|---|---|---|"]
        for d in generation["draw_alone"]:
            ms = d["median_ms"]
            lines.append(f"| {d['rows']} x {d['vocab']:,} | {ms['multinomial']:.2f} ms | {ms['inverse cdf']:.2f} ms | "
                         f"x{d['ratio_inverse_cdf_over_multinomial']:.3f} |")
        lines += ["", f"`{generation['command']}`: median of 200 draws."]
    sub_batch = load("sub_batch.json")
    if sub_batch:
        lines += ["", "## The sub-agent's batch, slots against distinct", "",
                  "| step | N | slots duplicated | rows (slots / distinct) | tokens (slots / distinct) | "
                  "update (slots / distinct) | ratio |", "|---|---|---|---|---|---|---|"]
        for r in sub_batch["steps"]:
            lines.append(f"| {r['step']} | {r['n_trajectories']} | {100 * r['duplicated_frac']:.1f}% | "
                         f"{r['rows']['slots']} / {r['rows']['distinct']} | {r['row_tokens']['slots']:,} / "
                         f"{r['row_tokens']['distinct']:,} | {r['median_s']['slots']:.2f} s / {r['median_s']['distinct']:.2f} s | "
                         f"x{r['ratio_distinct_over_slots']:.2f} |")
        lines += ["", f"`{sub_batch['command']}`: median of the repeats; {sub_batch['machine']}."]
    profile = load("profile_step.json")
    if profile:
        total = profile["step_seconds"]
        lines += ["", "## Where a step's time goes", "",
                  "| phase | seconds per step | share |", "|---|---|---|"]
        for row in profile["phases"]:
            label = ("· " if row["part_of_the_one_above"] else "") + row["phase"]
            lines.append(f"| {label} | {row['seconds_per_step']:.3f} | {100 * row['seconds_per_step'] / total:.1f}% |")
        lines.append(f"| the step | {total:.3f} | |")
        lines.append(f"| a held-out evaluation of 200 questions, greedy (not part of a step) | "
                     f"{profile['evaluation_seconds']:.3f} | |")
        lines += ["", f"`{profile['command']}`: one process, the phases one after another (the pipeline overlaps "
                  "the two updates); a phase marked · is part of the one above it."]
    limits = load("limits.json")
    if limits:
        lines += ["", "## Against this machine's limits", "",
                  "| measure | achieved | the machine at the same shapes | ratio |", "|---|---|---|---|"]
        for learner in ("main", "sub"):
            rows = [u for u in limits["update"] if u["learner"] == learner]
            achieved = sum(u["achieved_gflop_s"] for u in rows) / len(rows)
            peak = sum(u["matmul_gflop_s"] for u in rows) / len(rows)
            lines.append(f"| {learner}-agent update, useful GFLOP/s ({rows[0]['threads']} thread) | {achieved:.2f} | "
                         f"{peak:.1f} (its matrix products alone) | x{limits['update_ratio_median'][learner]:.3f} (median) |")
        g = limits["generation"]
        lines.append(f"| generation, new tokens/s | {g['tokens_per_s']:.0f} | {g['forward_tokens_per_s']:.0f} (one "
                     f"forward pass of 64 x 128 tokens) | x{g['ratio']:.3f} |")
        lines += ["", f"`{limits['command']}`: counting rules in the script's docstring."]
    for path in sorted(RESULTS.glob("vs_trl*.json"), key=lambda p: (p.name != "vs_trl.json", p.name)):  # base first
        lines += trl_table(json.loads(path.read_text()))
    return "\n".join(lines) + "\n"


def trl_table(trl: dict) -> list[str]:
    """One run of bench_vs_trl.py: each arm's figures, then the matched ratios."""
    model = trl.get("model", "data/base (NF4)")
    where = "" if model.startswith("data/base") else f" on {Path(model).name}"
    lines = ["", f"## Against TRL's GRPOTrainer{where} (TRL {trl['trl']})", "",
             "| trainer | steps/s | new tokens/s | memory before the first step | peak memory |",
             "|---|---|---|---|---|"]
    for arm, m in trl["mean"].items():
        if m["steps_per_s"] is None:
            lines.append(f"| {arm} | failed | failed | failed | failed |")
        else:
            rate = f"{m['steps_per_s']:.2f}" if m["steps_per_s"] >= 0.1 else f"{m['steps_per_s']:.4f}"  # a real model: slow
            lines.append(f"| {arm} | {rate} | {m['new_tokens_per_s']:.0f} | "
                         f"{m['baseline_rss_mb']:.0f} MB | {m['peak_rss_mb']:.0f} MB |")
    for name, r in trl["ratios"].items():
        lines.append(f"| {name} | x{r['steps_per_s']:.2f} | x{r['new_tokens_per_s']:.2f} | "
                     f"x{r['baseline_rss_mb']:.2f} | x{r['peak_rss_mb']:.2f} |")
    lines += ["", f"`{trl['command']}`: {trl['workload']['prompts_per_step']} prompts x "
              f"{trl['workload']['completions_per_prompt']} completions a step, "
              f"{trl['workload']['timed_steps_per_arm']} timed steps per arm and run, each arm in its own process; "
              "resident memory of the whole process, imports included."]
    phased = {}  # our arms' runs that timed their phases: arm -> runs
    for run in trl["runs"]:
        if "generation_s" in run:
            phased.setdefault(run["arm"], []).append(run)
    if phased:
        lines += ["", "| our arm | a step (s) | generation (s) | update (s) | the rest (s) |", "|---|---|---|---|---|"]
        for arm, runs in phased.items():
            mean = {key: sum(sum(r[key]) for r in runs) / sum(len(r[key]) for r in runs)
                    for key in ("step_s", "generation_s", "update_s")}
            rest = mean["step_s"] - mean["generation_s"] - mean["update_s"]
            lines.append(f"| {arm} | {mean['step_s']:.1f} | {mean['generation_s']:.1f} | {mean['update_s']:.1f} | "
                         f"{rest:.1f} |")
        lines += ["", "Means over every timed step of every run; the rest is rewards, advantages and encoding."]
    return lines


if __name__ == "__main__":
    out = RESULTS / "speed.md"
    out.write_text(render())
    sys.stdout.write(render())
    print(f"-> {out}")
