"""A run directory: what a training run writes, and how a run starts or resumes in it.

    <run_dir>/
        config.json                  the run's TrainConfig, written first
        store.sqlite                 the store the learners share (store.py)
        metrics.jsonl                one JSON line per step (step 0: the evaluation before training)
        workers.json                 the worker processes' pids
        checkpoints/step_NNNNN/      the newest ``keep_checkpoints`` checkpoints (0: all): each
                                     learner's adapter (<learner>/), optimiser and random states
                                     (<learner>_state.pt), and controller.json, written last: it
                                     marks the checkpoint complete
        records/                     the steps of ``record_steps``, for the viewer (viewer.py)

Resuming cuts the store and the metrics back to the last complete checkpoint; the steps
after it are redone, and since every step is seeded by its number (seeding.py) they draw
what they drew before.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .config import TrainConfig
from .store import Store

CONFIG, METRICS, STORE, WORKERS = "config.json", "metrics.jsonl", "store.sqlite", "workers.json"
CHECKPOINTS, MARKER = "checkpoints", "controller.json"


def start(run_dir: Path, cfg: TrainConfig) -> None:
    """A new run: refuse a directory that holds one, else write its config and an empty store."""
    run_dir = Path(run_dir)
    if (run_dir / STORE).exists() or (run_dir / CONFIG).exists():
        raise FileExistsError(f"{run_dir} already holds a run: resume it with --resume, or choose another --run-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} is a file, not a run directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        store = Store(run_dir / STORE, create=True)
        store.set_meta(variant=cfg.variant, seed=cfg.seed)
        store.close()
        write_atomically(run_dir / CONFIG, cfg.to_json())  # last: a directory with a config holds a whole run
    except BaseException:
        discard(run_dir)
        raise


def discard(run_dir: Path) -> None:
    """Remove what ``start`` wrote (a run that failed before its first step), and the directory
    itself if nothing else is in it."""
    run_dir = Path(run_dir)
    for name in (CONFIG, STORE, STORE + "-wal", STORE + "-shm", WORKERS, METRICS):
        (run_dir / name).unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def resume(run_dir: Path, cfg: TrainConfig) -> Path | None:
    """Cut the store and the metrics back to the last complete checkpoint, and return it
    (None: no checkpoint, the run restarts from the base, step-0 evaluation included).
    A store written for another variant or seed than ``cfg``'s is refused, untouched."""
    run_dir = Path(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    done = checkpoint_step(checkpoint) if checkpoint else 0
    store = Store(run_dir / STORE)
    meta = store.meta()
    if (meta.get("variant"), meta.get("seed")) != (cfg.variant, str(cfg.seed)):
        store.close()
        raise ValueError(f"{run_dir / STORE} belongs to variant {meta.get('variant')!r}, seed {meta.get('seed')}, "
                         f"but {run_dir / CONFIG} says variant {cfg.variant!r}, seed {cfg.seed}")
    store.truncate_after(done)  # steps after the checkpoint are redone, never repeated
    store.close()
    metrics = run_dir / METRICS
    if metrics.exists():
        kept = [r for r in read_jsonl(metrics) if checkpoint is not None and r["step"] <= done]
        write_atomically(metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return checkpoint


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (its controller.json written last), or None."""
    done = checkpoints(run_dir)
    return done[-1] if done else None


def checkpoint_step(checkpoint: Path) -> int:
    """The step a complete checkpoint was taken after."""
    return json.loads((checkpoint / MARKER).read_text())["step"]


def new_checkpoint(run_dir: Path, step: int) -> Path:
    """The (empty) directory of step's checkpoint; ``complete_checkpoint`` marks it done."""
    directory = Path(run_dir) / CHECKPOINTS / f"step_{step:05d}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def complete_checkpoint(directory: Path, step: int, time: float, keep: int) -> None:
    """Write the marker (last), then keep only the newest ``keep`` checkpoints (0: all)."""
    write_atomically(directory / MARKER, json.dumps({"step": step, "time": time}))
    if keep > 0:
        for old in sorted(directory.parent.glob("step_*"))[:-keep]:
            shutil.rmtree(old)


def checkpoints(run_dir: Path) -> list[Path]:
    """Every complete checkpoint of a run, oldest first."""
    return [d for d in sorted((Path(run_dir) / CHECKPOINTS).glob("step_*")) if (d / MARKER).exists()]


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


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
