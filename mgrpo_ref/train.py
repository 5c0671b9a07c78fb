"""Training: the loop of the decoupled pipeline, and its CLI.

    python -m mgrpo_ref.train --variant mgrpo --seed 0 [key=value ...]
    python -m mgrpo_ref.train --resume runs/mgrpo-s0

docs/paper.md section 6. The controller (this process: the CLI, or a notebook kernel) runs the
world and its tools and drives the call-return interaction; every generation request goes
to the worker process of the learner that plays the role whose turn it is, batched across
rollouts. A step:

    1. sample B training questions (seeded by the step);
    2. K rollouts each: main turns -> delegations -> sub-agent turns with tools -> results;
    3. send each worker its episodes; each runs its learner's share of the step
       (``step.learner_step``), in parallel: the main agent's learner writes correct(M) to
       the store, the sub-agent's reads it from there;
    4. log one metrics line; every N steps evaluate on the held-out world and checkpoint.

The pieces live by job: step.py (the math of one step), worker.py (the processes),
rundir.py (the run directory, checkpoints, resume), this file (the loop and the CLI).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from . import rundir
from .cli import existing_dir, one_line, output_dir
from .config import TrainConfig
from .episode import run_episodes
from .evaluate import calls_by_hops, evaluate, failure_counts
from .policy import check_lora_targets, model_location
from .seeding import SALT_EVALUATION, SALT_QUESTIONS, rollout_salt, step_seed
from .step import LAYOUTS
from .store import StoreError
from .tools import ToolsByWorld
from .worker import WorkerAgent, WorkerDied, WorkerFailed, WorkerHandle
from .world import load_questions

EVAL_KEYS = ("accuracy", "lenient_accuracy", "format_valid", "sub_format_valid", "mean_sub_calls", "accuracy_by_hops",
             "accuracy_by_world")
"""What each held-out evaluation logs, as ``eval/<key>`` (and ``eval_sampled/<key>``)."""


def training_pool(cfg: TrainConfig, min_hops: int | None = None) -> list:
    """The questions a run's steps draw from: the train split's of at least ``min_hops`` hops
    (default ``min_train_hops``); a clear error if they are fewer than a step's B."""
    min_hops = cfg.min_train_hops if min_hops is None else min_hops
    pool = [q for q in load_questions("train") if q.n_hops >= min_hops]
    if cfg.questions_per_step > len(pool):
        raise ValueError(f"questions_per_step={cfg.questions_per_step} is invalid: the train split has "
                         f"{len(pool)} questions of at least {min_hops} hop(s)")
    return pool


def min_hops_at(cfg: TrainConfig, step: int) -> int:
    """The fewest hops of a question drawn at ``step``: ``min_train_hops`` for the first
    ``min_train_hops_steps`` steps (every step when that is 0), then 1."""
    return 1 if 0 < cfg.min_train_hops_steps < step else cfg.min_train_hops


def sample_questions(pool: list, questions_per_step: int, seed: int, step: int) -> list:
    """The step's B training questions, drawn without replacement (the same on resume)."""
    return random.Random(step_seed(seed, step, SALT_QUESTIONS)).sample(pool, questions_per_step)


def held_out_questions(cfg: TrainConfig) -> list:
    """The first ``eval_questions`` of ``cfg.eval_split``; a clear error if it has fewer."""
    questions = load_questions(cfg.eval_split)
    if cfg.eval_questions > len(questions):
        raise ValueError(f"eval_questions={cfg.eval_questions} is invalid: the {cfg.eval_split} split has "
                         f"{len(questions)} questions")
    return questions[: cfg.eval_questions]


class Trainer:
    """Runs one training run in ``run_dir``; also usable from a notebook."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.layout = LAYOUTS[cfg.variant]
        self.eval_questions = held_out_questions(cfg)  # checked before anything is written
        self.train_pools = {hops: training_pool(cfg, hops)  # min hops -> the questions a step draws from
                            for hops in {min_hops_at(cfg, 1), min_hops_at(cfg, cfg.steps)}}
        model_location(cfg.base)  # a missing local base is refused here, before anything is written
        check_lora_targets(cfg.base, cfg.lora)  # so is a LoRA target the base does not have
        self.tools_for = ToolsByWorld()
        self.metrics_path = self.run_dir / rundir.METRICS
        if resume:
            checkpoint = rundir.resume(self.run_dir, cfg, list(dict.fromkeys(self.layout.learners.values())))
        else:
            rundir.start(self.run_dir, cfg)
            checkpoint = None
        self.start_step = rundir.checkpoint_step(checkpoint) + 1 if checkpoint else 1
        self.current_step = self.start_step
        self.store = rundir.open_run_store(self.run_dir, cfg)  # the controller's one connection
        self.workers: dict = {}  # learner -> its worker's handle (worker.py, or cluster.py with cluster=ray)
        learners = list(dict.fromkeys(self.layout.learners.values()))
        try:
            if cfg.cluster == "ray":
                from .cluster import start_workers
                self.workers = start_workers(learners, cfg, self.run_dir, checkpoint)
            for learner in learners if cfg.cluster == "local" else ():
                self.workers[learner] = WorkerHandle(learner, cfg, self.run_dir, checkpoint)
        except BaseException:
            self.close()
            if not resume:  # nothing has run: leave no half-started run behind
                rundir.discard(self.run_dir)
            raise
        where = {learner: w.where for learner, w in self.workers.items()}
        rundir.write_atomically(self.run_dir / rundir.WORKERS, json.dumps(where))
        self.events = event_writer(self.run_dir, self.start_step, resume) if cfg.tensorboard else None

    def agents(self, temperature: float) -> dict[str, WorkerAgent]:
        """role -> the agent that answers it, sampling at ``temperature``."""
        return {role: WorkerAgent(self.workers[learner], temperature) for role, learner in self.layout.learners.items()}

    def reseed(self, step: int, salts: list[int]) -> None:
        """Seed each worker's sampling for ``step``, the i-th with ``salts[i]``."""
        for w, salt in zip(self.workers.values(), salts):
            w.request("reseed", step, salt)

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, step: int) -> dict:
        """Held-out evaluation at ``eval_temperature`` (``eval/...``), and sampled at
        ``eval_sampled_temperature`` (``eval_sampled/...``) unless that is 0."""
        record = self._evaluate_at(step, self.cfg.eval_temperature, "eval")
        if self.cfg.eval_sampled_temperature > 0:
            record.update(self._evaluate_at(step, self.cfg.eval_sampled_temperature, "eval_sampled"))
        return record

    def _evaluate_at(self, step: int, temperature: float, prefix: str) -> dict:
        self.reseed(step, [SALT_EVALUATION] * len(self.workers))
        report, episodes = evaluate(self.eval_questions, self.agents(temperature), self.layout.mode, self.cfg.limits,
                                    batch_size=len(self.eval_questions), progress=False, tools_for=self.tools_for)
        report["accuracy_by_hops"] = {str(h): a for h, a in report["accuracy_by_hops"].items()}  # JSON keys
        record = {f"{prefix}/{key}": report[key] for key in EVAL_KEYS}
        if self.layout.mode == "multi":  # where each failed episode of a team left the gold chain
            record[f"{prefix}/failure_kinds"] = failure_counts(episodes)
            record[f"{prefix}/calls_by_hops"] = calls_by_hops(episodes)
        return record

    # -- one step ------------------------------------------------------------------------

    def step(self, step: int) -> dict:
        """Rollouts, then every learner's share of the step in its worker; returns the metrics line."""
        cfg = self.cfg
        t_step = time.perf_counter()
        questions = sample_questions(self.train_pools[min_hops_at(cfg, step)], cfg.questions_per_step, cfg.seed, step)
        self.reseed(step, [rollout_salt(i) for i in range(len(self.workers))])
        episodes = run_episodes(questions, self.tools_for, self.agents(cfg.temperature), self.layout.mode,
                                cfg.limits, rollouts=cfg.rollouts)
        rollout_s = time.perf_counter() - t_step
        t_update = time.perf_counter()
        for learner, w in self.workers.items():
            mine = episodes
            if learner != self.layout.main_learner:  # the sub-agent never sees the main trajectories
                mine = [replace(e, main=None) for e in episodes]
            w.send("train", step, mine)
        stats: dict = {}
        for w in self.workers.values():
            stats.update(w.receive())
        update_wall = time.perf_counter() - t_update
        t = time.perf_counter()
        self.store.finish_step(step)
        store_s = time.perf_counter() - t + sum(v for k, v in stats.items() if k.endswith("/store_s"))
        step_s = time.perf_counter() - t_step
        stats.update({"step": step, "rollout/mean_sub_calls": sum(len(e.subs) for e in episodes) / len(episodes),
                      "time/rollout_s": rollout_s, "time/update_wall_s": update_wall,
                      "time/update_sum_s": sum(v for k, v in stats.items() if k.endswith("/update_s")),
                      "time/store_s": store_s, "time/step_s": step_s, "time/store_frac": store_s / step_s})
        return stats

    def save_checkpoint(self, step: int) -> None:
        directory = rundir.new_checkpoint(self.run_dir, step)
        for w in self.workers.values():
            w.request("save", directory)
        rundir.complete_checkpoint(directory, step, time.time(), keep=self.cfg.keep_checkpoints)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> dict:
        """Steps ``start_step .. steps``, evaluating and checkpointing on schedule; returns
        the run directory and the base's (step 0) and the last held-out accuracies."""
        cfg = self.cfg
        if self.start_step == 1:
            self.log({"step": 0, **self.evaluate(0)})
        bar = tqdm(range(self.start_step, cfg.steps + 1), desc=f"train {cfg.variant}", disable=not self.progress,
                   initial=self.start_step - 1, total=cfg.steps)
        for step in bar:
            self.current_step = step
            record = self.step(step)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                record.update(self.evaluate(step))
            self.log(record)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                self.save_checkpoint(step)
            bar.set_postfix(_postfix(record))
        return {"run_dir": str(self.run_dir), **first_and_last_accuracy(rundir.read_jsonl(self.metrics_path))}

    def log(self, record: dict) -> None:
        """One line of metrics.jsonl, and the same numbers as TensorBoard events."""
        rundir.append_jsonl(self.metrics_path, record)
        if self.events is not None:
            log_events(self.events, record)

    def close(self) -> None:
        """Stop every worker and close the store; closing twice does nothing more."""
        if getattr(self, "events", None) is not None:
            self.events.close()
            self.events = None
        workers, self.workers = getattr(self, "workers", {}), {}
        for w in workers.values():
            w.stop()
        if getattr(self, "store", None) is not None:
            self.store.close()
            self.store = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def event_writer(run_dir: Path, start_step: int, resume: bool):
    """A TensorBoard writer into ``<run_dir>/tensorboard``, or None when the optional
    ``tensorboard`` package is not installed. A resumed run hides the events it logged for the
    steps it now redoes (``purge_step``), so each step shows once."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    purge = (start_step if start_step > 1 else 0) if resume else None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)


def log_events(writer, record: dict) -> None:
    """Every number of one metrics line as a scalar at its step; a dict of numbers (accuracy by
    hops, by world) as one scalar per entry, ``<key>/<entry>``."""
    step = record["step"]
    for key, value in record.items():
        entries = value.items() if isinstance(value, dict) else [(None, value)]
        for entry, number in entries:
            if isinstance(number, (int, float)) and key != "step":
                writer.add_scalar(key if entry is None else f"{key}/{entry}", float(number), step)
    writer.flush()


def _postfix(record: dict) -> dict:
    postfix = {k.split("/")[0]: f"{v:.2f}" for k, v in record.items() if k.endswith("reward_mean")}
    for key, name in (("eval/accuracy", "eval"), ("eval_sampled/accuracy", "eval_T")):
        if key in record:
            postfix[name] = f"{record[key]:.2f}"
    return postfix


def first_and_last_accuracy(history: list[dict]) -> dict:
    """Held-out accuracy at step 0 (the base) and at the last evaluation, greedy and sampled;
    None where the history lacks it (a resumed run's step 0 is kept, so it has it)."""
    out = {}
    for name, key in (("", "eval/accuracy"), ("_sampled", "eval_sampled/accuracy")):
        evals = [h for h in history if key in h]
        out[f"base{name}_accuracy"] = evals[0][key] if evals and evals[0]["step"] == 0 else None
        out[f"final{name}_accuracy"] = evals[-1][key] if evals else None
    return out


def _decoding(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"sampled, T={temperature:g}"


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, Path, bool, bool]:
    """(config, run directory, resume, quiet) from the command line; exits 2 with one
    ``error:`` line on bad input, before anything is written."""
    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.train", description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default=None, help="mgrpo | frozen_sub | single_agent | shared")
    parser.add_argument("--seed", default=None, help="the run's seed (an integer >= 0)")
    parser.add_argument("--run-dir", type=output_dir, help="default: runs/<variant>-s<seed>")
    parser.add_argument("--resume", type=existing_dir, metavar="RUN_DIR", help="continue a killed run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. steps=20 reward.b2=0.6)")
    args = parser.parse_args(argv)
    try:
        if args.resume:
            if args.variant or args.seed is not None or args.overrides or args.run_dir:
                raise ValueError("--resume takes the run's own config.json; no other options")
            if not (args.resume / rundir.CONFIG).exists():
                if rundir.never_started(args.resume):
                    raise ValueError(f"{args.resume} holds a run that never started (no config.json): start it "
                                     "again with the command that started it, without --resume")
                raise ValueError(f"{args.resume} holds no run to resume: it has no {rundir.CONFIG}")
            return TrainConfig.load(args.resume / rundir.CONFIG), args.resume, True, args.quiet
        named = [f"variant={args.variant}"] if args.variant is not None else []
        named += [f"seed={args.seed}"] if args.seed is not None else []
        cfg = TrainConfig().override(args.overrides + named)
        run_dir = args.run_dir or Path("runs") / f"{cfg.variant}-s{cfg.seed}"
        return cfg, run_dir, False, args.quiet
    except ValueError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None


class Stopped(Exception):
    """The controller received SIGTERM: leave the run as Ctrl-C would."""


def _stop_on_sigterm(signum, frame):
    raise Stopped("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    """Train, or resume; every way a run can stop ends in at most one line (and a resume
    command when the run can go on), the full traceback of an error in the run's errors.log."""
    cfg, run_dir, resume, quiet = parse_args(argv)
    again = f"python -m mgrpo_ref.train --resume {run_dir}"
    previous_sigterm = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir, resume=resume, progress=not quiet)
        result = trainer.run()
    except (KeyboardInterrupt, Stopped) as stop:
        _close(trainer)
        what = "SIGTERM" if isinstance(stop, Stopped) else "Ctrl-C"
        if not (Path(run_dir) / rundir.CONFIG).exists():  # a new run stopped while it started: nothing is left
            print(f"stopped ({what}) before the run started; nothing was kept", file=sys.stderr)
        else:
            when = f"during step {trainer.current_step}" if trainer is not None else "while the run started up"
            print(f"stopped ({what}) {when}; continue with: {again}", file=sys.stderr)
        return 143 if isinstance(stop, Stopped) else 130
    except Exception as err:
        _close(trainer)
        if trainer is None and isinstance(err, (OSError, StoreError, ValueError)):  # refused before it ran
            print(f"error: {one_line(err)}", file=sys.stderr)
            return 2
        # a worker's error, a full disk, a killed worker, anything else: one line, the traceback in a file
        details = err.details if isinstance(err, WorkerFailed) else traceback.format_exc()
        where = _log_error(Path(run_dir), details)
        started = (Path(run_dir) / rundir.CONFIG).exists()
        cause = one_line(err) if isinstance(err, (WorkerFailed, WorkerDied)) else f"{type(err).__name__}: {one_line(err)}"
        print(f"error: {cause} ({where})" + (f"; continue with: {again}" if started else ""), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)  # as it was: main may run inside another program
    trainer.close()
    for name, temperature in (("", cfg.eval_temperature), ("_sampled", cfg.eval_sampled_temperature)):
        base, final = result[f"base{name}_accuracy"], result[f"final{name}_accuracy"]
        if base is not None and final is not None:
            print(f"held-out accuracy ({_decoding(temperature)}, {cfg.eval_questions} questions): "
                  f"base {100 * base:.1f}% -> final {100 * final:.1f}%")
    print(f"run directory: {result['run_dir']}")
    return 0


def _close(trainer: "Trainer | None") -> None:
    """Stop the workers of a run that failed or was stopped; an error while doing so must not
    hide what ended the run."""
    if trainer is not None:
        try:
            trainer.close()
        except Exception:
            pass


def _log_error(run_dir: Path, details: str) -> str:
    """Append ``details`` (a traceback) to the run's errors.log, or to a file in the temporary
    directory when the run directory cannot take it (a full disk); returns where it went."""
    entry = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{details.rstrip()}\n"
    for path in (run_dir / rundir.ERRORS, Path(tempfile.gettempdir()) / f"mgrpo-errors-{os.getpid()}.log"):
        try:
            with open(path, "a") as f:
                f.write(entry)
            return f"traceback in {path}"
        except OSError:
            continue
    return "the traceback could not be written anywhere"


if __name__ == "__main__":
    sys.exit(main())
