"""Benchmark the decoupled pipeline: step time, store overhead, and the cost of the updates.

    python benchmarks/bench_pipeline.py timing  [--run-dir runs/mgrpo-s0]
    python benchmarks/bench_pipeline.py sub-flat [--base data/base] [--repeats 3]
    python benchmarks/bench_pipeline.py threads  [--base data/base] [--repeats 5] [--out FILE]

timing   reads a finished run's metrics.jsonl and prints, per step and in total: step time,
         the share of it spent in store reads and writes (aim: 2% or less), and the update
         phase's wall time against the sum of the two workers' update times (overlap).
sub-flat times the sub learner's update in its share of a step (step.learner_step, exactly
         what its worker runs, with sub_batch=slots) on batches whose distribution of
         sub-agent calls d differs (all d = 1, all d = 4, all d = 6, a realistic mix, half the
         rollouts d = 0) at a fixed D_max = 4: the slot batch is always B*K*D rows, so the
         time should stay flat.
threads  runs the main and the sub learner's shares of a step (step.learner_step) at the same
         time, each in its own process as in training (default B, K, D_max; the teacher's
         episodes), with several splits of the threads between them, and prints the update
         phase's wall time for each (from the updates' own times, ``update_s``): the
         measurement behind worker.update_threads. It writes --out (default
         benchmarks/results/threads.json).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from common import ROOT, given_correct, learner_and_config, parser, timed_shares, write_result


def timing(run_dir: Path) -> None:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "time/step_s" in m]
    print(f"{'step':>4} {'step s':>7} {'rollout s':>9} {'upd wall':>8} {'upd sum':>8} {'store %':>8}")
    for m in steps:
        print(f"{m['step']:4d} {m['time/step_s']:7.2f} {m['time/rollout_s']:9.2f} {m['time/update_wall_s']:8.2f}"
              f" {m['time/update_sum_s']:8.2f} {100 * m['time/store_frac']:8.3f}")
    total = sum(m["time/step_s"] for m in steps)
    store = sum(m["time/store_s"] for m in steps)
    wall = sum(m["time/update_wall_s"] for m in steps)
    both = sum(m["time/update_sum_s"] for m in steps)
    print(f"total: {len(steps)} steps, {total:.1f} s; store {store:.2f} s = {100 * store / total:.3f}% of step time;"
          f" update phase wall {wall:.1f} s vs sum of both workers' updates {both:.1f} s"
          f" (overlap saves {100 * (1 - wall / both):.0f}%)")


def _teacher_episodes(cfg):
    """The teacher's K rollouts of each of the first B training questions (both benchmarks' data)."""
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.scripted import ScriptedAgent, TeacherNoise
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.world import load_questions

    questions = load_questions("train")[:cfg.questions_per_step]
    teacher = ScriptedAgent(TeacherNoise(), seed=0)
    return questions, run_episodes(questions, ToolsByWorld(), {"main": teacher, "sub": teacher},
                                   rollouts=cfg.rollouts)


def sub_flat(base: str, repeats: int = 3) -> None:
    import torch

    from mgrpo_ref.episode import Episode
    from mgrpo_ref.worker import update_threads

    learner, cfg = learner_and_config(base, sub_batch="slots")  # sub-flat is about slot batches
    threads = update_threads("sub", torch.get_num_threads(), cfg.d_max, cfg.sub_batch)
    torch.set_num_threads(threads)  # as in the sub worker during the update phase
    b, k, d_max = cfg.questions_per_step, cfg.rollouts, cfg.d_max
    questions, episodes = _teacher_episodes(cfg)
    pool = {i: [s for e in episodes[i * k:(i + 1) * k] for s in e.subs] for i in range(b)}  # per question
    rng = random.Random(0)
    shapes = {"all d=1": lambda: 1, "all d=4": lambda: 4, "all d=6": lambda: 6,
              "mix 0-6": lambda: rng.choice([0, 1, 1, 2, 2, 3, 4, 6]), "half d=0": lambda: rng.choice([0, 4])}
    print(f"B={b} K={k} D_max={d_max}: sub batch is always {b * k * d_max} rows; {threads} threads")
    for name, draw in shapes.items():
        shaped = [Episode(questions[q], "multi", None, [rng.choice(pool[q]) for _ in range(draw())], r)
                  for q in range(b) for r in range(k)]
        correct = torch.tensor([rng.random() < 0.5 for _ in shaped]).view(b, k)  # (B, K) correct(M)
        share = timed_shares({"sub": learner}, shaped, cfg, 1, repeats, channel=given_correct(correct))["sub"]
        (half,) = share.halves
        n = sum(len(e.subs) for e in shaped)
        print(f"{name:10s}: N={n:4d} distinct sub trajectories, {len(half.batch)} rows, update "
              f"{statistics.median(share.update_s):6.2f} s (median of {repeats})")


def _teacher_channel(cfg, episodes):
    """correct(M) of the teacher's episodes, some set to true (the teacher is rarely right: so
    the sub advantages vary), in a channel for the sub learner's share."""
    import torch

    correct = torch.tensor([e.correct for e in episodes]).view(cfg.questions_per_step, cfg.rollouts)  # (B, K)
    rng = random.Random(0)
    return given_correct(correct | torch.tensor([rng.random() < 0.3 for _ in episodes]).view_as(correct))


def _timed_updates(learner_name: str, threads: int, repeats: int, base: str, barrier, queue) -> None:
    """One process: this learner's share of a step, ``repeats`` times, each started with the
    other's; the span of each update, on the wall clock (comparable across the processes).
    The main learner's share sends correct(M) into a channel of its own: the sub learner's
    gets the teacher's, some set to true."""
    import torch

    from mgrpo_ref.step import DirectChannel

    learner, cfg = learner_and_config(base)
    _, episodes = _teacher_episodes(cfg)
    channel = _teacher_channel(cfg, episodes) if learner_name == "sub" else DirectChannel()
    torch.set_num_threads(threads)
    spans = []
    for _ in range(repeats):
        barrier.wait()
        share = timed_shares({learner_name: learner}, episodes, cfg, 1, channel=channel)[learner_name]
        end = time.time()  # the update ends the share (then the adapter is restored: milliseconds)
        spans.append((end - share.update_s[0], end))
    queue.put((learner_name, spans))


def threads(base: str, out: Path, repeats: int = 5) -> None:
    import multiprocessing

    import torch

    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.worker import update_threads

    cores, d_max = torch.get_num_threads(), TrainConfig().d_max
    auto = tuple(update_threads(name, cores, d_max, TrainConfig().sub_batch) for name in ("main", "sub"))
    splits = sorted({(1, 1), (1, cores), (cores, cores), auto})
    ctx = multiprocessing.get_context("spawn")
    print(f"{cores} cores; worker.update_threads gives main {auto[0]}, sub {auto[1]}")
    print(f"{'main':>4} {'sub':>4} {'main s':>7} {'sub s':>7} {'phase wall s':>12}   (median of {repeats})")
    rows = []
    for n_main, n_sub in splits:
        barrier, queue = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_timed_updates, args=(name, n, repeats, base, barrier, queue))
                 for name, n in (("main", n_main), ("sub", n_sub))]
        for proc in procs:
            proc.start()
        spans = dict(queue.get() for _ in procs)
        for proc in procs:
            proc.join()
        own = {name: statistics.median(e - s for s, e in spans[name]) for name in spans}
        wall = statistics.median(max(m[1], s[1]) - min(m[0], s[0]) for m, s in zip(spans["main"], spans["sub"]))
        mark = "  <- update_threads" if (n_main, n_sub) == auto else ""
        print(f"{n_main:4d} {n_sub:4d} {own['main']:7.2f} {own['sub']:7.2f} {wall:12.2f}{mark}")
        rows.append({"main_threads": n_main, "sub_threads": n_sub, "main_s": own["main"], "sub_s": own["sub"],
                     "phase_wall_s": wall, "update_threads": (n_main, n_sub) == auto})
    write_result(out, {"command": "python benchmarks/bench_pipeline.py threads", "cores": cores,
                       "sub_batch": TrainConfig().sub_batch, "repeats": repeats, "splits": rows})


def main() -> None:
    options = parser("threads", __doc__)
    options.add_argument("what", choices=("timing", "sub-flat", "threads"))
    options.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "mgrpo-s0")
    options.add_argument("--repeats", type=int, help="default: 3 for sub-flat, 5 for threads")
    args = options.parse_args()
    repeats = {"repeats": args.repeats} if args.repeats else {}
    if args.what == "timing":
        timing(args.run_dir)
    elif args.what == "sub-flat":
        sub_flat(args.base, **repeats)
    else:
        threads(args.base, args.out, **repeats)

if __name__ == "__main__":
    main()
