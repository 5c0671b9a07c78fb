"""The file-backed store: atomic records, concurrent processes, crash safety, bad files."""

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mgrpo_ref import store as store_module
from mgrpo_ref.store import APPLICATION_ID, SCHEMA_VERSION, Store, StoreError, open_store


def rows(n, reward=0.1):
    return [dict(question_index=i // 2, rollout=i % 2, qid=f"q{i // 2}", main_reward=reward, correct=False,
                 format_valid=True, n_sub=i % 3) for i in range(n)]


def tree(root):
    """Every path under ``root``, relative, with a store's -wal and -shm files folded into the store."""
    return {p.relative_to(root).as_posix().removesuffix("-wal").removesuffix("-shm") for p in root.rglob("*")}


def refused(path, match, **kwargs):
    """Open ``path`` expecting a one-line StoreError that names it and matches ``match``."""
    with pytest.raises(StoreError, match=match) as info:
        Store(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.cluster)])
def where(request, tmp_path):
    """A new store's location, in each backend: an SQLite file, a PostgreSQL database (store_pg.py)."""
    if request.param == "sqlite":
        return tmp_path / "s.sqlite"
    return request.getfixturevalue("postgres").database()


def test_round_trip(where):
    store = open_store(where, create=True)
    store.set_meta(variant="mgrpo", seed=3)
    store.write_rollouts(0, rows(4))
    store.write_learner_stats(0, "main", {"loss": 0.5, "reward_mean": 0.1})
    store.finish_step(0)
    assert store.meta()["variant"] == "mgrpo" and store.meta()["schema_version"] == str(SCHEMA_VERSION) == "3"
    got = store.rollouts(0)
    assert len(got) == 4 and got[3]["n_sub"] == 0 and got[1]["correct"] == 0
    assert [(r["question_index"], r["rollout"]) for r in got] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert "question" not in got[0]
    assert store.learner_stats("main") == [{"step": 0, "learner": "main", "loss": 0.5, "reward_mean": 0.1}]
    assert store.last_finished_step() == 0
    # a second connection (as another process would) sees the same
    reader = open_store(where, readonly=True)
    assert reader.rollouts(0) == got
    assert reader.wait_rollouts(0, 4, timeout=1.0) == got


def test_rollouts_are_ordered_by_question_index_then_rollout(where):
    store = open_store(where, create=True)
    store.write_rollouts(0, list(reversed(rows(6))))
    got = [(r["question_index"], r["rollout"]) for r in store.rollouts(0)]
    assert got == [(b, r) for b in range(3) for r in range(2)]


def test_rewriting_a_step_does_not_duplicate(where):
    store = open_store(where, create=True)
    store.write_rollouts(1, rows(4, 0.1))
    store.write_rollouts(1, rows(4, 1.0))
    assert [r["main_reward"] for r in store.rollouts(1)] == [1.0] * 4


def test_truncate_after_removes_half_done_steps(where):
    store = open_store(where, create=True)
    for step in range(3):
        store.write_rollouts(step, rows(2))
        store.write_learner_stats(step, "sub", {"loss": step})
    store.finish_step(0)
    store.finish_step(1)
    store.truncate_after(1)
    assert store.rollouts(2) == [] and [s["step"] for s in store.learner_stats()] == [0, 1]
    assert store.last_finished_step() == 1


def test_a_failed_transaction_leaves_nothing(where):
    store = open_store(where, create=True)
    bad = rows(3)
    bad[2]["main_reward"] = None  # the third record breaks NOT NULL: the whole write must roll back
    with pytest.raises(StoreError, match="(?i)cannot write to .*not[ -]null") as info:
        store.write_rollouts(0, bad)
    assert str(where) in str(info.value) and "\n" not in str(info.value)
    assert store.rollouts(0) == []
    store.write_rollouts(0, rows(3))  # and the connection is usable again
    assert len(store.rollouts(0)) == 3


def test_a_record_without_question_index_is_refused_before_writing(where):
    store = open_store(where, create=True)
    old_style = [{("question" if k == "question_index" else k): v for k, v in r.items()} for r in rows(2)]
    with pytest.raises(ValueError, match="rollout record 0 of step 0 lacks question_index"):
        store.write_rollouts(0, old_style)
    assert store.rollouts(0) == []


def test_missing_corrupted_and_foreign_files_are_refused_untouched(tmp_path):
    refused(tmp_path / "absent.sqlite", "no store")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 200)
    before = junk.read_bytes()
    refused(junk, "not a readable SQLite store", create=True)
    assert junk.read_bytes() == before
    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    refused(foreign, "not an mgrpo_ref store", create=True)
    assert foreign.read_bytes() == before
    assert tree(tmp_path) == {"junk.sqlite", "foreign.sqlite"}
    assert APPLICATION_ID != 0


# -- paths that need escaping in an SQLite URI ------------------------------------------------


@pytest.mark.parametrize("name", ["run#1", "a?b", "x%41y", "both #?%23 kinds"])
def test_directory_names_with_uri_characters_open_the_right_file(tmp_path, name):
    run = tmp_path / name
    run.mkdir()
    path = run / "store.sqlite"
    writer = Store(path, create=True)
    writer.write_rollouts(0, rows(2))
    writer.close()
    again = Store(path)  # read-write, existing
    again.finish_step(0)
    reader = Store(path, readonly=True)
    assert len(reader.rollouts(0)) == 2 and reader.last_finished_step() == 0
    reader.close()
    again.close()
    assert tree(tmp_path) == {name, f"{name}/store.sqlite"}


@pytest.mark.parametrize("name", ["run#1", "a?b", "x%41y"])
@pytest.mark.parametrize("readonly", [False, True])
def test_a_missing_store_in_a_directory_with_uri_characters_creates_nothing(tmp_path, name, readonly):
    run = tmp_path / name
    run.mkdir()
    refused(run / "store.sqlite", "no store", readonly=readonly)
    assert tree(tmp_path) == {name}


# -- paths that cannot hold a store -----------------------------------------------------------


def test_a_missing_directory_is_refused_and_not_created(tmp_path):
    message = refused(tmp_path / "no" / "such" / "store.sqlite", "does not exist", create=True)
    assert str(tmp_path / "no" / "such") in message
    assert tree(tmp_path) == set()


@pytest.mark.parametrize("kwargs", [{}, {"create": True}, {"readonly": True}])
def test_a_directory_is_refused_as_a_store_path(tmp_path, kwargs):
    (tmp_path / "store.sqlite").mkdir()
    refused(tmp_path / "store.sqlite", "it is a directory", **kwargs)
    assert tree(tmp_path) == {"store.sqlite"}


def test_create_and_readonly_cannot_be_combined(tmp_path):
    with pytest.raises(ValueError, match="cannot be combined"):
        Store(tmp_path / "s.sqlite", create=True, readonly=True)
    assert tree(tmp_path) == set()


# -- write-protected stores are refused when opened for writing ---------------------------------


def deny_writes_to(monkeypatch, denied):
    """Make ``os.access`` (as the store sees it) report ``denied`` as not writable, as for any user."""
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and os.fspath(path) == os.fspath(denied):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "access", access)


def test_a_write_protected_store_is_refused_at_open(tmp_path, monkeypatch):
    path = tmp_path / "s.sqlite"
    Store(path, create=True).close()
    before = path.read_bytes()
    deny_writes_to(monkeypatch, path)
    refused(path, "cannot write to .*write-protected")
    refused(path, "write-protected", create=True)
    reader = Store(path, readonly=True)  # reading it is still fine
    assert reader.last_finished_step() == -1
    reader.close()
    assert path.read_bytes() == before and tree(tmp_path) == {"s.sqlite"}


def test_a_write_protected_run_directory_is_refused_at_open(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    Store(run / "s.sqlite", create=True).close()
    deny_writes_to(monkeypatch, run)
    refused(run / "s.sqlite", "cannot write to .*directory is write-protected")
    refused(run / "new.sqlite", "directory is write-protected", create=True)
    assert tree(tmp_path) == {"run", "run/s.sqlite"}


def test_a_store_sqlite_can_only_open_read_only_is_refused_at_open(tmp_path, monkeypatch):
    # When the operating system refuses to open a file for writing, SQLite quietly opens it
    # read-only; asking for mode=ro reproduces that, even as root.
    path = tmp_path / "s.sqlite"
    Store(path, create=True).close()
    before = path.read_bytes()
    real_uri = store_module._uri
    monkeypatch.setattr(store_module, "_uri", lambda p, mode: real_uri(p, "ro"))
    refused(path, "cannot write to .*: attempt to write a readonly database")
    monkeypatch.undo()
    Store(path).close()  # so the read-only connection's -wal and -shm files are cleaned up
    assert path.read_bytes() == before and tree(tmp_path) == {"s.sqlite"}


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through chmod; the tests above simulate it")
def test_a_chmod_write_protected_store_is_refused_at_open(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path, create=True).close()
    before = path.read_bytes()
    path.chmod(0o444)
    try:
        refused(path, "cannot write to .*write-protected")
        assert Store(path, readonly=True).last_finished_step() == -1
    finally:
        path.chmod(0o644)
    assert path.read_bytes() == before


# -- files that are not stores of this schema are left untouched --------------------------------


def test_an_existing_sqlite_file_without_tables_is_left_untouched(tmp_path):
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")  # a valid SQLite file with a header and no tables
    conn.commit()
    conn.close()
    before = path.read_bytes()
    assert before.startswith(b"SQLite format 3\x00")
    for kwargs in ({"create": True}, {}, {"readonly": True}):
        message = refused(path, "is an SQLite file but not an mgrpo_ref store", **kwargs)
        assert "left untouched" in message
        assert path.read_bytes() == before
    assert tree(tmp_path) == {"s.sqlite"}


def test_a_zero_byte_file_becomes_a_store_only_with_create(tmp_path):
    path = tmp_path / "s.sqlite"
    path.touch()
    refused(path, "is an empty file but not an mgrpo_ref store")
    assert path.read_bytes() == b""
    store = Store(path, create=True)
    store.write_rollouts(0, rows(2))
    assert len(store.rollouts(0)) == 2


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_schema_version_is_refused_untouched_in_one_line(tmp_path, version):
    """Version 2 is the last one before ``learner_stats``: its statistics sat in ``agent_stats``."""
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("CREATE TABLE rollouts (step INTEGER, question INTEGER, rollout INTEGER)")
    conn.execute("CREATE TABLE agent_stats (step INTEGER, agent TEXT, stats TEXT)")
    conn.execute("INSERT INTO agent_stats VALUES (1, 'main', '{}')")
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for kwargs in ({}, {"create": True}, {"readonly": True}):
        message = refused(path, f"schema version {version}, this code reads schema version 3", **kwargs)
        assert "left untouched" in message and "new run directory" in message and "\n" not in message
    assert path.read_bytes() == before and tree(tmp_path) == {"s.sqlite"}


# -- errors after opening -----------------------------------------------------------------------


@pytest.mark.parametrize("write", [
    lambda s: s.set_meta(seed=1),
    lambda s: s.write_rollouts(0, rows(2)),
    lambda s: s.write_learner_stats(0, "main", {"loss": 1.0}),
    lambda s: s.finish_step(0),
    lambda s: s.truncate_after(0),
])
def test_writes_through_a_read_only_connection_name_the_store(tmp_path, write):
    path = tmp_path / "s.sqlite"
    Store(path, create=True).close()
    reader = Store(path, readonly=True)
    with pytest.raises(StoreError) as info:
        write(reader)
    assert str(info.value) == f"cannot write to {path}: attempt to write a readonly database"


@pytest.mark.parametrize("read", [
    lambda s: s.rollouts(0),
    lambda s: s.wait_rollouts(0, 1, timeout=0.1),
    lambda s: s.learner_stats(),
    lambda s: s.learner_stats("main"),
    lambda s: s.last_finished_step(),
    lambda s: s.meta(),
])
def test_reads_of_a_damaged_store_name_the_store(tmp_path, read):
    path = tmp_path / "s.sqlite"
    store = Store(path, create=True)
    damage = sqlite3.connect(path)
    damage.executescript("DROP TABLE rollouts; DROP TABLE learner_stats; DROP TABLE steps; DROP TABLE meta;")
    damage.close()
    with pytest.raises(StoreError, match="^cannot read .*: no such table") as info:
        read(store)
    assert str(path) in str(info.value)


def test_errors_inside_a_transaction_block_name_the_store(tmp_path):
    path = tmp_path / "s.sqlite"
    store = Store(path, create=True)
    with pytest.raises(StoreError, match="cannot write to .*no such table") as info:
        with store.transaction() as conn:
            conn.execute("INSERT INTO steps VALUES (0, 0.0)")
            conn.execute("INSERT INTO nowhere VALUES (1)")
    assert str(path) in str(info.value)
    assert store.last_finished_step() == -1  # the block's first insert was rolled back


# -- processes ----------------------------------------------------------------------------------


def test_two_processes_write_and_read_at_once(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path, create=True).close()
    writer = textwrap.dedent(f"""
        from mgrpo_ref.store import Store
        s = Store({str(path)!r})
        for step in range(100):
            s.write_rollouts(step, [dict(question_index=q, rollout=0, qid='q', main_reward=float(step),
                                         correct=True, format_valid=True, n_sub=1) for q in range(8)])
            s.write_learner_stats(step, {{learner!r}}, {{{{'step': step}}}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", writer.format(learner=a)]) for a in ("main", "sub")]
    reader = Store(path, readonly=True)
    seen_partial, seen_during = False, set()
    while any(p.poll() is None for p in procs):
        for step in range(100):
            n = len(reader.rollouts(step))
            seen_partial |= n not in (0, 8)  # a reader never sees half a step's records
            if n == 8 and any(p.poll() is None for p in procs):
                seen_during.add(step)
    assert all(p.wait() == 0 for p in procs)
    assert not seen_partial
    assert seen_during, "the reader never read a step while the writers were writing"
    assert all(len(reader.rollouts(s)) == 8 for s in range(100))
    assert len(reader.learner_stats("main")) == 100 and len(reader.learner_stats("sub")) == 100


def test_a_killed_writer_leaves_a_consistent_store(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path, create=True).close()
    script = textwrap.dedent(f"""
        import os, signal
        from mgrpo_ref.store import Store
        s = Store({str(path)!r})
        s.write_rollouts(0, [dict(question_index=0, rollout=0, qid='q', main_reward=1.0, correct=True,
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


def test_a_store_in_a_directory_this_process_cannot_write_is_read_from_a_copy(tmp_path):
    """SQLite reads a WAL store only beside a shared-memory file it can create; in a directory
    another user owns, readonly=True reads a private copy and leaves the directory as it was."""
    import os
    import subprocess
    import sys

    from mgrpo_ref.store import Store

    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="mgrpo-theirs-"))  # pytest's tmp_path is private to this user
    os.chmod(home, 0o755)
    folder = home / "theirs"
    folder.mkdir()
    store = Store(folder / "store.sqlite", create=True)
    store.finish_step(1)
    store.close()
    os.chmod(folder, 0o555)
    script = ("import os, sys\n"
              "from mgrpo_ref.store import Store  # imported first: the interpreter lives where only root may read\n"
              "if os.getuid() == 0: os.setgid(65534); os.setuid(65534)  # root can write anywhere: be another user\n"
              f"s = Store({str(folder / 'store.sqlite')!r}, readonly=True)\n"
              "print(s.last_finished_step()); s.close()\n")
    try:
        before = sorted(p.name for p in folder.iterdir())
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "1"
        assert sorted(p.name for p in folder.iterdir()) == before
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(home)
