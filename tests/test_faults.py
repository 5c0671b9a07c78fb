"""The fault suite: every way a run can be cut short ends in one clear line, and the run goes on
to the same result it would have reached, or is refused with nothing changed.

Faults, each against the tiny base and a few small steps: a store missing a step (what a cut
write-ahead log leaves), an empty store beside its write-ahead log, a truncated or changed
checkpoint file, an empty checkpoint marker, a checkpoint without its marker (killed while
written), a run killed before its config was written, SIGTERM and Ctrl-C, a full disk, a worker
that cannot write its checkpoint. "The same result" is the metrics and the store of one
uninterrupted run with the same config, compared value by value.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mgrpo_ref import rundir, train
from mgrpo_ref.config import TrainConfig
from mgrpo_ref.pretrain import SIZES, pretrain
from mgrpo_ref.store import Store, StoreError

from helpers import alive, one_line

SMALL = ["questions_per_step=2", "rollouts=2", "d_max=2", "eval_questions=4", "eval_every=2",
         "checkpoint_every=1", "keep_checkpoints=0", "max_new_tokens=12", "microbatch=8"]
STEPS = 4
def volatile(key: str) -> bool:
    """Wall-clock and memory figures, which differ from run to run."""
    return key.startswith(("time/", "memory/")) or key.endswith("_s")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    pretrain(SIZES["tiny"], out, progress=False)
    return out


def command(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "mgrpo_ref.train", "--quiet", *map(str, args)],
                          capture_output=True, text=True, timeout=600, **kwargs)


def new_run(base, run, steps=STEPS):
    proc = command("--run-dir", run, f"base={base}", f"steps={steps}", *SMALL)
    assert proc.returncode == 0, proc.stderr
    return run


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """One uninterrupted run: what every resumed run must end as."""
    return new_run(base, tmp_path_factory.mktemp("reference") / "run")


@pytest.fixture
def finished(base, reference, tmp_path):
    """A copy of the finished reference run, to break."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    return run


def outcome(run: Path) -> dict:
    """What a run computed: its metrics and its store, without clocks and memory."""
    def steady(record):
        return {k: v for k, v in record.items() if not volatile(k)}

    metrics = [steady(r) for r in rundir.read_jsonl(run / "metrics.jsonl")]
    store = Store(run / "store.sqlite", readonly=True)
    try:
        rows = [store.rollouts(s) for s in range(1, store.last_finished_step() + 1)]
        stats = [steady(s) for s in store.learner_stats()]
        finished = store.last_finished_step()
    finally:
        store.close()
    return {"metrics": metrics, "rollouts": rows, "stats": stats, "finished": finished}


def assert_same_run(run: Path, reference: Path):
    mine, theirs = outcome(run), outcome(reference)
    assert mine["finished"] == theirs["finished"] == STEPS
    assert mine["rollouts"] == theirs["rollouts"]
    assert [m["step"] for m in mine["metrics"]] == list(range(STEPS + 1))
    for a, b in zip(mine["metrics"] + mine["stats"], theirs["metrics"] + theirs["stats"]):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], abs=1e-5), key
            else:
                assert a[key] == b[key], key


def snapshot(run: Path) -> dict:
    """Every file of a run directory with its bytes: what a refusal must leave as it was."""
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def cut_back(run: Path, to: int) -> None:
    """As if the run was killed after step ``to``'s checkpoint: later records and checkpoints go."""
    store = Store(run / "store.sqlite")
    store.truncate_after(to)
    store.close()
    rundir.write_atomically(run / "metrics.jsonl", "".join(
        json.dumps(r, sort_keys=True) + "\n" for r in rundir.read_jsonl(run / "metrics.jsonl") if r["step"] <= to))
    for checkpoint in (run / "checkpoints").glob("step_*"):
        if rundir.checkpoint_step(checkpoint) > to:
            shutil.rmtree(checkpoint)


# -- the store ---------------------------------------------------------------------------


def resume_in_process(run: Path) -> tuple[Path | None, list[str]]:
    """What --resume decides for ``run`` (the checkpoint, the lines it says), without training."""
    said = []
    chosen = rundir.resume(run, TrainConfig.load(run / "config.json"), ["main", "sub"], say=said.append)
    return chosen, said


def test_a_store_missing_a_step_is_replayed_from_an_earlier_checkpoint(finished):
    """A cut write-ahead log can take a step out of the store while metrics.jsonl and the
    checkpoints still hold it: resume goes back to the last checkpoint whose steps are all there."""
    connection = sqlite3.connect(finished / "store.sqlite")
    for table in ("rollouts", "learner_stats", "steps"):
        connection.execute(f"DELETE FROM {table} WHERE step = 3")
    connection.commit()
    connection.close()
    chosen, said = resume_in_process(finished)
    assert chosen.name == "step_00002" and len(said) == 1
    assert said[0].startswith("checkpoint step_00004 needs step 3 that the store lacks; "
                              "checkpoint step_00003 needs step 3 that the store lacks: resuming")
    assert said[0].endswith("from step_00002 (step 2), replaying the steps after it")
    assert [r["step"] for r in rundir.read_jsonl(finished / "metrics.jsonl")] == [0, 1, 2]
    assert outcome(finished)["finished"] == 2


def test_a_write_ahead_log_cut_short_is_caught_at_resume(finished):
    """A real cut log: the store's last transaction (steps 3 and 4 written back) is in the
    write-ahead log when the machine stops, and the log is cut inside it. SQLite keeps the
    transactions before the cut, so the store lacks steps 3 and 4; resume names them."""
    db, wal = finished / "store.sqlite", finished / "store.sqlite-wal"
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA wal_autocheckpoint=0")  # every write stays in the log
    for table in ("rollouts", "learner_stats", "steps"):
        rows = connection.execute(f"SELECT * FROM {table} WHERE step >= 3").fetchall()
        connection.execute(f"DELETE FROM {table} WHERE step >= 3")
        connection.commit()
        marks = ", ".join("?" * len(rows[0]))
        connection.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    connection.commit()  # the last transaction: every table's steps 3 and 4 back in place
    crashed = db.read_bytes(), wal.read_bytes()
    connection.close()  # (this folds the log into the file; the crash is put back below)
    db.write_bytes(crashed[0])
    wal.write_bytes(crashed[1][:-100])  # cut inside the last frame, which commits the last transaction
    assert len(crashed[1]) > 4096
    chosen, said = resume_in_process(finished)
    assert chosen.name == "step_00002"
    assert said[0].startswith("checkpoint step_00004 needs steps 3-4 that the store lacks; ")


def test_an_empty_store_beside_its_write_ahead_log_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "store.sqlite"
    store = Store(path, create=True)
    writer = sqlite3.connect(path)  # a writer killed before its log was folded into the file
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO steps VALUES (1, 0.0)")
    writer.commit()
    store.close()
    log = (tmp_path / "store.sqlite-wal").read_bytes()
    assert len(log) > 0
    path.write_bytes(b"")  # the store's main file, cut to nothing
    before = snapshot(tmp_path)
    for kwargs in ({}, {"readonly": True}, {"create": True}):
        with pytest.raises(StoreError, match="the file is empty but its write-ahead log store.sqlite-wal holds"):
            Store(path, **kwargs)
    assert snapshot(tmp_path) == before


# -- checkpoints -------------------------------------------------------------------------


def test_a_truncated_checkpoint_is_named_and_the_run_replayed_from_the_one_before(finished, reference, capsys):
    cut_back(finished, 3)
    state = finished / "checkpoints" / "step_00003" / "main_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    assert train.main(["--quiet", "--resume", str(finished)]) == 0  # in this process: its workers start at once
    line = one_line(capsys.readouterr().err)
    assert line.startswith("checkpoint step_00003 has main_state.pt of 100 bytes, written with ")
    assert line.endswith("from step_00002 (step 2), replaying the steps after it")
    assert_same_run(finished, reference)


@pytest.mark.parametrize("damage, said", [
    (lambda c: (c / "sub" / "adapter_model.safetensors").write_bytes(
        b"\0" * (c / "sub" / "adapter_model.safetensors").stat().st_size),
     "has sub/adapter_model.safetensors changed since it was written (SHA-256)"),
    (lambda c: (c / "controller.json").write_text(""), "has an empty controller.json"),
    (lambda c: (c / "controller.json").write_text("[" * 100_000), "has an unreadable controller.json"),
    (lambda c: (c / "main_state.pt").unlink(), "lacks main_state.pt"),
], ids=["changed", "empty-marker", "nested-marker", "missing"])
def test_each_kind_of_broken_checkpoint_is_named(finished, damage, said):
    damage(finished / "checkpoints" / "step_00004")
    chosen, lines = resume_in_process(finished)
    assert chosen.name == "step_00003"
    assert lines == [f"checkpoint step_00004 {said}: resuming {finished} from step_00003 (step 3), "
                     "replaying the steps after it"]


def test_without_an_intact_checkpoint_the_run_is_refused_and_nothing_changes(finished):
    cut_back(finished, 2)
    for checkpoint in (finished / "checkpoints").glob("step_*"):
        (checkpoint / "main_state.pt").write_bytes(b"cut")
    before = snapshot(finished)
    proc = command("--resume", finished)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert line.startswith("error: checkpoint step_00002 has main_state.pt of 3 bytes")
    assert "no earlier complete checkpoint" in line and "nothing was changed" in line
    assert snapshot(finished) == before


def test_a_checkpoint_killed_while_written_is_not_one(finished):
    """Files without the marker (written last) are no checkpoint: the one before is used, silently."""
    cut_back(finished, 2)
    partial = rundir.new_checkpoint(finished, 3)
    shutil.copy(finished / "checkpoints" / "step_00002" / "main_state.pt", partial / "main_state.pt")
    chosen, said = resume_in_process(finished)
    assert chosen.name == "step_00002" and said == []


def test_a_checkpoint_records_each_file_with_its_size_and_hash(finished):
    marker = json.loads((finished / "checkpoints" / "step_00001" / "controller.json").read_text())
    assert marker["step"] == 1
    assert {"main_state.pt", "sub_state.pt", "main/adapter_model.safetensors"} <= set(marker["files"])
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in marker["files"].values())
    assert rundir.checkpoint_problem(finished / "checkpoints" / "step_00001") is None


# -- start-up ----------------------------------------------------------------------------


def test_a_run_killed_before_its_config_is_started_afresh(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    Store(run / "store.sqlite", create=True).close()  # what start() leaves when killed here
    with pytest.raises(SystemExit) as exit_:
        train.main(["--resume", str(run)])
    assert exit_.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert "holds a run that never started" in line and "without --resume" in line
    said = []
    rundir.start(run, TrainConfig(), say=said.append)
    assert said == [f"{run} holds a run that never started (no config.json, nothing in its store): starting it afresh"]
    assert TrainConfig.load(run / "config.json") == TrainConfig()


def test_a_directory_with_records_is_never_taken_for_a_run_that_never_started(finished):
    (finished / "config.json").unlink()
    assert not rundir.never_started(finished)  # its store holds steps: it is refused, not cleared
    with pytest.raises(FileExistsError, match="already holds a run"):
        rundir.start(finished, TrainConfig())


# -- stopping ----------------------------------------------------------------------------


def wait_for_step(run: Path, step: int, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (run / "workers.json").exists() and (run / "checkpoints").exists():
            try:
                store = Store(run / "store.sqlite", readonly=True)
                done = store.last_finished_step()
                store.close()
            except StoreError:
                done = -1
            if done >= step:
                return
        time.sleep(0.1)
    raise AssertionError(f"step {step} never finished")


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_stopping_a_run_says_one_line_and_leaves_it_resumable(base, reference, tmp_path, how):
    run = tmp_path / "run"
    # A shell without job control starts background commands with SIGINT ignored, which their
    # children inherit; the run is given the default disposition, as a terminal's command has.
    proc = subprocess.Popen([sys.executable, "-m", "mgrpo_ref.train", "--quiet", "--run-dir", str(run),
                             f"base={base}", f"steps={STEPS}", *SMALL],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_step(run, 1, proc)
    workers = json.loads((run / "workers.json").read_text())
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)  # the controller alone, as a scheduler would
    else:
        os.killpg(proc.pid, signal.SIGINT)  # the whole process group, as a terminal does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (143 if how == "SIGTERM" else 130), err
    line = one_line(err)
    assert line.startswith(f"stopped ({how}) during step ") and f"--resume {run}" in line
    deadline = time.time() + 30
    while time.time() < deadline and any(alive(pid) for pid in workers.values()):
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers.values())
    if how == "SIGTERM":  # (a resume after Ctrl-C is the same resume)
        resumed = command("--resume", run)
        assert resumed.returncode == 0, resumed.stderr
        assert_same_run(run, reference)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()  # the redone steps' events replace the ones logged before the stop
        assert [e.step for e in events.Scalars("main/reward_mean")] == list(range(1, STEPS + 1))


# -- errors ------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_with_the_traceback_in_the_run(base, reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    appended = rundir.append_jsonl

    def full_after_two_steps(path, record):
        if record["step"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        appended(path, record)

    monkeypatch.setattr(rundir, "append_jsonl", full_after_two_steps)
    code = train.main(["--quiet", "--run-dir", str(run), f"base={base}", f"steps={STEPS}", *SMALL])
    assert code == 1
    line = one_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(run / "metrics.jsonl") in line
    assert f"traceback in {run / 'errors.log'}" in line and f"--resume {run}" in line
    assert "Traceback (most recent call last)" in (run / "errors.log").read_text()
    monkeypatch.undo()
    assert train.main(["--quiet", "--resume", str(run)]) == 0
    assert_same_run(run, reference)


def test_a_worker_that_cannot_write_its_checkpoint_is_one_line(base, tmp_path):
    run = tmp_path / "run"
    blocked = run / "checkpoints" / "step_00001" / "sub_state.pt"
    blocked.mkdir(parents=True)  # a directory where the sub worker must write a file
    proc = command("--run-dir", run, f"base={base}", f"steps={STEPS}", *SMALL)
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert line.startswith(f"error: the sub worker failed while save: OSError: cannot write {blocked}: ")
    assert f"traceback in {run / 'errors.log'}" in line and line.endswith(f"; continue with: "
                                                                          f"python -m mgrpo_ref.train --resume {run}")
    assert "Traceback (most recent call last)" in (run / "errors.log").read_text()
    assert rundir.latest_checkpoint(run) is None  # the checkpoint it could not finish is none


def test_an_unknown_lora_target_is_refused_before_the_run_directory_exists(base, tmp_path):
    run = tmp_path / "run"
    proc = command("--run-dir", run, f"base={base}", "lora.target_modules=nosuchmodule")
    assert proc.returncode == 2
    assert "nosuchmodule matches no module of" in one_line(proc.stderr) and "q_proj" in proc.stderr
    assert not run.exists()
