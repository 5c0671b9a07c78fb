"""The real-model study: does M-GRPO teach SmolLM2-135M-Instruct on this CPU, against a frozen
sub-agent from the same warm-up, and which of the two trained agents carries the gain?

    make smollm2                                   # once: models/SmolLM2-135M-Instruct
    make real-cpu-study                            # = python benchmarks/real_model_study.py
    python benchmarks/real_model_study.py --report # README.md and the figure again from the JSON files

One command runs the whole study and resumes where it stopped (a finished piece is skipped, a
killed training run resumes from its last checkpoint):

    1. the warm-up: ``sft.warm_up`` of the model on the teacher's demonstrations (``WARM_UP``),
       its adapter in runs/real-study/warm-up/adapter;
    2. ``warm_up.json``: that adapter in both roles, greedy, on every question of
       ``eval_worlds`` (the reported split), each question's outcome kept;
    3. for each seed, for each arm (``ARMS``: ``mgrpo`` and the control ``frozen_sub``), the
       training run from the warm-up (``RECIPE``, in runs/real-study/<arm>-s<seed>, its
       learning curve on the validation split), then its last checkpoint on ``eval_worlds``,
       and for ``mgrpo`` the two swapped teams (trained main with the warm-up's sub, the
       warm-up's main with the trained sub): ``<arm>-s<seed>.json``;
    4. ``README.md``: each run's lift over the warm-up, M-GRPO against the control, the same
       with the seeds together, and the swapped teams, every difference with its 95% interval
       paired by question; and
       ``learning_curves.png``: each run's validation accuracy over training, every point with
       its 95% interval, beside its sub-agent calls per training rollout.

The recipe was chosen on the validation split (docs/results.md, "Which split each choice
was made on"); ``eval_worlds`` is read only here, for the reported figures. Every evaluation
is greedy, so it depends on the adapters alone.

The warm-up is redone where ``runs/`` was lost (a fresh machine): the results record its
adapter's digest, and a warm-up whose digest differs from the one the committed figures were
measured from is refused rather than mixed in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import command_line, within_project  # noqa: E402

MODEL = "models/SmolLM2-135M-Instruct"
RUNS = ROOT / "runs" / "real-study"
OUT = ROOT / "benchmarks" / "results" / "real-study"
WARM_UP = {"steps": 600, "batch_size": 4, "lr": 5e-4, "max_tokens": 512, "demo_hasty": 0.6}
"""The warm-up (``sft.SFTConfig``): chosen on the validation split (trial warm-up-600-steps)."""
RECIPE = ["quantization=none", "steps=60", "questions_per_step=4", "rollouts=8", "lr=1e-4",
          "min_train_hops=2", "min_train_hops_steps=40", "max_new_tokens=48", "microbatch_tokens=1024",
          "prefix_cache_mib=2048", "share_prefix=32", "eval_every=10", "eval_split=validation", "eval_questions=60",
          "eval_sampled_temperature=0", "checkpoint_every=5", "tensorboard=false"]
"""Each run's config over the defaults (``base=`` the warm-up adapter and ``seed=`` are added):
the trial ``mgrpo-w600-hops2-then-all-k8-lr1e-4``, the one that taught the planner when to stop
on the validation split: B = 4 questions x K = 8 rollouts, lr 1e-4, multi-hop questions only
for the first 40 of 60 steps; its learning curve on 60 validation questions every 10 steps.
Three levers of speed that leave the loss as it is (tested): the prefix cache in generation and,
in the update, a token budget per microbatch and each group's prompt encoded once
(``share_prefix``): together, a step at B = 8, K = 8 in under half the time of the defaults
(``real_step_speed.py``, docs/real-model.md section 6)."""
REPORT = "README.md"
"""The report's file name in the results folder."""
FIGURE = "learning_curves.png"
"""The learning curves' file name in the results folder."""
ARMS = ("mgrpo", "frozen_sub")
SEEDS = (0, 1)
MAX_NEW_TOKENS = 48  # of every evaluation's turns, as in training


def digest(adapter: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the adapter's weights."""
    return hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]


def warm_up(model: str, runs: Path) -> Path:
    """The warm-up adapter: trained unless runs/warm-up holds one of the same settings."""
    from mgrpo_ref.sft import SFTConfig, warm_up as train_warm_up

    cfg = SFTConfig(base=model, eval_questions=0, **WARM_UP)
    out = runs / "warm-up"
    done = out / "sft.json"
    if done.exists() and json.loads(done.read_text())["config"] == json.loads(json.dumps(cfg.__dict__)):
        return out / "adapter"
    print(f"warm-up: {WARM_UP['steps']} steps -> {out}", flush=True)
    train_warm_up(cfg, out, progress=True)
    return out / "adapter"


def greedy_outcomes(main: Path | str, sub: Path | str, questions: list, dtype: str) -> dict:
    """The team (main, sub) greedily on ``questions``, its base held in ``dtype`` as in
    training: the report, and each question's outcome in question order (right or not,
    sub-agent calls, what went wrong)."""
    from mgrpo_ref.evaluate import evaluate, failure_counts, failure_kind, make_agent
    from mgrpo_ref.policy import SamplingSettings

    start = time.time()
    greedy = SamplingSettings(0.0, 1.0, MAX_NEW_TOKENS)
    options = {"sampling": greedy, "quantization": "none", "dtype": dtype, "prefix_cache_mib": 2048}
    main_agent = make_agent(str(main), **options)
    sub_agent = main_agent if str(sub) == str(main) else make_agent(str(sub), **options)
    report, episodes = evaluate(questions, {"main": main_agent, "sub": sub_agent}, progress=True)
    keys = ("n", "accuracy", "format_valid", "sub_format_valid", "mean_sub_calls", "accuracy_by_hops", "format_errors")
    return {"main": within_project(main), "sub": within_project(sub), **{k: report[k] for k in keys},
            "failures": failure_counts(episodes), "seconds": round(time.time() - start, 1),
            "questions": [e.question.qid for e in episodes], "correct": [int(e.correct) for e in episodes],
            "sub_calls": [len(e.subs) for e in episodes], "failure": [failure_kind(e) for e in episodes]}


def run_config(arm: str, seed: int, adapter: Path):
    from dataclasses import replace

    from mgrpo_ref.config import TrainConfig

    cfg = TrainConfig().override(RECIPE + [f"base={within_project(adapter)}"])
    return replace(cfg, variant=arm, seed=seed)


def train_and_evaluate(arm: str, seed: int, adapter: Path, runs: Path, questions: list) -> dict:
    """One arm and seed: train (or resume, or skip if finished), then evaluate its last
    checkpoint on ``questions``; for M-GRPO, the swapped teams too."""
    from mgrpo_ref import rundir
    from mgrpo_ref.compare import metrics, train_run

    cfg = run_config(arm, seed, adapter)
    run_dir = runs / f"{arm}-s{seed}"
    train_run(cfg, run_dir, progress=True)
    records = metrics(run_dir)
    checkpoint = rundir.latest_checkpoint(run_dir)
    main = checkpoint / "main"
    sub = checkpoint / "sub" if arm == "mgrpo" else adapter  # frozen_sub: the warm-up's sub-agent
    steps = [r for r in records if r["step"] >= 1 and "time/step_s" in r]
    result = {
        "arm": arm, "seed": seed, "config": json.loads((run_dir / rundir.CONFIG).read_text()),
        "validation_curve": {r["step"]: r["eval/accuracy"] for r in records if "eval/accuracy" in r},
        "validation_detail": validation_detail(records),
        "train_sub_calls": [r["rollout/mean_sub_calls"] for r in steps],
        "main_reward": [r.get("main/reward_mean") for r in steps],
        "main_equal_reward_frac": [r.get("main/equal_reward_frac") for r in steps],
        "seconds_per_step": [round(r["time/step_s"], 1) for r in steps],
        "peak_mib": {learner: max((r.get(f"memory/{learner}_host_peak_mib", 0) for r in steps), default=0)
                     for learner in ("main", "sub")},
        "final": greedy_outcomes(main, sub, questions, cfg.dtype)}
    if arm == "mgrpo":  # which agent carries the gain: each trained agent beside the warm-up's other one
        result["trained_main_warm_up_sub"] = greedy_outcomes(main, adapter, questions, cfg.dtype)
        result["warm_up_main_trained_sub"] = greedy_outcomes(adapter, sub, questions, cfg.dtype)
    return result


def validation_detail(records: list[dict]) -> dict:
    """Each validation evaluation of a run's metrics, by step: its accuracy by number of hops
    and its planner's sub-agent calls per question (what the curve's points are made of)."""
    return {r["step"]: {"accuracy_by_hops": r["eval/accuracy_by_hops"], "mean_sub_calls": r["eval/mean_sub_calls"]}
            for r in records if "eval/accuracy" in r}


def add_validation_detail(path: Path, runs: Path) -> None:
    """A result written before ``validation_detail`` was recorded gains it from its run's own
    metrics, if the run folder is still there; nothing else in the file changes."""
    from mgrpo_ref import rundir
    from mgrpo_ref.compare import metrics

    result = json.loads(path.read_text())
    run_dir = runs / path.stem
    if "validation_detail" in result or not (run_dir / rundir.METRICS).exists():
        return
    detail = validation_detail(metrics(run_dir))
    if sorted(detail) != sorted(int(s) for s in result["validation_curve"]):
        sys.exit(f"error: {within_project(run_dir)} is not the run {within_project(path)} was written from")
    path.write_text(json.dumps({**result, "validation_detail": detail}) + "\n")
    print(f"{path.stem}: validation detail added from {within_project(run_dir)}")


# ---------------------------------------------------------------------------
# The report


def points(interval) -> str:
    """A paired difference of accuracies in points: "+12.1 [+7.0, +17.2]"."""
    return f"{100 * interval.mean:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"


def finished_runs(out: Path) -> dict[tuple[str, int], dict]:
    """The runs finished so far: each ``<arm>-s<seed>.json`` in ``out``, by (arm, seed)."""
    return {(r["arm"], r["seed"]): r for r in (json.loads(p.read_text()) for p in sorted(out.glob("*-s*.json")))}


def report(out: Path) -> str:
    """README.md from the JSON files in ``out``: the runs finished so far."""
    from mgrpo_ref.intervals import paired_difference

    base = json.loads((out / "warm_up.json").read_text())
    runs = finished_runs(out)
    hops = sorted(base["accuracy_by_hops"])
    lines = [f"Greedy accuracy on the {base['n']} questions of `eval_worlds`; each difference is paired by "
             "question, with its 95% Student-t interval (`intervals.paired_difference`).", "",
             "| model | seed | accuracy | " + " | ".join(f"{h} hop{'s' * (h != '1')}" for h in hops)
             + " | sub calls | against the warm-up (points) | seconds per step | peak MiB (main, sub) |",
             "|---" * (7 + len(hops)) + "|",
             f"| warm-up | | {100 * base['accuracy']:.1f}% | "
             + " | ".join(f"{100 * base['accuracy_by_hops'][h]:.1f}" for h in hops)
             + f" | {base['mean_sub_calls']:.2f} | | | |"]
    for (arm, seed), r in sorted(runs.items(), key=lambda kv: (ARMS.index(kv[0][0]), kv[0][1])):
        f = r["final"]
        lift = paired_difference(f["correct"], base["correct"])
        per_step = sum(r["seconds_per_step"]) / len(r["seconds_per_step"])
        lines.append(f"| {arm} | {seed} | {100 * f['accuracy']:.1f}% | "
                     + " | ".join(f"{100 * f['accuracy_by_hops'][h]:.1f}" for h in hops)
                     + f" | {f['mean_sub_calls']:.2f} | {points(lift)} | {per_step:.0f} | "
                     f"{r['peak_mib']['main']:.0f}, {r['peak_mib']['sub']:.0f} |")
    control = ["| seed | mgrpo - frozen_sub (points) | verdict |", "|---|---|---|"]
    for seed in sorted({s for _, s in runs}):
        if ("mgrpo", seed) in runs and ("frozen_sub", seed) in runs:
            d = paired_difference(runs[("mgrpo", seed)]["final"]["correct"], runs[("frozen_sub", seed)]["final"]["correct"])
            control.append(f"| {seed} | {points(d)} | {d.verdict('mgrpo higher', 'mgrpo lower')} |")
    together = seeds_together(runs, base["correct"])
    swap = ["| seed | main | sub | accuracy | against the warm-up (points) |", "|---|---|---|---|---|"]
    for (arm, seed), r in sorted(runs.items()):
        if arm != "mgrpo":
            continue
        for name, (m, s) in (("final", ("trained", "trained")), ("trained_main_warm_up_sub", ("trained", "warm-up")),
                             ("warm_up_main_trained_sub", ("warm-up", "trained"))):
            team = r[name]
            swap.append(f"| {seed} | {m} | {s} | {100 * team['accuracy']:.1f}% | "
                        f"{points(paired_difference(team['correct'], base['correct']))} |")
    return ("\n".join(lines) + "\n\nM-GRPO against the frozen sub-agent, the same seed and budget, paired by question:\n\n"
            + ("\n".join(control) if len(control) > 2 else "(no seed has both arms yet)")
            + ("\n\nThe seeds together: each question's outcome averaged over an arm's seeds, then paired by "
               "question as above:\n\n" + "\n".join(together) if len(together) > 2 else "")
            + "\n\nThe swapped teams of each M-GRPO run:\n\n" + "\n".join(swap) + "\n"
            + (f"\nEach run's learning curve on the validation split, and its planner's sub-agent calls:\n\n"
               f"![learning curves]({FIGURE})\n" if runs else ""))


def seed_mean(runs: dict, arm: str, seeds: list[int]) -> list[float]:
    """Each question's final greedy outcome (1 right, 0 not) averaged over ``arm``'s runs of ``seeds``."""
    outcomes = [runs[arm, seed]["final"]["correct"] for seed in seeds]
    return [sum(column) / len(seeds) for column in zip(*outcomes)]


def seeds_together(runs: dict, warm_up_correct: list[int]) -> list[str]:
    """The report's table of the seeds together: each arm with two seeds or more against the
    warm-up, and M-GRPO against the control on the seeds both have, each question's outcome
    averaged over the seeds and the difference paired by question (its 95% t interval over the
    questions: how sure the figure is given these seeds, not how far another seed would move it)."""
    from mgrpo_ref.intervals import paired_difference

    seeds = {arm: sorted(s for a, s in runs if a == arm) for arm in ARMS}
    rows = ["| difference | seeds | points | verdict |", "|---|---|---|---|"]
    pairs = [(f"{arm} - warm-up", arm, seeds[arm], None) for arm in ARMS]
    common = sorted(set(seeds["mgrpo"]) & set(seeds["frozen_sub"]))
    pairs.append(("mgrpo - frozen_sub", "mgrpo", common, "frozen_sub"))
    for name, arm, used, other in pairs:
        if len(used) < 2:
            continue
        d = paired_difference(seed_mean(runs, arm, used),
                              warm_up_correct if other is None else seed_mean(runs, other, used))
        rows.append(f"| {name} | {', '.join(map(str, used))} | {points(d)} | {d.verdict('higher', 'lower')} |")
    return rows


def validation_points(run: dict) -> list[tuple[int, float, float, float]]:
    """A run's learning curve on the validation split as (step, accuracy, low, high), the
    bounds those of the accuracy's 95% Wilson interval over the questions each evaluation
    read (the question set as a sample: ``intervals.proportion_interval``)."""
    from mgrpo_ref.intervals import proportion_interval
    from mgrpo_ref.world import load_questions

    n = min(run["config"]["eval_questions"], len(load_questions(run["config"]["eval_split"])))
    curve = []
    for step, accuracy in sorted((int(s), a) for s, a in run["validation_curve"].items()):
        share = proportion_interval(round(accuracy * n), n)
        curve.append((step, accuracy, share.low, share.high))
    return curve


def plot_curves(out: Path, path: Path | None = None):
    """The study's learning curves from the JSON files in ``out``: left, each run's greedy
    accuracy on the validation split over training with its 95% interval (step 0 is the
    warm-up); right, its sub-agent calls per training rollout. Saved to ``path`` if given;
    returns the matplotlib Figure (none if no run has finished)."""
    from matplotlib.figure import Figure  # no pyplot: the same in a script and a notebook

    runs = sorted((r for r in finished_runs(out).values() if r["validation_curve"]),
                  key=lambda r: (ARMS.index(r["arm"]), r["seed"]))
    if not runs:
        return None
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    acc_ax, calls_ax = fig.subplots(1, 2)
    seeds = sorted({r["seed"] for r in runs})
    for i, r in enumerate(runs):
        color, style = f"C{ARMS.index(r['arm'])}", ("-", "--", ":", "-.")[seeds.index(r["seed"]) % 4]
        label = f"{r['arm']}, seed {r['seed']}"
        steps, acc, low, high = zip(*validation_points(r))
        shift = 0.3 * (i - (len(runs) - 1) / 2)  # the runs' points side by side around each step, not on top
        acc_ax.errorbar([s + shift for s in steps], [100 * a for a in acc],
                        yerr=[[100 * (a - lo) for a, lo in zip(acc, low)], [100 * (hi - a) for a, hi in zip(acc, high)]],
                        fmt="o", ls=style, ms=3, capsize=2, color=color, label=label)
        calls_ax.plot(range(1, len(r["train_sub_calls"]) + 1), r["train_sub_calls"], ls=style, color=color, label=label)
    acc_ax.set(xlabel="training step", ylabel="validation greedy accuracy (%)", ylim=(0, 100),
               title="bars: 95% interval over the validation questions")
    calls_ax.set(xlabel="training step", ylabel="sub-agent calls per rollout", ylim=(0, None),
                 title="the planner's calls in training")
    fig.legend(*acc_ax.get_legend_handles_labels(), loc="outside right center", fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=MODEL, help=f"the instruct model's directory (default {MODEL})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--questions", type=int, default=None,
                        help="the first N questions of eval_worlds (default: all; fewer only to try the command)")
    parser.add_argument("--runs", type=Path, default=RUNS, help="the runs (default runs/real-study)")
    parser.add_argument("--out", type=Path, default=OUT, help="the results (default benchmarks/results/real-study)")
    parser.add_argument("--report", action="store_true",
                        help=f"only write {REPORT} and {FIGURE} from the results already there")
    args = parser.parse_args(argv)
    if args.report:
        print(write_report(args.out), end="")
        return
    if not (ROOT / args.model / "config.json").exists() and not (Path(args.model) / "config.json").exists():
        sys.exit(f"error: no model at {args.model}; run `make smollm2` first")
    from mgrpo_ref.world import load_questions

    questions = load_questions("eval_worlds")[:args.questions]
    args.out.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks/real_model_study.py", sys.argv[1:] if argv is None else argv)
    adapter = warm_up(args.model, args.runs)
    warm_up_digest = digest(adapter)  # read once: the adapter is some 20 MB
    base_file = args.out / "warm_up.json"
    if base_file.exists():
        recorded = json.loads(base_file.read_text())["digest"]
        if recorded != warm_up_digest:
            sys.exit(f"error: the warm-up in {within_project(adapter)} (digest {warm_up_digest}) is not the one "
                     f"the results in {within_project(args.out)} were measured from ({recorded}); "
                     "move those results away to start the study again")
    else:
        print("warm-up: evaluating on eval_worlds", flush=True)
        trained = json.loads((adapter.parent / "sft.json").read_text())
        base = {"digest": warm_up_digest, "warm_up": WARM_UP, "model": args.model,
                "warm_up_seconds": trained["seconds"],
                **greedy_outcomes(adapter, adapter, questions, run_config("mgrpo", 0, adapter).dtype),
                "command": command}
        base_file.write_text(json.dumps(base) + "\n")
    for seed in args.seeds:  # seeds outside: a study stopped part way has both arms of its first seeds
        for arm in args.arms:
            path = args.out / f"{arm}-s{seed}.json"
            if path.exists():
                print(f"{arm} seed {seed}: done ({within_project(path)})")
                add_validation_detail(path, args.runs)
                continue
            print(f"{arm} seed {seed}: training -> {within_project(args.runs / f'{arm}-s{seed}')}", flush=True)
            result = train_and_evaluate(arm, seed, adapter, args.runs, questions)
            path.write_text(json.dumps({**result, "warm_up_digest": warm_up_digest, "command": command}) + "\n")
            print(f"{arm} seed {seed}: {100 * result['final']['accuracy']:.1f}% on eval_worlds", flush=True)
            write_report(args.out)
    print(write_report(args.out), end="")


def write_report(out: Path) -> str:
    """README.md and learning_curves.png in ``out`` from its JSON files; returns README.md's text."""
    text = report(out)
    (out / REPORT).write_text(text)
    plot_curves(out, out / FIGURE)
    return text


if __name__ == "__main__":
    main()
