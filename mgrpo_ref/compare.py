"""M-GRPO against its baselines: every variant, several seeds, one budget (PAPER.md section 7).

    python -m mgrpo_ref.compare                         # the committed CPU comparison
    python benchmarks/compare_variants.py               # the same (the benchmark entry point)
    python -m mgrpo_ref.compare --preset gpu            # the GPU-scale configuration
    python -m mgrpo_ref.compare --preset real-gpu       # a warmed-up instruct model on one GPU
    python -m mgrpo_ref.compare --preset smoke --seeds 0 --out /tmp/cmp   # about a minute (CI)

Every arm trains with the same budget: the same config (questions per step, rollouts,
steps, learning rate, seeds, hence the same training questions in the same order). The
hyper-parameters are the pipeline's defaults for all; none was tuned for one arm more than
another. The arms (``ARMS``, all by default; ``--variants`` picks some) are the four variants
(mgrpo, frozen_sub, single_agent, shared), the ablations of ``ABLATIONS`` (M-GRPO with one
of its ideas removed), and ``single_agent_3x`` (``LONGER``: single-agent GRPO on three times
the steps, the one arm off the common budget, reported beside it):

    python -m mgrpo_ref.compare --variants mgrpo frozen_sub --seeds 0 1 2

Each run evaluates on the held-out worlds every few steps, greedily and sampled at
temperature 1 (the trainer's ``eval/...`` and ``eval_sampled/...`` metrics); its step-0
evaluation is the base's. Results go to ``--out``:

    results.json   every run: config, greedy and sampled accuracy (overall, by hops),
                   learning curves (held-out accuracy, each agent's reward, sub calls),
                   and, for a few held-out questions the base gets wrong, its episodes
                   and each run's (greedy, before and after training)
    table.md       mean and standard deviation across seeds, overall and by hop count
    differences.md each variant against mgrpo, paired by seed: the mean difference in
                   held-out accuracy with its 95% interval, and what it allows one to say
                   (``stats.paired_difference``)
    stability.md   each arm's best and final held-out accuracy, its collapsed runs (ended
                   more than 20 points below their best), and the change over the last
                   third of training with its interval: whether the curves had flattened
                   (the interval within +-3 points), were still rising, or allow no verdict
    accuracy.png   held-out accuracy over training per variant, greedy and sampled
    runs.png       one panel per arm, one greedy curve per seed: collapses show here
    differences.png each arm against mgrpo with its interval, greedy and sampled

``python -m mgrpo_ref.compare --report DIR`` writes the tables and the figures again from
DIR/results.json, without training.

Runs live in ``--runs`` (default runs/compare-<preset>); a finished run is not trained
again and a killed one is resumed, so the comparison can be stopped and restarted at will.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from .cli import nonnegative_int, one_line, output_dir
from .config import VARIANTS, TrainConfig
from .episode import transcript
from .evaluate import evaluate, failure_kind, make_agent
from .policy import REPO_ROOT, SamplingSettings, model_location
from .stats import paired_difference
from . import rundir
from .step import LAYOUTS
from .tools import ToolsByWorld
from .train import EVAL_KEYS, Trainer
from .world import WORLD_SCALES, load_questions

PRESETS = {
    # The CPU comparison: every arm x 5 seeds on 2 cores. 60 steps: make train's held-out
    # curves are flat from about step 40 (docs/results.md, "make train").
    "cpu": ["steps=60", "questions_per_step=8", "rollouts=8", "eval_every=10", "checkpoint_every=10"],
    # A larger base, batch and step count for one GPU of 24 GB or less (docs/gpu.md).
    "gpu": ["base=runs/base-gpu", "quantization=nf4", "steps=200", "questions_per_step=32", "rollouts=8",
            "eval_every=20", "checkpoint_every=20", "microbatch=64"],
    # A real instruct model after its supervised warm-up (sft.py), in 4-bit NF4 with bf16
    # compute, for one GPU of 24 GB or less: `make real-gpu` (docs/real-model.md). Its turns
    # are BPE tokens, several per tag, hence the longer turns; LoRA on a pretrained model
    # takes a smaller step than on our tiny base. Not run yet: no figures exist for it.
    "real-gpu": ["base=runs/sft-gpu-SmolLM2-135M-Instruct/adapter", "quantization=nf4", "steps=200",
                 "questions_per_step=16", "rollouts=8", "max_new_tokens=64", "lr=1e-4", "eval_every=20",
                 "checkpoint_every=20", "microbatch=32"],
    # CI: two steps on a handful of questions.
    "smoke": ["steps=2", "questions_per_step=2", "rollouts=2", "eval_every=1", "checkpoint_every=2",
              "eval_questions=8", "max_new_tokens=24"],
}
EPISODES_SHOWN = 3

ABLATIONS = {
    "no_shared_fate": ("mgrpo", ["reward.b2=0"]),  # R_S without the main agent's outcome, Eq. (R2)
    "shared_fate_only": ("mgrpo", ["reward.b3=0"]),  # R_S without the verifier: the authors' release
    "unaligned": ("mgrpo", ["alignment=none"]),  # every sub trajectory once, no D slots
    "stale_sub": ("mgrpo", ["sub_staleness=1"]),  # the sub-agent one step off-policy: the release
}
"""M-GRPO with one of its ideas removed: name -> (variant, config overrides)."""
LONGER = {"single_agent_3x": ("single_agent", 3)}
"""Arms given more steps than the preset's: name -> (variant, factor). Single-agent GRPO
learns slowly here; this shows where it gets to on three times the common budget."""
ARMS = {variant: (variant, []) for variant in VARIANTS} | ABLATIONS | {
    name: (variant, []) for name, (variant, _) in LONGER.items()}
"""What the comparison can train: the four variants, the ablations and the longer arms (``--variants``)."""


def run_config(preset: list[str], arm: str, seed: int, extra: list[str]) -> TrainConfig:
    """The config of one run: the preset, the arm's own overrides (an ablation's), then
    ``extra``; a longer arm's steps are then multiplied by its factor."""
    variant, own = ARMS[arm]
    cfg = TrainConfig().override(preset + own + extra)
    factor = LONGER[arm][1] if arm in LONGER else 1
    return replace(cfg, variant=variant, seed=seed, steps=cfg.steps * factor)


def sampled_temperature(preset: str, overrides: list[str]) -> float:
    """The comparison's sampled-evaluation temperature; a ValueError for a bad override or for
    a config without the sampled evaluation, which the comparison reports."""
    t = run_config(PRESETS[preset], "mgrpo", 0, list(overrides)).eval_sampled_temperature
    if t <= 0:
        raise ValueError("the comparison reports sampled accuracy: eval_sampled_temperature must be > 0")
    return t


def train_run(cfg: TrainConfig, run_dir: Path, progress: bool) -> None:
    """Train ``cfg`` in ``run_dir``: skip if finished, resume if killed, else start. A run
    directory that holds another config is refused, finished or not."""
    if (run_dir / rundir.CONFIG).exists() and TrainConfig.load(run_dir / rundir.CONFIG) != cfg:
        raise FileExistsError(f"{run_dir} holds a run with another config; remove it or choose another --runs")
    done = rundir.latest_checkpoint(run_dir)
    if done is not None and rundir.checkpoint_step(done) >= cfg.steps:
        return
    with Trainer(cfg, run_dir, resume=(run_dir / rundir.CONFIG).exists(), progress=progress) as trainer:
        trainer.run()


def greedy_episodes(cfg: TrainConfig, adapters: Path | None, questions: list, tools_for) -> list:
    """Greedy episodes on ``questions`` by a run's final adapters (or the base if ``adapters``
    is None), decoded in one batch of their own."""
    layout = LAYOUTS[cfg.variant]
    sampling = SamplingSettings(0.0, 1.0, cfg.max_new_tokens)
    loaded = {agent: make_agent(str(adapters / agent) if adapters is not None else cfg.base, seed=cfg.seed,
                                sampling=sampling, quantization=cfg.quantization)
              for agent in dict.fromkeys(layout.learners.values())}
    agents = {role: loaded[agent] for role, agent in layout.learners.items()}
    _, episodes = evaluate(questions, agents, layout.mode, cfg.limits, progress=False, tools_for=tools_for)
    return episodes


def what_happened(episode) -> str:
    """One episode's outcome in words: ``evaluate.failure_kind`` for a multi-agent episode
    (where it first left the gold chain); for a single agent, whether it was correct."""
    if episode.mode == "multi":
        return failure_kind(episode)
    return "correct" if episode.correct else ("format" if not episode.main.format_valid else "wrong answer")


def questions_to_show(cfg: TrainConfig, tools_for, pool: int = 60) -> list:
    """The held-out questions whose episodes the results keep: the first EPISODES_SHOWN of
    two hops or more that the base gets wrong (greedy), where training has something to show;
    topped up with the first questions if there are too few."""
    questions = load_questions(cfg.eval_split)[: min(pool, cfg.eval_questions)]
    wrong = [e.question for e in greedy_episodes(cfg, None, questions, tools_for)
             if not e.correct and e.question.n_hops >= 2]
    return (wrong + [q for q in questions if q not in wrong])[:EPISODES_SHOWN]


def metrics(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl (a last line cut by a crash is dropped, as on resume)."""
    return rundir.read_jsonl(Path(run_dir) / rundir.METRICS)


def report(record: dict, prefix: str) -> dict:
    """One evaluation of a metrics record (``eval`` or ``eval_sampled``) as a small report."""
    return {k: record[f"{prefix}/{k}"] for k in EVAL_KEYS}


def base_and_final(records: list[dict], steps: int, run_dir: Path) -> tuple[dict, dict]:
    """The metrics records (of the run in ``run_dir``) of its step-0 (the base) and last
    evaluation, each holding both the greedy and the sampled evaluation; a clear error otherwise."""
    by_step = {r["step"]: r for r in records if "eval/accuracy" in r and "eval_sampled/accuracy" in r}
    missing = [s for s in (0, steps) if s not in by_step]
    if missing:
        raise ValueError(f"{run_dir}: no greedy and sampled evaluation at step(s) {missing}; the comparison "
                         "needs both at step 0 and at the last step (eval_sampled_temperature > 0)")
    return by_step[0], by_step[steps]


def curves(records: list[dict]) -> dict[str, list]:
    """Learning-curve data from a run's metrics records. Per training step also the format
    validity of each role's rollouts and the gradient norm (before clipping) of each adapter:
    "grad_norm" is the one adapter of single_agent and shared, and main's otherwise."""
    out: dict[str, list] = {"eval_step": [], "eval_accuracy": [], "eval_sampled_accuracy": [],
                            "eval_mean_sub_calls": [], "step": [], "main_reward": [], "sub_reward": [],
                            "train_sub_calls": [], "main_format_valid": [], "sub_format_valid": [],
                            "grad_norm": [], "sub_grad_norm": []}
    for r in records:
        if "eval/accuracy" in r:
            out["eval_step"].append(r["step"])
            out["eval_accuracy"].append(r["eval/accuracy"])
            out["eval_sampled_accuracy"].append(r.get("eval_sampled/accuracy"))
            out["eval_mean_sub_calls"].append(r["eval/mean_sub_calls"])
        if r["step"] > 0:
            out["step"].append(r["step"])
            out["main_reward"].append(r.get("main/reward_mean"))  # the single agent's too
            out["sub_reward"].append(r.get("sub/reward_mean"))
            out["train_sub_calls"].append(r["rollout/mean_sub_calls"])
            out["main_format_valid"].append(r.get("main/format_valid"))
            out["sub_format_valid"].append(r.get("sub/format_valid"))
            out["grad_norm"].append(next((r[f"{name}/grad_norm"] for name in ("main", "single", "shared")
                                          if f"{name}/grad_norm" in r), None))
            out["sub_grad_norm"].append(r.get("sub/grad_norm"))
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def band(runs: list[dict], x_key: str, y_key: str, smooth: int = 1) -> tuple[list, list[float], list[float]]:
    """x, mean and standard deviation across runs of one learning curve; with ``smooth`` > 1
    each run's curve is first a trailing moving mean over that many points."""
    ys = []
    for r in runs:
        y = [float("nan") if v is None else v for v in r["curves"][y_key]]
        ys.append([statistics.fmean(y[max(0, i - smooth + 1):i + 1]) for i in range(len(y))])
    stats = [mean_std(col) for col in zip(*ys)]
    return runs[0]["curves"][x_key], [m for m, _ in stats], [sd for _, sd in stats]


def plot_accuracy(results: dict, path: Path | None = None):
    """The comparison's figure (accuracy.png): held-out accuracy over training, greedy and
    sampled, mean ± std across seeds for each variant. Saved to ``path`` if given; returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: works the same in a script and a notebook

    fig = Figure(figsize=(12, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for variant in results["variants"]:
        runs = [r for r in results["runs"] if r["variant"] == variant]
        if not runs:
            continue
        color = None
        for ax, key in zip(axes, ("eval_accuracy", "eval_sampled_accuracy")):
            x, m, sd = band(runs, "eval_step", key)
            line, = ax.plot(x, m, "o-", label=f"{variant} ({_seeds(len(runs))})", color=color)
            color = line.get_color()
            ax.fill_between(x, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.15, color=color)
    axes[0].set(xlabel="training step", ylabel="held-out accuracy", title="greedy")
    axes[1].set(xlabel="training step", title=f"sampled, T = {results['sampled_temperature']:g}")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8)  # off the curves
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_runs(results: dict, path: Path | None = None, columns: int = 3):
    """runs.png: one panel per arm, each seed's held-out greedy accuracy over training as its
    own line (a mean would hide a run that collapsed), the base's level dotted. Saved to
    ``path`` if given; returns the figure."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    arms = [v for v in results["variants"] if any(r["variant"] == v for r in results["runs"])]
    rows = -(-len(arms) // columns)
    fig = Figure(figsize=(3.6 * columns, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    seeds = sorted({r["seed"] for r in results["runs"]})
    colors = {s: f"C{i % 10}" for i, s in enumerate(seeds)}
    for ax, arm in zip(axes, arms):
        runs = [r for r in results["runs"] if r["variant"] == arm]
        for r in runs:
            ax.plot(r["curves"]["eval_step"], [100 * a for a in r["curves"]["eval_accuracy"]], lw=1.2,
                    color=colors[r["seed"]], label=f"seed {r['seed']}")
        ax.axhline(100 * statistics.fmean(r["base_greedy"]["accuracy"] for r in runs), color="grey", ls=":", lw=1)
        ax.set_title(f"{arm} ({_seeds(len(runs))})", fontsize=9)
        ax.set_ylim(0, 100)
    for ax in axes[len(arms):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("held-out greedy (%)")
    for ax in axes[max(0, len(arms) - columns):len(arms)]:  # the lowest panel of each column
        ax.set_xlabel("training step")
    handles = [Line2D([], [], color=c) for c in colors.values()]  # one per seed, whichever panels it is in
    fig.legend(handles, [f"seed {s}" for s in colors], loc="outside right center", fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _seeds(n: int) -> str:
    return f"{n} seed{'s' * (n != 1)}"


def plot_differences(rows: list[dict], path: Path | None = None):
    """Each arm minus the reference (``differences``), with its interval, greedy and sampled
    side by side: a dot and a bar per arm, filled where the interval excludes 0, hollow where
    the data allow no verdict. Saved to ``path`` if given; returns the figure."""
    from matplotlib.figure import Figure

    arms = list(dict.fromkeys(r["variant"] for r in rows))
    fig = Figure(figsize=(11, 0.5 * len(arms) + 1.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, decoding in zip(axes, ("greedy", "sampled")):
        for y, arm in enumerate(arms):
            r = next((r for r in rows if r["variant"] == arm and r["decoding"] == decoding), None)
            if r is None:
                continue
            called = r["low"] > 0 or r["high"] < 0
            low, high = (max(r["low"], -100), min(r["high"], 100))  # one seed: an unbounded interval
            ax.plot([low, high], [y, y], color="black", lw=1.5)
            ax.plot(r["mean"], y, "o", color="black", markerfacecolor="black" if called else "white")
        ax.axvline(0, color="grey", ls=":", lw=1)
        reference = rows[0]["reference"] if rows else "mgrpo"
        ax.set(xlabel=f"difference from {reference} (points, 95% interval)", title=decoding)
    axes[0].set_yticks(range(len(arms)), [f"{a} ({_seeds(len(next(r for r in rows if r['variant'] == a)['seeds']))})"
                                          for a in arms])
    axes[0].invert_yaxis()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def by_size(report_: dict) -> dict[str, float] | None:
    """A report's accuracy on the default-size and on the large held-out worlds (the mean of
    their per-world accuracies; every world of a split holds as many questions), or None for
    a report without per-world figures or without both sizes."""
    worlds = report_.get("accuracy_by_world")
    if not worlds:
        return None
    sizes = {"default": [], "large": []}
    for seed, accuracy in worlds.items():
        sizes["large" if WORLD_SCALES.get(int(seed), 1) > 1 else "default"].append(accuracy)
    return {size: statistics.fmean(v) for size, v in sizes.items()} if all(sizes.values()) else None


def world_range(reports: list[dict]) -> tuple[float, float] | None:
    """The lowest and highest per-world accuracy, each world's averaged over the reports (seeds)."""
    if not all(r.get("accuracy_by_world") for r in reports):
        return None
    worlds = reports[0]["accuracy_by_world"]
    means = [statistics.fmean(r["accuracy_by_world"][w] for r in reports) for w in worlds]
    return min(means), max(means)


def table(results: dict) -> str:
    """Markdown: one row per variant (and the base), mean ± std across seeds, in percent; with
    held-out worlds of two sizes, greedy accuracy on each size and the range over the worlds."""
    hops = sorted({h for r in results["runs"] for h in r["base_greedy"]["accuracy_by_hops"]}, key=int)
    sized = all(by_size(r["greedy"]) for r in results["runs"])
    head = (["variant", "runs", "greedy", f"sampled (T={results['sampled_temperature']:g})"]
            + (["greedy, default worlds", "greedy, large worlds", "greedy, range over worlds"] if sized else [])
            + [f"greedy, {h} hop{'s' * (h != '1')}" for h in hops])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(values: list[float]) -> str:
        m, s = mean_std([100 * v for v in values])
        return f"{m:.1f} ± {s:.1f}" if len(values) > 1 else f"{m:.1f}"

    def size_cells(reports: list[dict]) -> list[str]:
        if not sized:
            return []
        low, high = world_range(reports)
        return [cell([by_size(r)[size] for r in reports]) for size in ("default", "large")] + [
            f"{100 * low:.1f}-{100 * high:.1f}"]

    for mode in sorted({r["mode"] for r in results["runs"]}):
        # The base: the step-0 evaluation, once per seed (the variants of one mode start from
        # the same base with the same evaluation seed, so their step-0 evaluations coincide).
        runs = list({r["seed"]: r for r in reversed(results["runs"]) if r["mode"] == mode}.values())
        row = [f"base ({mode})", str(len(runs)), cell([r["base_greedy"]["accuracy"] for r in runs]),
               cell([r["base_sampled"]["accuracy"] for r in runs])] + size_cells([r["base_greedy"] for r in runs])
        row += [cell([r["base_greedy"]["accuracy_by_hops"][h] for r in runs]) for h in hops]
        lines.append("| " + " | ".join(row) + " |")
    for variant in results["variants"]:
        runs = [r for r in results["runs"] if r["variant"] == variant]
        if not runs:
            continue
        row = [variant, str(len(runs)), cell([r["greedy"]["accuracy"] for r in runs]),
               cell([r["sampled"]["accuracy"] for r in runs])] + size_cells([r["greedy"] for r in runs])
        row += [cell([r["greedy"]["accuracy_by_hops"][h] for r in runs]) for h in hops]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def differences(results: dict, reference: str = "mgrpo", confidence: float = 0.95) -> list[dict]:
    """Each variant against ``reference``, paired by seed, greedy and sampled: the mean
    difference in held-out accuracy (points, variant minus reference) and its interval.
    Only seeds both have finished count; a variant with no common seed is left out."""
    by = {(r["variant"], r["seed"]): r for r in results["runs"]}
    rows = []
    for variant in results["variants"]:
        if variant == reference:
            continue
        seeds = sorted(s for v, s in by if v == variant and (reference, s) in by)
        if not seeds:
            continue
        for decoding in ("greedy", "sampled"):
            a = [100 * by[(variant, s)][decoding]["accuracy"] for s in seeds]
            b = [100 * by[(reference, s)][decoding]["accuracy"] for s in seeds]
            interval = paired_difference(a, b, confidence)
            rows.append({"variant": variant, "reference": reference, "decoding": decoding, "seeds": seeds,
                         "mean": interval.mean, "low": interval.low, "high": interval.high,
                         "confidence": confidence,
                         "verdict": interval.verdict(f"{variant} higher", f"{variant} lower")})
    return rows


def differences_table(rows: list[dict]) -> str:
    """Markdown: one row per (variant, decoding), the difference in points with its interval."""
    lines = ["| variant - reference | decoding | seeds | difference (points) | 95% interval | verdict |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} - {r['reference']} | {r['decoding']} | {len(r['seeds'])} | {r['mean']:+.1f} | "
                     f"[{r['low']:+.1f}, {r['high']:+.1f}] | {r['verdict']} |")
    return "\n".join(lines) + "\n"


COLLAPSE_DROP = 20.0
"""A run has collapsed when it ends more than this many points below its own best held-out
greedy accuracy during training."""
LATE = 2 / 3
"""Where the last part of a run starts, as a fraction of its steps."""
FLAT_WITHIN = 3.0
"""A curve has flattened when the change over its last part is known to within this many
points either way: the whole interval of the change lies in [-3, +3]."""


def late_step(steps: list[int], total: int) -> int | None:
    """The evaluation step between the base's (0) and the last nearest ``LATE`` of ``total``
    steps (step 40 of 60, 120 of 180); None when the run has no evaluation in between."""
    earlier = [s for s in steps if 0 < s < total]
    return min(earlier, key=lambda s: (abs(s - LATE * total), -s)) if earlier else None


def collapsed(best: float, final: float) -> bool:
    """Whether a run ended more than ``COLLAPSE_DROP`` points below its best (accuracies as fractions;
    the drop is rounded to a millionth of a point, so 0.8 -> 0.6 and 0.7 -> 0.5 are judged alike)."""
    return round(100 * (best - final), 6) > COLLAPSE_DROP


def change_verdict(interval) -> str:
    """What the change of a curve over its last part allows one to say."""
    if interval.n == 1:
        return "one seed: no verdict"
    if interval.low > 0:
        return "still rising"
    if interval.high < 0:
        return "falling"
    if -FLAT_WITHIN <= interval.low and interval.high <= FLAT_WITHIN:
        return "flat"
    return "no measurable change"


def stability(results: dict, confidence: float = 0.95) -> list[dict]:
    """Per arm: how its runs ended against how they went. For each run, the best held-out
    greedy accuracy of any evaluation, whether the run collapsed (ended more than
    ``COLLAPSE_DROP`` points below that best), and the change over the last third of training
    (final minus the evaluation at ``late_step``), greedy and sampled, with its interval
    across seeds. An interval above 0 says the curve was still rising when the budget ran
    out, below 0 that it was falling; one inside [-FLAT_WITHIN, +FLAT_WITHIN] that it had
    flattened; any other interval that covers 0 allows no verdict ("no measurable change")."""
    rows = []
    for variant in results["variants"]:
        runs = [r for r in results["runs"] if r["variant"] == variant and "curves" in r]
        if not runs:
            continue
        row = {"variant": variant, "seeds": [r["seed"] for r in runs],
               "best_greedy": [max(r["curves"]["eval_accuracy"]) for r in runs],
               "final_greedy": [r["greedy"]["accuracy"] for r in runs]}
        row["collapsed"] = [r["seed"] for r, best, final in zip(runs, row["best_greedy"], row["final_greedy"])
                            if collapsed(best, final)]
        c = [r["curves"] for r in runs]
        late = [late_step(curve["eval_step"], curve["eval_step"][-1]) for curve in c]
        row["late_step"] = late[0]
        for decoding, key in (("greedy", "eval_accuracy"), ("sampled", "eval_sampled_accuracy")):
            if None in late:
                row[f"late_change_{decoding}"] = None  # a run evaluated only at its start and end
                continue
            interval = paired_difference(
                [100 * curve[key][-1] for curve in c],
                [100 * curve[key][curve["eval_step"].index(s)] for curve, s in zip(c, late)], confidence)
            row[f"late_change_{decoding}"] = {"mean": interval.mean, "low": interval.low, "high": interval.high,
                                              "verdict": change_verdict(interval)}
        rows.append(row)
    return rows


def stability_table(rows: list[dict]) -> str:
    """Markdown: one row per arm, best and final greedy accuracy (mean over seeds, percent),
    the collapsed runs, and the change over the last third of training."""
    lines = ["| arm | runs | best greedy during training | final greedy | collapsed (seeds) | "
             "change over the last third, greedy (points, 95% interval) | sampled |",
             "|---|---|---|---|---|---|---|"]

    def change(c: dict | None, last: int | None) -> str:
        if c is None:
            return "no evaluation between the first and the last"
        return f"{c['mean']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}] from step {last}: {c['verdict']}"

    for r in rows:
        collapsed = ", ".join(map(str, r["collapsed"])) or "none"
        lines.append(f"| {r['variant']} | {len(r['seeds'])} | {100 * statistics.fmean(r['best_greedy']):.1f} | "
                     f"{100 * statistics.fmean(r['final_greedy']):.1f} | {len(r['collapsed'])} ({collapsed}) | "
                     f"{change(r['late_change_greedy'], r['late_step'])} | "
                     f"{change(r['late_change_sampled'], r['late_step'])} |")
    return "\n".join(lines) + "\n"


def write_reports(results: dict, out: Path) -> None:
    """results.json, table.md, differences.md and stability.md in ``out``."""
    results["differences"] = differences(results)
    results["stability"] = stability(results)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "table.md").write_text(table(results))
    (out / "differences.md").write_text(differences_table(results["differences"]))
    (out / "stability.md").write_text(stability_table(results["stability"]))


def run_comparison(preset: str = "cpu", variants: list[str] = list(ARMS), seeds: list[int] = [0, 1, 2, 3, 4],
                   runs_dir: Path | None = None, out: Path | None = None, overrides: list[str] = [],
                   progress: bool = True, command: str = "") -> dict:
    """Train (or resume, or skip if finished) every variant x seed, evaluate each, and write
    ``results.json`` and ``table.md`` to ``out`` after every run. Returns the results."""
    runs_dir = Path(runs_dir or REPO_ROOT / "runs" / f"compare-{preset}")
    out = Path(out or REPO_ROOT / "benchmarks" / "results" / f"comparison-{preset}")
    out.mkdir(parents=True, exist_ok=True)
    tools_for = ToolsByWorld()
    sampled_t = sampled_temperature(preset, overrides)
    variants, seeds = list(dict.fromkeys(variants)), list(dict.fromkeys(seeds))
    results: dict = {"preset": preset, "overrides": PRESETS[preset] + list(overrides), "variants": variants,
                     "seeds": seeds, "sampled_temperature": sampled_t, "command": command,
                     "base_episodes": {}, "runs": []}
    start = time.time()
    shown = None  # the held-out questions whose episodes are kept, chosen with the first run's base
    # Seeds outside, arms inside: a comparison stopped part way has every arm at its first seeds.
    for seed in seeds:
        for variant in variants:  # a variant, an ablation or a longer arm (ARMS)
            cfg = run_config(PRESETS[preset], variant, seed, list(overrides))
            mode = LAYOUTS[cfg.variant].mode
            run_dir = runs_dir / f"{variant}-s{seed}"
            print(f"[{time.time() - start:6.0f} s] {variant} seed {seed} -> {run_dir}", flush=True)
            train_run(cfg, run_dir, progress=progress)
            records = metrics(run_dir)
            first, last = base_and_final(records, cfg.steps, run_dir)
            if shown is None:
                shown = questions_to_show(cfg, tools_for)
                results["shown_questions"] = [q.qid for q in shown]
            if mode not in results["base_episodes"]:
                base_shown = greedy_episodes(cfg, None, shown, tools_for)
                results["base_episodes"][mode] = [transcript(e) for e in base_shown]
                results.setdefault("base_episode_outcomes", {})[mode] = [what_happened(e) for e in base_shown]
            final_shown = greedy_episodes(cfg, rundir.latest_checkpoint(run_dir), shown, tools_for)
            results["runs"].append({
                "variant": variant, "seed": seed, "mode": mode,
                "config": json.loads((run_dir / rundir.CONFIG).read_text()),
                "base_greedy": report(first, "eval"), "base_sampled": report(first, "eval_sampled"),
                "greedy": report(last, "eval"), "sampled": report(last, "eval_sampled"),
                "curves": curves(records),
                "train_seconds": round(sum(r.get("time/step_s", 0.0) for r in records), 1),
                "episodes": [transcript(e) for e in final_shown],
                "episode_outcomes": [what_happened(e) for e in final_shown]})
            write_reports(results, out)
            print(f"    greedy {100 * last['eval/accuracy']:.1f}%  sampled {100 * last['eval_sampled/accuracy']:.1f}%",
                  flush=True)
    results["seconds"] = round(time.time() - start, 1)
    write_reports(results, out)
    plot_figures(results, out)
    return results


def plot_figures(results: dict, out: Path) -> None:
    """accuracy.png and runs.png (where the runs carry their learning curves) and
    differences.png in ``out``."""
    if all("curves" in r for r in results["runs"]):
        plot_accuracy(results, out / "accuracy.png")
        plot_runs(results, out / "runs.png")
    plot_differences(results["differences"], out / "differences.png")


def main(argv: list[str] | None = None) -> dict:
    """The CLI. Bad input (a negative seed, an unknown preset, a bad key=value override, a
    missing local base model, an --out or --runs that cannot be a directory) is one ``error:``
    line and exit status 2, before anything is trained or written."""
    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--variants", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="arms to train (default: all); ablations: "
                             + ", ".join(f"{name} ({' '.join(o)})" for name, (_, o) in ABLATIONS.items())
                             + "; longer: " + ", ".join(f"{name} ({variant}, {factor}x the steps)"
                                                         for name, (variant, factor) in LONGER.items()))
    parser.add_argument("--seeds", nargs="+", type=nonnegative_int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--runs", type=output_dir, help="run directories (default runs/compare-<preset>)")
    parser.add_argument("--out", type=output_dir, help="results directory (default benchmarks/results/comparison-<preset>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="write the tables and the figures again from DIR/results.json; no training")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run, key=value")
    args = parser.parse_args(argv)
    if args.report is not None:
        try:
            results = json.loads((args.report / "results.json").read_text())
        except (OSError, ValueError) as err:
            parser.error(one_line(err))
        write_reports(results, args.report)
        plot_figures(results, args.report)
        print(table(results))
        print(differences_table(results["differences"]))
        print(stability_table(results["stability"]))
        return results
    try:  # fail on a bad override or a missing local base before any training
        sampled_temperature(args.preset, args.overrides)
        model_location(run_config(PRESETS[args.preset], "mgrpo", 0, list(args.overrides)).base)
    except (ValueError, FileNotFoundError) as err:
        parser.error(one_line(err))
    command = "python -m mgrpo_ref.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        results = run_comparison(args.preset, args.variants, args.seeds, args.runs, args.out, args.overrides,
                                 progress=not args.quiet, command=command.strip())
    except FileExistsError as err:  # a run directory that holds another config: never overwritten
        parser.error(one_line(err))
    print(table(results))
    print(f"{len(results['runs'])} runs in {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
