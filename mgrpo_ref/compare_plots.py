"""The comparison's figures, from its results alone (docs/paper.md section 7).

Each figure is drawn from the results that ``compare.run_comparison`` collects, on a
matplotlib ``Figure`` (no pyplot: the same in a script and in a notebook), saved if given a
path and returned so that a notebook shows it:

    plot_accuracy     accuracy.png: held-out accuracy over training per arm, mean and std
                      across seeds, greedy and sampled
    plot_runs         runs.png: one panel per arm, one greedy curve per seed (collapses show here)
    plot_differences  differences.png: each arm against mgrpo with its interval
                      (``compare_tables.differences``), greedy and sampled
    plot_weight_by_calls  weight_by_calls.png: the sub-agent's loss weight on trajectories of
                      rollouts with two calls or more, and its calls per rollout, over training
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .compare_tables import mean_std, multi_call_shares


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
    """The comparison's figure (accuracy.png): held-out accuracy over training in %, greedy and
    sampled, each variant's mean across seeds with a band of one standard deviation either side
    (cut at 0 and 100, where accuracy ends). Saved to ``path`` if given; returns the figure."""
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
            line, = ax.plot(x, [100 * v for v in m], "o-", ms=3, label=f"{variant} ({_seeds(len(runs))})", color=color)
            color = line.get_color()
            ax.fill_between(x, [max(100 * (a - b), 0.0) for a, b in zip(m, sd)],
                            [min(100 * (a + b), 100.0) for a, b in zip(m, sd)], alpha=0.15, color=color)
    axes[0].set(xlabel="training step", ylabel="held-out accuracy (%)", ylim=(0, 100), title="greedy")
    axes[1].set(xlabel="training step", title=f"sampled, T = {results['sampled_temperature']:g}")
    fig.suptitle("lines: mean over seeds; bands: one standard deviation across seeds, cut at 0 and 100", fontsize=9)
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
    columns = max(1, min(columns, len(arms)))  # no empty column beside fewer arms than columns
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
    """Each arm minus the reference (``compare_tables.differences``), with its interval,
    greedy and sampled side by side: a dot and a bar per arm, filled where the difference is
    called (the t interval and the exact test agree), hollow where it is not. Saved to
    ``path`` if given; returns the figure."""
    from matplotlib.figure import Figure

    arms = list(dict.fromkeys(r["variant"] for r in rows))
    fig = Figure(figsize=(11, 0.5 * len(arms) + 1.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, decoding in zip(axes, ("greedy", "sampled")):
        for y, arm in enumerate(arms):
            r = next((r for r in rows if r["variant"] == arm and r["decoding"] == decoding), None)
            if r is None:
                continue
            called = not r["verdict"].startswith("no measurable difference")
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


def plot_weight_by_calls(results: dict, arms: tuple[str, ...] = ("mgrpo", "unaligned"), smooth: int = 5,
                         path: Path | None = None):
    """weight_by_calls.png: the mechanism of alignment, over training. Left, the share of the
    sub-agent's loss weight on trajectories of rollouts that called it twice or more
    (``compare_tables.multi_call_shares``); right, its calls per training rollout: each arm's
    mean across seeds, each run's curve first a trailing mean over ``smooth`` steps, with a
    band of one standard deviation. Arms without the shares are left out. Saved to ``path`` if
    given; returns the figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for arm in arms:
        runs = [r for r in results["runs"] if r["variant"] == arm
                and None not in r.get("curves", {}).get("sub_weight_by_calls", [None])]
        if not runs:
            continue
        curves = [{"curves": {"step": r["curves"]["step"], "train_sub_calls": r["curves"]["train_sub_calls"],
                              "multi": [None if v is None else 100 * v
                                        for v in multi_call_shares(r["curves"]["sub_weight_by_calls"])]}}
                  for r in runs]
        color = None
        for ax, key in zip(axes, ("multi", "train_sub_calls")):
            x, m, sd = band(curves, "step", key, smooth)
            line, = ax.plot(x, m, lw=1.4, color=color, label=f"{arm} ({_seeds(len(runs))})")
            color = line.get_color()
            ax.fill_between(x, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.15, color=color)
    axes[0].set(xlabel="training step", ylabel="% of the sub-agent's loss weight", ylim=(0, 100),
                title="on trajectories of rollouts with 2+ calls")
    axes[1].set(xlabel="training step", ylabel="calls per rollout", title="sub-agent calls per training rollout")
    axes[0].legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_figures(results: dict, out: Path) -> None:
    """accuracy.png and runs.png (where the runs carry their learning curves),
    differences.png, and weight_by_calls.png where the comparison has the alignment's
    weights (``compare_tables.alignment_weights``), in ``out``."""
    if all("curves" in r for r in results["runs"]):
        plot_accuracy(results, out / "accuracy.png")
        plot_runs(results, out / "runs.png")
    if results.get("alignment_weights"):
        plot_weight_by_calls(results, path=out / "weight_by_calls.png")
    plot_differences(results["differences"], out / "differences.png")
