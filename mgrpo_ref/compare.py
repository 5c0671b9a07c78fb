"""M-GRPO against its baselines: every variant, several seeds, one budget (docs/paper.md section 7).

    python -m mgrpo_ref.compare                         # the 60-step CPU comparison, 5 seeds
    python benchmarks/compare_variants.py               # the same (the benchmark entry point)
    python -m mgrpo_ref.compare --preset gpu            # the GPU-scale configuration
    python -m mgrpo_ref.compare --preset real-gpu       # a warmed-up instruct model on one GPU
    python -m mgrpo_ref.compare --preset smoke --seeds 0 --out /tmp/cmp   # about a minute (CI)
    python -m mgrpo_ref.compare --preset cpu-long --seeds 0 1 2 3 4 5 6 7 \
        --seeds-for no_shared_fate=6 shared_fate_only=6 stale_sub=6 single_agent_3x=6
                                                        # the committed CPU comparison: 120 steps

Every arm trains with the same budget: the same config (questions per step, rollouts,
steps, learning rate, seeds, hence the same training questions in the same order). The
hyper-parameters are the pipeline's defaults for all; none was tuned for one arm more than
another. The arms (``ARMS``, all by default; ``--variants`` picks some) are the four variants
(mgrpo, frozen_sub, single_agent, shared), the ablations of ``ABLATIONS`` (M-GRPO with one
of its ideas removed), and ``single_agent_3x`` (``LONGER``: single-agent GRPO on three times
the steps, the one arm off the common budget, reported beside it):

    python -m mgrpo_ref.compare --variants mgrpo frozen_sub --seeds 0 1 2

``RECIPES`` are M-GRPO under other recipes (another learning rate, a warm-up and decay, a KL
term, a tighter gradient clip, a per-role learning rate), trained only when ``--variants``
names them: the candidates tried on the validation split beside ``mgrpo``:

    python -m mgrpo_ref.compare --preset cpu-long --variants mgrpo lr_3e-4 lr_3e-3 warmup_decay \
        kl_0.04 clip_0.3 sub_lr_3e-4 --seeds 0 1 2 --runs runs/recipes --out benchmarks/results/recipes-cpu \
        eval_split=validation eval_every=20 checkpoint_every=20

``--seeds-for ARM=N`` gives an arm only the first N of ``--seeds`` (the arms a write-up leads
with get more seeds than the rest); arms are paired on the seeds they share.

Each run evaluates on the held-out worlds every few steps, greedily and sampled at
temperature 1 (the trainer's ``eval/...`` and ``eval_sampled/...`` metrics); its step-0
evaluation is the base's. Results go to ``--out``:

    results.json   every run: config, greedy and sampled accuracy (overall, by hops),
                   learning curves (held-out accuracy, each agent's reward, sub calls),
                   for a few held-out questions the base gets wrong, its episodes
                   and each run's (greedy, before and after training), and each team's
                   greedy held-out episodes counted by where they failed, before and after
    table.md       mean and standard deviation across seeds, overall and by hop count
    differences.md each variant against mgrpo, paired by seed: the mean difference in
                   held-out accuracy with its 95% t interval, the exact sign-flip test's
                   p-value, and what the two together allow one to say (``intervals``);
                   where both ran, it ends with what alignment does to the sub-agent's
                   gradient: its loss weight on trajectories of rollouts with two calls or
                   more, ``unaligned`` against ``mgrpo`` paired by seed, with both tests, then
                   by number of calls d (its share, and the weight one rollout carries)
    stability.md   each arm's best and final held-out accuracy, its collapsed runs (ended
                   more than 20 points below their best), and the change over the last
                   third of training with its interval: whether the curves had flattened
                   (the interval within +-3 points), were still rising, or allow no verdict
    accuracy.png   held-out accuracy over training per variant, greedy and sampled
    runs.png       one panel per arm, one greedy curve per seed: collapses show here
    differences.png each arm against mgrpo with its interval, greedy and sampled
    weight_by_calls.png that weight and the sub-agent's calls per rollout over training
                   (where both ran)

This module trains the arms and collects each run's results; the statistics and the tables
are ``compare_tables``'s, the figures ``compare_plots``'s. ``python -m mgrpo_ref.compare
--report DIR`` writes the tables and the figures again from DIR/results.json, without training;
with ``--against OLD`` differences.md also says which of an older comparison's differences stand in
DIR's, fall, reverse, or are new (``compare_tables.conclusions``).

Runs live in ``--runs`` (default runs/compare-<preset>); a finished run is not trained
again and a killed one is resumed, so the comparison can be stopped and restarted at will.
After each run it prints the run's final accuracy and the time the rest of the plan would
take at the pace of the runs trained so far (their evaluations included).
A run that ``--out``'s results.json already records with the same config is not trained
again either, nor evaluated: its record is kept as it is. A comparison longer than the
life of one machine's run directories thus goes on from its committed results.json alone.
A results.json that records a planned arm and seed under another config, or a run the new
plan leaves out, is refused, as a run directory is, and never overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from .cli import existing_dir, nonnegative_int, one_line, output_dir
from .compare_plots import plot_figures
from .compare_tables import CALLS, differences_table, stability_table, table, write_reports
from .config import VARIANTS, TrainConfig
from .episode import transcript
from .evaluate import evaluate, failure_kind, make_agent
from .intervals import SIGN_FLIP_MAX_PAIRS
from .policy import REPO_ROOT, SamplingSettings, model_location, within_project
from . import rundir
from .step import LAYOUTS
from .tools import ToolsByWorld
from .train import EVAL_KEYS, Trainer
from .world import load_questions

PRESETS = {
    # The first CPU comparison: every arm x 5 seeds on 2 cores. 60 steps: the make train curve of
    # the time was level from about step 40 (docs/history.md, "The comparison on the fourth base").
    "cpu": ["steps=60", "questions_per_step=8", "rollouts=8", "eval_every=10", "checkpoint_every=10"],
    # The committed CPU comparison: the same on twice the steps, a recipe and horizon chosen on
    # the validation split (docs/results.md, "Over three times the horizon").
    "cpu-long": ["steps=120", "questions_per_step=8", "rollouts=8", "eval_every=10", "checkpoint_every=10"],
    # A larger base, batch and step count for one GPU of 24 GB or less (docs/gpu.md).
    "gpu": ["base=runs/base-gpu", "quantization=nf4", "steps=200", "questions_per_step=32", "rollouts=8",
            "eval_every=20", "checkpoint_every=20", "microbatch=64"],
    # A real instruct model after its supervised warm-up (sft.py), in 4-bit NF4 with bf16
    # compute, for one GPU of 24 GB or less: `make real-gpu` (docs/real-model.md). Its turns
    # are BPE tokens, several per tag, hence the longer turns. What the CPU trials on the
    # validation split taught (docs/results.md): groups of K = 8 (at K = 4 many steps had no
    # group with a reward difference), lr 1e-4 (at 3e-4 the groups' rewards became equal
    # within 6 steps), and multi-hop questions alone for the first two-thirds (the study's 40 of
    # 60 steps, the curriculum that taught SmolLM2's planner to go on, then when to stop, and
    # lifted its held-out accuracy; in half the steps it did not hold). With three levers of
    # speed that leave the loss as it is: the prefix cache in generation, each group's prompt
    # encoded once in the update, and no backward pass for the rows of advantage 0 (many, from
    # a warm-up). Not run yet: no figures exist for it.
    "real-gpu": ["base=runs/sft-gpu-SmolLM2-135M-Instruct/adapter", "quantization=nf4", "steps=180",
                 "questions_per_step=16", "rollouts=8", "min_train_hops=2", "min_train_hops_steps=120",
                 "max_new_tokens=64", "lr=1e-4", "eval_every=20", "checkpoint_every=20", "microbatch=32",
                 "prefix_cache_mib=2048", "share_prefix=32", "skip_zero_advantage=true"],
    # CI: two steps on a handful of questions.
    "smoke": ["steps=2", "questions_per_step=2", "rollouts=2", "eval_every=1", "checkpoint_every=2",
              "eval_questions=8", "max_new_tokens=24"],
}
EPISODES_SHOWN = 3

ABLATIONS = {
    "no_shared_fate": ("mgrpo", ["reward.b2=0"]),  # R_S without the main agent's outcome, Eq. (R2)
    "shared_fate_only": ("mgrpo", ["reward.b3=0"]),  # R_S without the verifier (the release has none either, with b2 = 0.9)
    "unaligned": ("mgrpo", ["alignment=none"]),  # every sub trajectory once, no D slots
    "stale_sub": ("mgrpo", ["sub_staleness=1"]),  # the sub-agent one step off-policy: the release
}
"""M-GRPO with one of its ideas removed: name -> (variant, config overrides)."""
LONGER = {"single_agent_3x": ("single_agent", 3)}
"""Arms given more steps than the preset's: name -> (variant, factor). Single-agent GRPO
learns slowly here; this shows where it gets to on three times the common budget."""
ARMS = {variant: (variant, []) for variant in VARIANTS} | ABLATIONS | {
    name: (variant, []) for name, (variant, _) in LONGER.items()}
"""The comparison's arms: the four variants, the ablations and the longer arms (all by default)."""
RECIPES = {
    "lr_3e-4": ("mgrpo", ["lr=3e-4"]),  # a smaller learning rate
    "lr_3e-3": ("mgrpo", ["lr=3e-3"]),  # a larger one
    "warmup_decay": ("mgrpo", ["warmup_ratio=0.1", "lr_schedule=linear"]),  # up over a tenth of the steps, then down
    "kl_0.04": ("mgrpo", ["kl_coef=0.04"]),  # a k3 KL term to the reference, DeepSeekMath's weight
    "clip_0.3": ("mgrpo", ["max_grad_norm=0.3"]),  # a tighter clip of each adapter's gradient norm
    "sub_lr_3e-4": ("mgrpo", ["sub_lr=3e-4"]),  # a per-role learning rate: the sub-agent's lower
}
"""M-GRPO under another recipe than the comparison's (lr 1e-3, constant, no KL term, the
gradient norm clipped at 1): the candidates tried on the validation split against ``mgrpo``,
paired by seed (docs/results.md, "Other recipes"). Trained only where ``--variants`` names them."""
TRAINABLE = ARMS | RECIPES


def run_config(preset: list[str], arm: str, seed: int, extra: list[str]) -> TrainConfig:
    """The config of one run: the preset, the arm's own overrides (an ablation's), then
    ``extra``; a longer arm's steps are then multiplied by its factor, and so is the length of
    its curriculum (``min_train_hops_steps``): the same schedule, stretched."""
    variant, own = TRAINABLE[arm]
    cfg = TrainConfig().override(preset + own + extra)
    factor = LONGER[arm][1] if arm in LONGER else 1
    return replace(cfg, variant=variant, seed=seed, steps=cfg.steps * factor,
                   min_train_hops_steps=cfg.min_train_hops_steps * factor)


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
    if done is not None and rundir.checkpoint_problem(done) is None and rundir.checkpoint_step(done) >= cfg.steps:
        return  # finished, and its final checkpoint is intact (a broken one is redone by the resume)
    with Trainer(cfg, run_dir, resume=(run_dir / rundir.CONFIG).exists(), progress=progress) as trainer:
        trainer.run()


def steps_left(run_dir: Path, cfg: TrainConfig) -> int:
    """The training steps ``cfg``'s run in ``run_dir`` has still to take: all of them unless a
    checkpoint holds some (a killed run resumes from its latest). Only an estimate's input: a
    checkpoint whose marker names no step counts as none, and the resume says what is wrong."""
    done = rundir.latest_checkpoint(run_dir)
    try:
        return cfg.steps - (0 if done is None else min(cfg.steps, rundir.checkpoint_step(done)))
    except rundir.ResumeError:
        return cfg.steps


def time_left(seconds: float, steps_taken: int, steps_to_take: int) -> str:
    """What remains at this pace: ``steps_to_take`` more training steps at the ``seconds`` per
    ``steps_taken`` the runs finished so far took (their evaluations included), in words."""
    if steps_taken <= 0:
        return "time left: not known until a run has finished"
    left = seconds / steps_taken * steps_to_take
    return f"about {left / 3600:.1f} h left at this pace" if left >= 5400 else f"about {left / 60:.0f} min left at this pace"


def greedy_episodes(cfg: TrainConfig, adapters: Path | None, questions: list, tools_for) -> list:
    """Greedy episodes on ``questions`` by a run's final adapters (or the base if ``adapters``
    is None), decoded in one batch of their own."""
    layout = LAYOUTS[cfg.variant]
    sampling = SamplingSettings(0.0, 1.0, cfg.max_new_tokens)
    loaded = {learner: make_agent(str(adapters / learner) if adapters is not None else cfg.base, seed=cfg.seed,
                                  sampling=sampling, quantization=cfg.quantization, dtype=cfg.dtype)
              for learner in dict.fromkeys(layout.learners.values())}
    agents = {role: loaded[learner] for role, learner in layout.learners.items()}
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


def failure_counts_of(record: dict) -> dict:
    """A team's greedy evaluation in a metrics record as ``benchmarks/failure_kinds.py`` counts
    it: its episodes by failure kind, and ``calls_by_hops``."""
    return {**record["eval/failure_kinds"], "calls_by_hops": record["eval/calls_by_hops"]}


def curves(records: list[dict]) -> dict[str, list]:
    """Learning-curve data from a run's metrics records. Per training step also the format
    validity of each role's rollouts, the gradient norm (before clipping) of each adapter
    ("grad_norm" is the one adapter of single_agent and shared, and main's otherwise), and
    the sub-agent's loss weight by its rollouts' number of calls (``sub/weight_by_calls``) and
    how many rollouts made each number of calls (``sub/d_histogram``)."""
    out: dict[str, list] = {"eval_step": [], "eval_accuracy": [], "eval_sampled_accuracy": [],
                            "eval_mean_sub_calls": [], "step": [], "main_reward": [], "sub_reward": [],
                            "train_sub_calls": [], "main_format_valid": [], "sub_format_valid": [],
                            "grad_norm": [], "sub_grad_norm": [], "sub_weight_by_calls": [], "sub_calls_histogram": []}
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
            out["sub_weight_by_calls"].append(r.get("sub/weight_by_calls"))  # d -> share, None without a sub-agent
            out["sub_calls_histogram"].append(r.get("sub/d_histogram"))  # d -> rollouts, None without a sub-agent
    return out


KEPT_KEYS = ("shown_questions", "base_episodes", "base_episode_outcomes", "against")
"""What a comparison keeps of an earlier results.json in its --out besides the runs: the
held-out questions it shows with the base's episodes on them, and an older comparison it is
read against (``--report DIR --against OLD``)."""


def recorded_runs(path: Path) -> tuple[dict[tuple[str, int], tuple[dict, TrainConfig]], dict]:
    """What an earlier comparison's results.json (``path``) holds for a later one: its runs by
    (arm, seed), each with the TrainConfig it was trained under, and the ``KEPT_KEYS`` it has.
    Both empty if there is no such file; a FileExistsError naming it if it cannot be read as
    one (it is in the way, and is not overwritten)."""
    if not path.exists():
        return {}, {}
    try:
        earlier_results = json.loads(path.read_text())
        runs = {(run["variant"], run["seed"]): (run, TrainConfig.from_dict(run["config"]))
                for run in earlier_results["runs"]}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise FileExistsError(f"{path}: not a comparison's results ({one_line(err)}); "
                              "move it away to start afresh") from None
    return runs, {key: earlier_results[key] for key in KEPT_KEYS if key in earlier_results}


def run_comparison(preset: str = "cpu", variants: list[str] = list(ARMS), seeds: list[int] = [0, 1, 2, 3, 4],
                   runs_dir: Path | None = None, out: Path | None = None, overrides: list[str] = [],
                   progress: bool = True, command: str = "", arm_seeds: dict[str, int] | None = None) -> dict:
    """Train (or resume, or skip if finished) every variant x seed, evaluate each, and write
    ``results.json`` and ``table.md`` to ``out`` after every run. ``arm_seeds`` gives an arm
    only the first so many of ``seeds``. A run that ``out``'s results.json already records
    with the same config is kept as recorded (``recorded_runs``); one recorded under another
    config, or one this plan leaves out, is a FileExistsError before anything is trained.
    Returns the results."""
    variants, seeds = list(dict.fromkeys(variants)), list(dict.fromkeys(seeds))
    check_seed_count(seeds)
    arm_seeds = dict(arm_seeds or {})
    for arm, n in arm_seeds.items():
        if arm not in variants or not 1 <= n <= len(seeds):
            raise ValueError(f"{arm}={n}: not an arm of this comparison ({', '.join(variants)}) "
                             f"with 1 to {len(seeds)} seeds")
    runs_dir = Path(runs_dir or REPO_ROOT / "runs" / f"compare-{preset}")
    out = Path(out or REPO_ROOT / "benchmarks" / "results" / f"comparison-{preset}")
    out.mkdir(parents=True, exist_ok=True)
    tools_for = ToolsByWorld()
    sampled_t = sampled_temperature(preset, overrides)
    results: dict = {"preset": preset, "overrides": PRESETS[preset] + list(overrides), "variants": variants,
                     "seeds": seeds, "arm_seeds": arm_seeds, "sampled_temperature": sampled_t, "command": command,
                     "base_episodes": {}, "runs": []}
    start = time.time()
    # Seeds outside, arms inside: a comparison stopped part way has every arm at its first seeds.
    plan = [(seed, variant, run_config(PRESETS[preset], variant, seed, list(overrides)))
            for i, seed in enumerate(seeds) for variant in variants
            if i < arm_seeds.get(variant, len(seeds))]  # a seed, an arm of ARMS, its TrainConfig
    recorded, kept = recorded_runs(out / "results.json")
    planned = {(variant, seed) for seed, variant, _ in plan}
    unplanned = [f"{variant} seed {seed}" for variant, seed in recorded if (variant, seed) not in planned]
    if unplanned:  # rewriting the file without them would lose them
        raise FileExistsError(f"{out / 'results.json'} records runs this comparison does not plan "
                              f"({', '.join(unplanned[:3])}{', ...' if len(unplanned) > 3 else ''}); "
                              "plan them too, or choose another --out")
    for seed, variant, cfg in plan:
        if (variant, seed) in recorded and recorded[variant, seed][1] != cfg:
            raise FileExistsError(f"{out / 'results.json'} records {variant} seed {seed} with another config; "
                                  "move it away or choose another --out")
    results.update(kept)
    # the held-out questions whose episodes are kept: chosen with the first run's base, or recorded
    shown = None
    if "shown_questions" in results:
        split = plan[0][2].eval_split  # every arm's: the preset's and the overrides'
        by_id = {q.qid: q for q in load_questions(split)}
        unknown = [qid for qid in results["shown_questions"] if qid not in by_id]
        if unknown:
            raise FileExistsError(f"{out / 'results.json'} shows questions that {split} does not "
                                  f"hold ({', '.join(map(str, unknown[:3]))}); move it away or choose another --out")
        shown = [by_id[qid] for qid in results["shown_questions"]]
    pace = [0.0, 0]  # seconds and training steps of the runs trained (and evaluated) here
    for n, (seed, variant, cfg) in enumerate(plan, 1):
        mode = LAYOUTS[cfg.variant].mode
        run_dir = runs_dir / f"{variant}-s{seed}"
        if (variant, seed) in recorded:
            print(f"[{time.time() - start:6.0f} s] run {n} of {len(plan)}: {variant} seed {seed}: "
                  f"recorded in {out / 'results.json'}", flush=True)
            results["runs"].append(recorded[variant, seed][0])
            continue
        print(f"[{time.time() - start:6.0f} s] run {n} of {len(plan)}: {variant} seed {seed} -> {run_dir}", flush=True)
        began, steps = time.time(), steps_left(run_dir, cfg)
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
        if "eval/failure_kinds" in last:  # a team: where its reported greedy episodes failed
            results["runs"][-1]["failure_kinds"] = failure_counts_of(last)
            results.setdefault("base_failure_kinds", {}).setdefault(mode, failure_counts_of(first))
        write_reports(results, out)
        pace[0] += time.time() - began
        pace[1] += steps
        remaining = sum(steps_left(runs_dir / f"{later}-s{later_seed}", later_cfg)
                        for later_seed, later, later_cfg in plan[n:] if (later, later_seed) not in recorded)
        print(f"    greedy {100 * last['eval/accuracy']:.1f}%  sampled {100 * last['eval_sampled/accuracy']:.1f}%; "
              f"{time_left(pace[0], pace[1], remaining) if remaining else 'no run left'}", flush=True)
    results["seconds"] = round(time.time() - start, 1)
    write_reports(results, out)
    plot_figures(results, out)
    return results


def earlier(folder: Path, by: str) -> dict:
    """An older comparison's differences, to say which stand (``compare_tables.conclusions``):
    where they come from (relative to the project where it can be), how its calls are read
    (``by``), and the rows themselves, so that the later results.json holds all it needs."""
    path = folder / "results.json"
    old = json.loads(path.read_text())
    if "differences" not in old:
        raise ValueError(f"{path} holds no differences: run --report {folder} first")
    return {"results": within_project(path), "by": by, "differences": old["differences"]}


def check_seed_count(seeds: list[int]) -> None:
    """A ValueError for more distinct seeds than the exact sign-flip test can pair."""
    if len(set(seeds)) > SIGN_FLIP_MAX_PAIRS:
        raise ValueError(f"at most {SIGN_FLIP_MAX_PAIRS} seeds: the exact sign-flip test lists every 2^n sign pattern")


def seeds_per_arm(pairs: list[str], variants: list[str], n_seeds: int) -> dict[str, int]:
    """``--seeds-for``'s ARM=N pairs as {arm: N}; a ValueError names the first bad one."""
    out = {}
    for pair in pairs:
        arm, _, n = pair.partition("=")
        if arm not in variants or not n.isdigit() or not 1 <= int(n) <= n_seeds:
            raise ValueError(f"--seeds-for {pair}: expected ARM=N with ARM one of the arms trained "
                             f"({', '.join(variants)}) and N from 1 to {n_seeds}")
        if arm in out:
            raise ValueError(f"--seeds-for names {arm} twice")
        out[arm] = int(n)
    return out


def main(argv: list[str] | None = None) -> dict:
    """The CLI. Bad input (a negative seed, an unknown preset, a bad key=value override, a
    missing local base model, an --out or --runs that cannot be a directory) is one ``error:``
    line and exit status 2, before anything is trained or written."""
    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--variants", nargs="+", choices=list(TRAINABLE), default=list(ARMS),
                        help="arms to train (default: the comparison's, all but the recipes); ablations: "
                             + ", ".join(f"{name} ({' '.join(o)})" for name, (_, o) in ABLATIONS.items())
                             + "; longer: " + ", ".join(f"{name} ({variant}, {factor}x the steps)"
                                                         for name, (variant, factor) in LONGER.items())
                             + "; recipes: " + ", ".join(f"{name} ({' '.join(o)})" for name, (_, o) in RECIPES.items()))
    parser.add_argument("--seeds", nargs="+", type=nonnegative_int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--seeds-for", nargs="+", action="extend", default=[], metavar="ARM=N",
                        help="give ARM only the first N of --seeds")
    parser.add_argument("--runs", type=output_dir, help="run directories (default runs/compare-<preset>)")
    parser.add_argument("--out", type=output_dir, help="results directory (default benchmarks/results/comparison-<preset>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--report", type=existing_dir, metavar="DIR",
                        help="write the tables and the figures again from DIR/results.json; no training")
    parser.add_argument("--against", type=existing_dir, metavar="OLD",
                        help="with --report: also say which of the differences in OLD/results.json "
                             "stand in DIR's (kept in DIR/results.json as 'against')")
    parser.add_argument("--against-by", choices=CALLS, default="both",
                        help="read OLD's calls from both tests (default) or from its t interval alone")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run, key=value")
    args = parser.parse_args(argv)
    if args.against is not None and args.report is None:
        parser.error("--against compares a finished comparison with an older one: give it with --report DIR")
    if args.report is not None:
        try:
            results = json.loads((args.report / "results.json").read_text())
            if args.against is not None:
                results["against"] = earlier(args.against, args.against_by)
            write_reports(results, args.report)
        except (OSError, ValueError) as err:
            parser.error(one_line(err))
        plot_figures(results, args.report)
        print(table(results))
        print(differences_table(results["differences"]))
        print(stability_table(results["stability"]))
        return results
    try:
        check_seed_count(args.seeds)
        arm_seeds = seeds_per_arm(args.seeds_for, args.variants, len(set(args.seeds)))
    except ValueError as err:
        parser.error(one_line(err))
    try:  # fail on a bad override or a missing local base before any training
        sampled_temperature(args.preset, args.overrides)
        model_location(run_config(PRESETS[args.preset], "mgrpo", 0, list(args.overrides)).base)
    except (ValueError, FileNotFoundError) as err:
        parser.error(one_line(err))
    command = "python -m mgrpo_ref.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        results = run_comparison(args.preset, args.variants, args.seeds, args.runs, args.out, args.overrides,
                                 progress=not args.quiet, command=command.strip(), arm_seeds=arm_seeds)
    except FileExistsError as err:  # a run directory or results of another config: never overwritten
        parser.error(one_line(err))
    print(table(results))
    print(f"{len(results['runs'])} runs in {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
