"""The comparison's statistics and tables, from its results alone (docs/paper.md section 7).

Everything here reads the results that ``compare.run_comparison`` collects (per run: the
greedy and sampled held-out accuracy of the base and of the final adapters, overall, by hop
count and by world, and the learning curves) and trains nothing; ``python -m mgrpo_ref.compare
--report DIR`` writes the tables again from DIR/results.json with it:

    table          mean and standard deviation across seeds, overall, by world size, by hops
    differences    each arm against mgrpo, paired by seed: its 95% t interval, the exact
                   sign-flip test's p-value, and what the two together allow one to say
                   (a difference is called only where both agree; ``intervals``)
    differences_by_size  the same, greedy, on the default-size and on the large worlds
    stability      each arm's best and final accuracy, its collapsed runs (``COLLAPSE_DROP``),
                   and whether its curves had flattened over the last third of training
    alignment_weights  what alignment does to the sub-agent's gradient: its loss weight on
                   trajectories of rollouts with two calls or more, ``unaligned`` against
                   ``mgrpo`` paired by seed; the same by number of calls d, and the weight
                   one rollout with d calls carries against the average rollout
    collapse_timelines  each collapsed run's own curves: when its held-out accuracy fell, and
                   for each role, after the best evaluation, the first update past the
                   gradient clip and the first step its format validity dipped below 80%
                   (``diagnosis.collapse_timeline``)
    write_reports  results.json, table.md, differences.md and stability.md in one directory
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .diagnosis import FORMAT_THRESHOLD, collapse_timeline
from .intervals import paired_difference, paired_verdict, sign_flip_floor, sign_flip_p
from .rundir import write_atomically
from .world import WORLD_SCALES


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def by_size(report: dict) -> dict[str, float] | None:
    """A report's accuracy on the default-size and on the large held-out worlds (the mean of
    their per-world accuracies; every world of a split holds as many questions), or None for
    a report without per-world figures or without both sizes."""
    worlds = report.get("accuracy_by_world")
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
    sized = all(by_size(r["greedy"]) and by_size(r["base_greedy"]) for r in results["runs"])
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
    difference in held-out accuracy (points, variant minus reference), its t interval, the
    exact sign-flip test's p-value and the verdict both tests agree on
    (:func:`intervals.paired_verdict`). Only seeds both have finished count; a variant with
    no common seed is left out."""
    by = {(r["variant"], r["seed"]): r for r in results["runs"]}
    rows = []
    for variant in results["variants"]:
        if variant == reference:
            continue
        seeds = _common_seeds(by, variant, reference)
        if not seeds:
            continue
        for decoding in ("greedy", "sampled"):
            a = [100 * by[(variant, s)][decoding]["accuracy"] for s in seeds]
            b = [100 * by[(reference, s)][decoding]["accuracy"] for s in seeds]
            rows.append({"variant": variant, "reference": reference, "decoding": decoding, "seeds": seeds,
                         "confidence": confidence,
                         **paired_row(a, b, confidence, f"{variant} higher", f"{variant} lower")})
    return rows


def _common_seeds(by: dict, variant: str, reference: str) -> list[int]:
    """The seeds on which both ``variant`` and ``reference`` have a run (``by``: (variant, seed) -> run)."""
    return sorted(s for v, s in by if v == variant and (reference, s) in by)


def differences_by_size(results: dict, reference: str = "mgrpo", confidence: float = 0.95) -> list[dict]:
    """Each variant against ``reference`` on each size of held-out world, greedy, paired by
    seed like :func:`differences`: both arms' accuracy on the default-size and on the large
    worlds (:func:`by_size`, in %), the difference in points with its t interval, the exact
    sign-flip p and the verdict both agree on. Empty when any run lacks per-world figures."""
    if not all(by_size(r["greedy"]) for r in results["runs"]):
        return []
    by = {(r["variant"], r["seed"]): r for r in results["runs"]}
    rows = []
    for variant in results["variants"]:
        seeds = _common_seeds(by, variant, reference)
        if variant == reference or not seeds:
            continue
        for size in ("default", "large"):
            a = [100 * by_size(by[(variant, s)]["greedy"])[size] for s in seeds]
            b = [100 * by_size(by[(reference, s)]["greedy"])[size] for s in seeds]
            rows.append({"variant": variant, "reference": reference, "worlds": size, "seeds": seeds,
                         "confidence": confidence, "variant_accuracy": statistics.fmean(a),
                         "reference_accuracy": statistics.fmean(b),
                         **paired_row(a, b, confidence, f"{variant} higher", f"{variant} lower")})
    return rows


def differences_by_size_table(rows: list[dict]) -> str:
    """Markdown: :func:`differences_by_size`, one row per (variant, world size)."""
    lines = ["| variant - reference | worlds | seeds | variant (%) | reference (%) | difference (points) | 95% interval "
             "| exact p | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} - {r['reference']} | {r['worlds']} | {len(r['seeds'])} | "
                     f"{r['variant_accuracy']:.1f} | {r['reference_accuracy']:.1f} | {r['mean']:+.1f} | "
                     f"[{r['low']:+.1f}, {r['high']:+.1f}] | {r['p_exact']:.4f} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def differences_table(rows: list[dict]) -> str:
    """Markdown: one row per (variant, decoding), the difference in points with its t
    interval and the exact sign-flip test's p-value."""
    lines = ["| variant - reference | decoding | seeds | difference (points) | 95% interval | exact p | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} - {r['reference']} | {r['decoding']} | {len(r['seeds'])} | {r['mean']:+.1f} | "
                     f"[{r['low']:+.1f}, {r['high']:+.1f}] | {r['p_exact']:.4f} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


CALLS = ("both", "t")
"""What a difference may be called by: both tests agreeing (the verdict), or the t interval alone."""


def called(row: dict, by: str = "both") -> str | None:
    """What a row of :func:`differences` calls, "higher" or "lower" (the variant against the
    reference) or None (no measurable difference): by its verdict, both tests agreeing
    (``by="both"``), or by the t interval alone (``by="t"``, the interval excluding 0)."""
    if by not in CALLS:
        raise ValueError(f"by must be one of {CALLS}, got {by!r}")
    if by == "t":
        return "higher" if row["low"] > 0 else "lower" if row["high"] < 0 else None
    for direction in ("higher", "lower"):
        if row["verdict"] == f"{row['variant']} {direction}":
            return direction
    return None


def conclusions(before: list[dict], after: list[dict], before_by: str = "both") -> list[dict]:
    """The differences of an earlier comparison (``before``, its :func:`differences`) beside
    the same (variant, reference, decoding) in a later one (``after``), and what became of
    each conclusion: it "stands" (the same call, or no call in both), "falls" (a call the
    later comparison does not make), "reverses" (the opposite call), is a "new call" (one the
    earlier comparison did not make), or is "not re-run"; where the later comparison has too
    few seeds for its exact test to reach the level (:func:`intervals.sign_flip_floor`: five
    or fewer at 95%), nothing can be called there and the outcome says so. The later comparison's calls are
    its verdicts (both tests); the earlier one's are read ``before_by`` (:func:`called`): a
    write-up may have drawn its conclusions from the t interval alone. In ``before``'s order,
    then the rows only ``after`` has."""
    def key(r: dict) -> tuple[str, str, str]:
        return r["variant"], r["reference"], r["decoding"]

    earlier, later = {key(r): r for r in before}, {key(r): r for r in after}
    rows = []
    for k in list(earlier) + [k for k in later if k not in earlier]:
        old, new = earlier.get(k), later.get(k)
        was = called(old, before_by) if old is not None else None
        now = called(new) if new is not None else None
        if new is None:
            outcome = "not re-run"
        elif sign_flip_floor(len(new["seeds"])) >= 1 - new["confidence"]:
            outcome = f"cannot be called on {len(new['seeds'])} seeds"
        elif was is None:
            outcome = "new call" if now else "stands"
        elif was == now:
            outcome = "stands"
        else:
            outcome = "falls" if now is None else "reverses"
        rows.append({"variant": k[0], "reference": k[1], "decoding": k[2], "before": old, "after": new,
                     "before_call": was, "after_call": now, "outcome": outcome})
    return rows


def conclusions_table(rows: list[dict], before: str = "before", after: str = "after") -> str:
    """:func:`conclusions` as markdown: each difference in points with its t interval, exact p,
    seeds, verdict and what was read from it ("called": higher, lower or none) in the earlier
    (``before``) and the later (``after``) comparison, and what became of the conclusion."""
    def cell(r: dict | None) -> list[str]:
        if r is None:
            return ["", "not run"]
        return [f"{r['mean']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}], p {r['p_exact']:.3g} ({len(r['seeds'])} seeds)",
                r["verdict"]]

    def call(direction: str | None) -> str:
        return "none" if direction is None else direction

    lines = [f"| variant - reference | decoding | {before} | verdict | called | {after} | verdict | called "
             "| the conclusion |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([f"{r['variant']} - {r['reference']}", r["decoding"], *cell(r["before"]),
                                        call(r["before_call"]), *cell(r["after"]), call(r["after_call"]),
                                        r["outcome"]]) + " |")
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


def late_change(steps: list[int], values: list[float], start: int) -> float:
    """How much a curve moved over its last part, from ``start`` to its last step: the rise of
    the least-squares line through its evaluations there, over that span (in the units of
    ``values``). Every evaluation of the last part counts, so one noisy final evaluation moves
    it less than it moves the difference of the two ends; with two evaluations it is that
    difference."""
    late = [(s, v) for s, v in zip(steps, values) if s >= start]
    line = statistics.linear_regression([s for s, _ in late], [v for _, v in late])
    return line.slope * (late[-1][0] - start)


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
    (:func:`late_change` from the evaluation at ``late_step`` on), greedy and sampled, with
    its interval across seeds. An interval above 0 says the curve was still rising when the budget ran
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
            changes = [late_change(curve["eval_step"], [100 * v for v in curve[key]], s) for curve, s in zip(c, late)]
            interval = paired_difference(changes, [0.0] * len(changes), confidence)
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


def collapse_timelines(results: dict) -> list[dict]:
    """One row per collapsed run (``stability``), in the order of ``results["runs"]``: its
    ``variant``, ``seed`` and ``diagnosis.collapse_timeline`` at its own ``max_grad_norm``."""
    down = {(row["variant"], seed) for row in stability(results) for seed in row["collapsed"]}
    return [{"variant": r["variant"], "seed": r["seed"], "clip": r["config"]["max_grad_norm"],
             **collapse_timeline(r["curves"], r["config"]["max_grad_norm"], drop=COLLAPSE_DROP / 100)}
            for r in results["runs"] if (r["variant"], r["seed"]) in down]


def collapse_timelines_table(rows: list[dict]) -> str:
    """Markdown: one row per collapsed run, from ``collapse_timelines``: its best evaluation and
    the first far below it, then per role the first update past the clip and the first step
    its format validity dipped below the threshold, both searched over the training steps after
    the best evaluation and given as step numbers (a role without rollouts, the single agent's
    sub, is blank)."""
    lines = ["| run | best greedy (step) | first 20+ points below it (step) | main: first update past the clip "
             f"| main: first step below {FORMAT_THRESHOLD:.0%} valid | sub: first update past the clip "
             f"| sub: first step below {FORMAT_THRESHOLD:.0%} valid | which came first |",
             "|---|---|---|---|---|---|---|---|"]

    def at(point: tuple | None, fmt: str) -> str:
        return "never" if point is None else f"step {point[0]} ({format(point[1], fmt)})"

    for r in rows:
        cells = [f"`{r['variant']}` s{r['seed']}", f"{100 * r['best'][1]:.1f} ({r['best'][0]})",
                 f"{100 * r['fell'][1]:.1f} ({r['fell'][0]})" if r["fell"] else "none"]
        for role in ("main", "sub"):
            t = r["roles"].get(role)
            cells += [at(t["past_clip"], ".2f"), at(t["format_below"], ".0%")] if t else ["", ""]
        lines.append("| " + " | ".join(cells + [r["order"]]) + " |")
    return "\n".join(lines) + "\n"


def multi_call_shares(shares: list[dict | None]) -> list[float | None]:
    """Step by step, the share of the sub-agent's loss weight on trajectories of rollouts with
    two calls or more, from ``sub/weight_by_calls`` as a run's curves keep it (d -> share);
    None at a step with no sub trajectory, or none logged."""
    return [sum(v for d, v in s.items() if int(d) >= 2) if s else None for s in shares]


def call_shares(shares: list[dict | None]) -> dict[int, float] | None:
    """Each number of calls d's share of the sub-agent's loss weight, the mean over a run's
    training steps (a d absent from a step counts 0 there); None for a run without the shares
    at any step (no sub-agent, or a run begun by code that did not log them), which then pairs
    with nothing. A step with no sub trajectory (an empty dict) is left out."""
    if not shares or None in shares:
        return None
    steps = [s for s in shares if s]
    if not steps:
        return None
    calls = sorted({int(d) for s in steps for d in s})
    return {d: statistics.fmean(s.get(str(d), 0.0) for s in steps) for d in calls}


def multi_call_share(shares: list[dict | None]) -> float | None:
    """The mean over a run's training steps of :func:`multi_call_shares`: the sum of
    :func:`call_shares` over d >= 2 (None where that is None)."""
    by_d = call_shares(shares)
    return None if by_d is None else _at_two_calls_or_more(by_d)


def _at_two_calls_or_more(by_d: dict[int, float]) -> float:
    """The part of :func:`call_shares` on rollouts with two calls or more."""
    return sum(v for d, v in by_d.items() if d >= 2)


def weight_per_rollout(shares: list[dict | None], histograms: list[dict | None]) -> dict[int, float] | None:
    """How much of the sub-agent's loss weight one rollout with d calls carries, against the
    average rollout with at least one call, the mean over a run's training steps: a step's
    share of the weight at d (``sub/weight_by_calls``) divided by its share of the rollouts
    with d calls among those with one or more (``sub/d_histogram``), over the steps that had
    such a rollout. 1 at every d is a gradient that weighs each rollout alike; d / (mean calls)
    one that weighs each trajectory alike. None for a run without both at every step (a run
    begun by code that did not keep the histogram pairs with nothing)."""
    if not shares or not histograms or None in shares or None in histograms or len(shares) != len(histograms):
        return None
    ratios: dict[int, list[float]] = {}
    for share, histogram in zip(shares, histograms):
        rollouts = {int(d): n for d, n in histogram.items() if int(d) >= 1 and n > 0}
        total = sum(rollouts.values())
        if not share or not total:
            continue
        for d, n in rollouts.items():
            ratios.setdefault(d, []).append(share.get(str(d), 0.0) / (n / total))
    return {d: statistics.fmean(v) for d, v in sorted(ratios.items())} or None


def paired_row(a: list[float], b: list[float], confidence: float, higher: str, lower: str) -> dict:
    """The paired difference a - b (seed by seed) with its t interval, the exact sign-flip p
    and the verdict both agree on (``intervals.paired_verdict``)."""
    interval = paired_difference(a, b, confidence)
    p = sign_flip_p([x - y for x, y in zip(a, b)])
    return {"mean": interval.mean, "low": interval.low, "high": interval.high, "p_exact": p,
            "verdict": paired_verdict(interval, p, higher, lower)}


def alignment_weights(results: dict, variant: str = "unaligned", reference: str = "mgrpo",
                      confidence: float = 0.95) -> dict | None:
    """What alignment does to the sub-agent's gradient: for each seed both arms finished,
    the share of its loss weight on multi-call trajectories (:func:`multi_call_share`) and
    the mean number of calls per training rollout, in ``variant`` and ``reference``; the
    paired difference of the share (points, variant minus reference) with its t interval,
    the exact sign-flip p and the verdict both agree on. Then ``by_calls``, one row per number
    of calls d: each arm's share of the weight at d (:func:`call_shares`, in %) with the paired
    difference, and, on the seeds where both arms kept how many rollouts made each number of
    calls, the weight one rollout with d calls carries against the average rollout
    (:func:`weight_per_rollout`) with its paired difference. None when either arm has no run
    with the shares."""
    by = {(r["variant"], r["seed"]): r for r in results["runs"] if "curves" in r}
    share = {key: call_shares(r["curves"].get("sub_weight_by_calls", [None])) for key, r in by.items()}
    per_rollout = {key: weight_per_rollout(r["curves"].get("sub_weight_by_calls", [None]),
                                           r["curves"].get("sub_calls_histogram", [None])) for key, r in by.items()}
    seeds = sorted(s for v, s in by if v == variant and (reference, s) in by
                   and share[(variant, s)] is not None and share[(reference, s)] is not None)
    if not seeds:
        return None
    out = {"variant": variant, "reference": reference, "seeds": seeds}
    for arm in (variant, reference):
        out[arm] = {"multi_call_share": [100 * _at_two_calls_or_more(share[(arm, s)]) for s in seeds],
                    "mean_calls": [statistics.fmean(by[(arm, s)]["curves"]["train_sub_calls"]) for s in seeds]}
    higher, lower = f"{variant} higher", f"{variant} lower"
    out["difference"] = paired_row(out[variant]["multi_call_share"], out[reference]["multi_call_share"],
                                   confidence, higher, lower)
    rollout_seeds = [s for s in seeds if per_rollout[(variant, s)] is not None and per_rollout[(reference, s)] is not None]
    out["by_calls"] = []
    for d in sorted({d for s in seeds for arm in (variant, reference) for d in share[(arm, s)]}):
        a, b = ([100 * share[(arm, s)].get(d, 0.0) for s in seeds] for arm in (variant, reference))
        row = {"calls": d, "seeds": seeds, "share": {variant: a, reference: b},
               "share_difference": paired_row(a, b, confidence, higher, lower), "rollout_seeds": [],
               "per_rollout": None, "per_rollout_difference": None}
        kept = [s for s in rollout_seeds if d in per_rollout[(variant, s)] and d in per_rollout[(reference, s)]]
        if kept:
            a, b = ([per_rollout[(arm, s)][d] for s in kept] for arm in (variant, reference))
            row.update(rollout_seeds=kept, per_rollout={variant: a, reference: b},
                       per_rollout_difference=paired_row(a, b, confidence, higher, lower))
        out["by_calls"].append(row)
    return out


def alignment_table(weights: dict) -> str:
    """:func:`alignment_weights` as markdown: each arm's share of the sub-agent's loss weight
    on multi-call trajectories and its calls per training rollout, mean over the paired seeds,
    and the paired difference of the share with both tests; then the same by number of calls
    d, with the weight one rollout with d calls carries against the average rollout where the
    runs kept their calls' histogram."""
    v, ref, d = weights["variant"], weights["reference"], weights["difference"]
    lines = ["| arm | seeds | sub-agent's loss weight on trajectories of rollouts with 2+ calls (%) "
             "| sub-agent calls per training rollout |", "|---|---|---|---|"]
    for arm in (ref, v):
        row = weights[arm]
        lines.append(f"| {arm} | {len(weights['seeds'])} | {statistics.fmean(row['multi_call_share']):.1f} "
                     f"| {statistics.fmean(row['mean_calls']):.2f} |")
    lines += ["", "| difference | mean (points) | 95% t interval | exact sign-flip p | verdict |", "|---|---|---|---|---|",
              f"| {v} - {ref} | {_paired_cells(d, '+.1f')} |"]
    rows = weights.get("by_calls") or []
    if rows:
        lines += ["", "By number of calls d: each arm's share of the sub-agent's loss weight on trajectories of "
                  "rollouts with d calls (%, mean over steps and seeds), and the paired difference:", "",
                  f"| calls d | seeds | {ref} (%) | {v} (%) | {v} - {ref} (points) | 95% t interval | exact sign-flip p "
                  "| verdict |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['calls']} | {len(r['seeds'])} | {statistics.fmean(r['share'][ref]):.1f} "
                  f"| {statistics.fmean(r['share'][v]):.1f} | {_paired_cells(r['share_difference'], '+.1f')} |"
                  for r in rows]
    kept = [r for r in rows if r["per_rollout"] is not None]
    if kept:
        lines += ["", "The loss weight one rollout with d calls carries, against the average rollout with one call "
                  "or more (1 everywhere: each rollout weighs alike; d over the mean number of calls: each "
                  "trajectory weighs alike), mean over steps and seeds, on the seeds whose runs kept how many "
                  "rollouts made each number of calls:", "",
                  f"| calls d | seeds | {ref} | {v} | {v} - {ref} | 95% t interval | exact sign-flip p | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['calls']} | {len(r['rollout_seeds'])} | {statistics.fmean(r['per_rollout'][ref]):.2f} "
                  f"| {statistics.fmean(r['per_rollout'][v]):.2f} | {_paired_cells(r['per_rollout_difference'], '+.2f')} |"
                  for r in kept]
    return "\n".join(lines) + "\n"


def _paired_cells(row: dict, form: str) -> str:
    """A :func:`paired_row` as four table cells: mean, interval, exact p, verdict."""
    return (f"{row['mean']:{form}} | [{row['low']:{form}}, {row['high']:{form}}] | {row['p_exact']:.3g} "
            f"| {row['verdict']}")


def write_reports(results: dict, out: Path) -> None:
    """results.json, table.md, differences.md and stability.md in ``out``; differences.md
    holds :func:`differences_table`, then :func:`differences_by_size_table` where the runs
    have per-world figures, and ends with :func:`alignment_table` where both ``mgrpo`` and
    ``unaligned`` have runs with the sub-agent's weights by calls, and, where ``results["against"]`` holds an older
    comparison's differences (``compare --report DIR --against OLD``), with
    :func:`conclusions_table`: which of them stand (kept in results.json as ``conclusions``)."""
    results["differences"] = differences(results)
    results["differences_by_size"] = differences_by_size(results)
    results["stability"] = stability(results)
    results["alignment_weights"] = alignment_weights(results)
    against = results.get("against")
    if against is not None:
        results["conclusions"] = conclusions(against["differences"], results["differences"], against["by"])
    write_atomically(out / "results.json", json.dumps(results, indent=1) + "\n")  # a kill mid-write keeps the old file
    (out / "table.md").write_text(table(results))
    aligned = results["alignment_weights"]
    text = differences_table(results["differences"])
    if results["differences_by_size"]:
        text += ("\n## Greedy accuracy by size of world\n\nEach arm against `mgrpo` on the default-size and on "
                 "the large held-out worlds, paired by seed:\n\n" + differences_by_size_table(results["differences_by_size"]))
    if aligned is not None:
        text += "\n## What alignment does to the sub-agent's gradient\n\n" + alignment_table(aligned)
    if against is not None:
        text += (f"\n## Which differences of `{against['results']}` stand\n\n"
                 + ("Its calls read from the t interval alone, this comparison's from both tests.\n\n"
                    if against["by"] == "t" else "")
                 + conclusions_table(results["conclusions"], "earlier", "this comparison"))
    (out / "differences.md").write_text(text)
    (out / "stability.md").write_text(stability_table(results["stability"]))
