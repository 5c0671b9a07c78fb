"""A run directory: what a training run writes, and how a run starts or resumes in it.

    <run_dir>/
        config.json                  the run's TrainConfig, written first
        store.sqlite                 the store the learners share (store.py), unless the config
                                     names a PostgreSQL database instead (``store``, store_pg.py)
        metrics.jsonl                one JSON line per step (step 0: the evaluation before training)
        workers.json                 where each learner's worker runs: its pid, or with cluster=ray
                                     its Ray node and pid there (cluster.py)
        checkpoints/step_NNNNN/      the newest ``keep_checkpoints`` checkpoints (0: all): each
                                     learner's adapter (<learner>/), optimiser and random states
                                     (<learner>_state.pt), and controller.json, written last: it
                                     marks the checkpoint complete and records the size and
                                     SHA-256 of every other file of it
        records/                     the steps of ``record_steps``, for the viewer (viewer.py)
        errors.log                   the full traceback of each error that stopped the run

Resuming goes back to the newest checkpoint that is intact (every file as it was written)
and whose steps are all in the store and in metrics.jsonl, cuts the store and the metrics
back to it, and redoes the steps after it; since every step is seeded by its number
(seeding.py) they draw what they drew before. Each checkpoint passed over is named in one
line. A run killed before its config.json was written never started, and is started afresh.
Nothing is changed in a run directory that is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from .config import TrainConfig
from .store import Records, Store, StoreError, open_store

CONFIG, METRICS, STORE, WORKERS = "config.json", "metrics.jsonl", "store.sqlite", "workers.json"
CHECKPOINTS, MARKER, ERRORS = "checkpoints", "controller.json", "errors.log"


class ResumeError(ValueError):
    """A run directory that cannot be resumed as it is; the one-line message says why and what to do."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def store_location(run_dir: Path, cfg: TrainConfig) -> str | Path:
    """Where the run's store is: the database its config names, or store.sqlite in ``run_dir``."""
    return cfg.store or Path(run_dir) / STORE


def open_run_store(run_dir: Path, cfg: TrainConfig, **options) -> Records:
    """The run's store (``store.open_store``), wherever its config puts it."""
    return open_store(store_location(run_dir, cfg), **options)


def start(run_dir: Path, cfg: TrainConfig, say: Callable[[str], None] = _stderr) -> None:
    """A new run: refuse a directory that holds one, else write its config and an empty store.
    A directory left by a run killed before its config was written (``never_started``) is
    cleared and started afresh, with one line through ``say``."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} is a file, not a run directory")
    if never_started(run_dir):
        say(f"{run_dir} holds a run that never started (no config.json, nothing in its store): starting it afresh")
        discard(run_dir)
    if (run_dir / STORE).exists() or (run_dir / CONFIG).exists():
        raise FileExistsError(f"{run_dir} already holds a run: resume it with --resume, or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        store = open_run_store(run_dir, cfg, create=True)
        try:
            if not store.is_empty():  # a database is a store of its own, which another run may hold
                meta = store.meta()
                raise FileExistsError(f"{store.name} already holds the records of a run (variant "
                                      f"{meta.get('variant')!r}, seed {meta.get('seed')}, up to step "
                                      f"{store.last_finished_step()}): give this run a database of its own")
            store.set_meta(variant=cfg.variant, seed=cfg.seed)
        finally:
            store.close()
        write_atomically(run_dir / CONFIG, cfg.to_json())  # last: a directory with a config holds a whole run
    except BaseException:
        discard(run_dir)
        raise


def never_started(run_dir: Path) -> bool:
    """True for what ``start`` leaves when killed before it wrote config.json: a store (or
    none) with no record in it, and no metrics, checkpoint or record."""
    run_dir = Path(run_dir)
    if not (run_dir / STORE).exists() or (run_dir / CONFIG).exists():
        return False
    if any((run_dir / name).exists() for name in (METRICS, CHECKPOINTS, "records")):
        return False
    wal = run_dir / (STORE + "-wal")
    if (run_dir / STORE).stat().st_size == 0:
        return not (wal.exists() and wal.stat().st_size > 0)
    try:
        store = Store(run_dir / STORE, readonly=True, at_rest=True)
    except StoreError:
        return False  # not a store of ours: never ours to remove
    try:
        return store.is_empty()
    finally:
        store.close()


def discard(run_dir: Path) -> None:
    """Remove what ``start`` wrote (a run that failed before its first step), and the directory
    itself if nothing else is in it."""
    run_dir = Path(run_dir)
    for name in (CONFIG, CONFIG + ".tmp", STORE, STORE + "-wal", STORE + "-shm", WORKERS, METRICS):
        (run_dir / name).unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def resume(run_dir: Path, cfg: TrainConfig, learners: list[str],
           say: Callable[[str], None] = _stderr) -> Path | None:
    """Cut the store and the metrics back to the checkpoint to resume from, and return it
    (None: the run restarts from the base, step-0 evaluation included).

    That checkpoint is the newest one that is intact (``checkpoint_problem``) and whose steps
    are all in the store (each finished, with the statistics of every one of ``learners``) and
    in metrics.jsonl. Each newer checkpoint passed over is named, in one line through ``say``:
    the steps after the one chosen are replayed, exactly, since every step is seeded by its
    number. When no intact checkpoint is left the run is refused (``ResumeError``); when every
    intact one lacks steps in the store, it restarts from its start. A store written for
    another variant or seed is refused too. A refused run directory is left untouched: the
    checks open the store read-only.
    """
    run_dir = Path(run_dir)
    store = open_run_store(run_dir, cfg, readonly=True, at_rest=True)
    try:
        meta = store.meta()
        if (meta.get("variant"), meta.get("seed")) != (cfg.variant, str(cfg.seed)):
            raise ValueError(f"{store.name} belongs to variant {meta.get('variant')!r}, seed {meta.get('seed')}, "
                             f"but {run_dir / CONFIG} says variant {cfg.variant!r}, seed {cfg.seed}")
        held = store.complete_steps(learners)
    finally:
        store.close()
    logged = {r.get("step") for r in read_jsonl(run_dir / METRICS)} if (run_dir / METRICS).exists() else set()

    chosen, passed_over, any_intact = None, [], False
    for checkpoint in reversed(checkpoints(run_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            any_intact = True
            done = checkpoint_step(checkpoint)
            problem = _missing_steps(held, logged, done)
        if problem is None:
            chosen = checkpoint
            break
        passed_over.append(f"checkpoint {checkpoint.name} {problem}")
    if passed_over and chosen is None and not any_intact:
        raise ResumeError(f"{'; '.join(passed_over)}; no earlier complete checkpoint is left to resume from, and "
                          f"nothing was changed: start the run again in a new directory")
    if passed_over:
        where = f"{chosen.name} (step {checkpoint_step(chosen)})" if chosen else "its start (step 0)"
        say(f"{'; '.join(passed_over)}: resuming {run_dir} from {where}, replaying the steps after it")

    done = checkpoint_step(chosen) if chosen else 0
    store = open_run_store(run_dir, cfg)
    try:
        store.truncate_after(done)  # steps after the checkpoint are redone, never repeated
    finally:
        store.close()
    metrics = run_dir / METRICS
    if metrics.exists():
        kept = [r for r in read_jsonl(metrics) if chosen is not None and r["step"] <= done]
        write_atomically(metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return chosen


def _missing_steps(held: set[int], logged: set, done: int) -> str | None:
    """What the store and metrics.jsonl lack of steps 1..done (and 0 in the metrics), or None."""
    lacks = []
    store_gap = [s for s in range(1, done + 1) if s not in held]
    if store_gap:
        lacks.append(f"needs step{'s' * (len(store_gap) > 1)} {_steps(store_gap)} that the store lacks")
    metrics_gap = [s for s in range(0, done + 1) if s not in logged]
    if metrics_gap:
        lacks.append(f"needs step{'s' * (len(metrics_gap) > 1)} {_steps(metrics_gap)} that {METRICS} lacks")
    return " and ".join(lacks) or None


def _steps(steps: list[int]) -> str:
    """[4, 5, 6, 9] -> '4-6, 9'."""
    runs, start = [], steps[0]
    for previous, step in zip(steps, steps[1:] + [None]):
        if step is None or step != previous + 1:  # a run of consecutive steps ends at previous
            runs.append(str(start) if start == previous else f"{start}-{previous}")
            start = step
    return ", ".join(runs)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (its controller.json written last), or None."""
    done = checkpoints(run_dir)
    return done[-1] if done else None


def checkpoint_step(checkpoint: Path) -> int:
    """The step a complete checkpoint was taken after (``ResumeError`` naming the checkpoint if
    its marker cannot say)."""
    record, problem = _marker(checkpoint)
    if problem is not None:
        raise ResumeError(f"checkpoint {checkpoint} {problem}")
    return record["step"]


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint that has its marker, or None if it is intact: the marker
    must name its step, and every file it records must be there with its size and SHA-256. A
    marker that records no files (written before markers did) is taken as it is."""
    record, problem = _marker(checkpoint)
    if problem is not None:
        return problem
    for name, recorded in sorted((record.get("files") or {}).items()):
        path = Path(checkpoint) / name
        if not path.is_file():
            return f"lacks {name}"
        size = path.stat().st_size
        if size != recorded["bytes"]:
            return f"has {name} of {size:,} bytes, written with {recorded['bytes']:,}"
        if _sha256(path) != recorded["sha256"]:
            return f"has {name} changed since it was written (SHA-256)"
    return None


def _marker(checkpoint: Path) -> tuple[dict | None, str | None]:
    """A checkpoint's marker as a dict naming its step, or (None, what is wrong with it)."""
    marker = Path(checkpoint) / MARKER
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError, RecursionError):
        return None, f"has an {'empty' if not marker.exists() or not marker.stat().st_size else 'unreadable'} {MARKER}"
    step = record.get("step") if isinstance(record, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        return None, f"has a {MARKER} that names no step"
    return record, None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_checkpoint(run_dir: Path, step: int) -> Path:
    """The (empty) directory of step's checkpoint; ``complete_checkpoint`` marks it done."""
    directory = Path(run_dir) / CHECKPOINTS / f"step_{step:05d}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def complete_checkpoint(directory: Path, step: int, time: float, keep: int) -> None:
    """Write the marker (last), with the size and SHA-256 of every other file of the checkpoint,
    then keep only the newest ``keep`` checkpoints (0: all)."""
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MARKER}
    write_atomically(directory / MARKER, json.dumps({"step": step, "time": time, "files": files}, sort_keys=True))
    if keep > 0:
        for old in sorted(directory.parent.glob("step_*"))[:-keep]:
            shutil.rmtree(old)


def checkpoints(run_dir: Path) -> list[Path]:
    """Every complete checkpoint of a run, oldest first."""
    return [d for d in sorted((Path(run_dir) / CHECKPOINTS).glob("step_*")) if (d / MARKER).exists()]


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def deterministic(record: dict) -> dict:
    """A metrics line without what a seed does not decide: wall-clock timings and memory peaks
    (what two runs of one config on one machine must log alike)."""
    return {k: v for k, v in record.items()
            if not k.startswith(("time/", "memory/")) and not k.endswith(("update_s", "store_s"))}


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; a line that does not parse (one cut by a crash) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file, then rename it over ``path``: a reader sees the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
