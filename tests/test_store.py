"""The file-backed store: atomic records, concurrent processes, crash safety, bad files."""

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from mgrpo_ref.store import APPLICATION_ID, Store, StoreError


def rows(n, reward=0.1):
    return [dict(question=i // 2, rollout=i % 2, qid=f"q{i // 2}", main_reward=reward, correct=False,
                 format_valid=True, n_sub=i % 3) for i in range(n)]


def test_round_trip(tmp_path):
    store = Store(tmp_path / "s.sqlite", create=True)
    store.set_meta(variant="mgrpo", seed=3)
    store.write_rollouts(0, rows(4))
    store.write_stats(0, "main", {"loss": 0.5, "reward_mean": 0.1})
    store.finish_step(0)
    assert store.meta()["variant"] == "mgrpo" and store.meta()["schema_version"] == "1"
    got = store.rollouts(0)
    assert len(got) == 4 and got[3]["n_sub"] == 0 and got[1]["correct"] == 0
    assert store.stats("main") == [{"step": 0, "agent": "main", "loss": 0.5, "reward_mean": 0.1}]
    assert store.last_finished_step() == 0
    # a second connection (as another process would) sees the same
    reader = Store(tmp_path / "s.sqlite", readonly=True)
    assert reader.rollouts(0) == got


def test_rewriting_a_step_does_not_duplicate(tmp_path):
    store = Store(tmp_path / "s.sqlite", create=True)
    store.write_rollouts(1, rows(4, 0.1))
    store.write_rollouts(1, rows(4, 1.0))
    assert [r["main_reward"] for r in store.rollouts(1)] == [1.0] * 4


def test_truncate_after_removes_half_done_steps(tmp_path):
    store = Store(tmp_path / "s.sqlite", create=True)
    for step in range(3):
        store.write_rollouts(step, rows(2))
        store.write_stats(step, "sub", {"loss": step})
    store.finish_step(0)
    store.finish_step(1)
    store.truncate_after(1)
    assert store.rollouts(2) == [] and [s["step"] for s in store.stats()] == [0, 1]
    assert store.last_finished_step() == 1


def test_a_failed_transaction_leaves_nothing(tmp_path):
    store = Store(tmp_path / "s.sqlite", create=True)
    bad = rows(3)
    del bad[2]["qid"]  # the third record is malformed: the whole write must roll back
    with pytest.raises(sqlite3.Error):
        store.write_rollouts(0, bad)
    assert store.rollouts(0) == []


def test_missing_corrupted_and_foreign_files_are_refused_untouched(tmp_path):
    with pytest.raises(StoreError, match="no store"):
        Store(tmp_path / "absent.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 200)
    before = junk.read_bytes()
    with pytest.raises(StoreError, match="not a readable SQLite store"):
        Store(junk, create=True)
    assert junk.read_bytes() == before
    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    with pytest.raises(StoreError, match="not an mgrpo_ref store"):
        Store(foreign, create=True)
    assert foreign.read_bytes() == before
    assert APPLICATION_ID != 0


def test_two_processes_write_and_read_at_once(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path, create=True).close()
    writer = textwrap.dedent(f"""
        from mgrpo_ref.store import Store
        s = Store({str(path)!r})
        for step in range(100):
            s.write_rollouts(step, [dict(question=q, rollout=0, qid='q', main_reward=float(step),
                                         correct=True, format_valid=True, n_sub=1) for q in range(8)])
            s.write_stats(step, {{agent!r}}, {{{{'step': step}}}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", writer.format(agent=a)]) for a in ("main", "sub")]
    reader = Store(path, readonly=True)
    seen_partial = False
    while any(p.poll() is None for p in procs):
        for step in range(100):
            n = len(reader.rollouts(step))
            seen_partial |= n not in (0, 8)  # a reader never sees half a step's records
    assert all(p.wait() == 0 for p in procs)
    assert not seen_partial
    assert all(len(reader.rollouts(s)) == 8 for s in range(100))
    assert len(reader.stats("main")) == 100 and len(reader.stats("sub")) == 100


def test_a_killed_writer_leaves_a_consistent_store(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path, create=True).close()
    script = textwrap.dedent(f"""
        import os, signal
        from mgrpo_ref.store import Store
        s = Store({str(path)!r})
        s.write_rollouts(0, [dict(question=0, rollout=0, qid='q', main_reward=1.0, correct=True,
                                  format_valid=True, n_sub=1)])
        s.conn.execute('BEGIN IMMEDIATE')
        s.conn.execute("INSERT INTO rollouts VALUES (1, 0, 0, 'q', 0.0, 0, 1, 0)")
        os.kill(os.getpid(), signal.SIGKILL)  # dies inside a transaction
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode != 0
    store = Store(path)
    assert len(store.rollouts(0)) == 1 and store.rollouts(1) == []
    store.write_rollouts(1, rows(2))  # and it is writable again
    assert len(store.rollouts(1)) == 2
