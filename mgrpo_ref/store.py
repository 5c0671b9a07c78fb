"""The shared store: the only thing the two learners' processes share (docs/paper.md section 6).

In the paper the main agent logs trajectories and rewards to a shared database and the
sub-agent reads the rewards it needs from it; no gradient crosses between the agents, only
scalars. Ours is one SQLite file in the run directory, in WAL mode [ours]:

* SQLite is in the standard library, and every write is a transaction, so a record is
  atomic: a reader sees all of it or none of it;
* WAL (write-ahead logging) lets readers and a writer work at once, from several
  processes, and survives the crash of any of them (an unfinished transaction is rolled
  back when the file is next opened);
* a notebook can open the same file read-only during a run.

A run on several hosts (docs/cluster.md) keeps the same tables in a PostgreSQL database that
every host reaches instead (``store_pg.PostgresStore``); ``open_store`` opens either from its
location, a path or a ``postgresql://`` address. Both answer the methods of ``Records``, whose
SQL is common to the two.

Schema (``SCHEMA_VERSION`` 3):

    meta(key TEXT PRIMARY KEY, value TEXT)          run identity: schema version, variant, seed
    rollouts(step, question_index, rollout,         one row per (step, question_index, rollout),
             qid, main_reward, correct,             written by the main agent's learner;
             format_valid, n_sub,                   question_index is the question's index b
             PRIMARY KEY (step, question_index,     within the step, qid its identity
                          rollout))
    learner_stats(step, learner, stats,             one row per (step, learner): that learner's
                  PRIMARY KEY (step, learner))      training statistics, a JSON object
    steps(step PRIMARY KEY, finished_at)            a step is in the store once every learner
                                                    has written its records

The file's SQLite header carries ``APPLICATION_ID``, so a foreign SQLite file (or any other
file) is refused with a clear error and never written to. ``create=True`` writes the schema
only into a file that does not exist yet or is zero bytes long. A store opened for writing
is checked to be writable when it is opened. An empty file beside a non-empty write-ahead log
is refused (SQLite would drop the log). A store in a directory this process may not write is
read from a private copy (``readonly=True``). Every SQLite error leaves a ``Store`` as a
``StoreError`` whose one-line message names the file and what failed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import first_line

if TYPE_CHECKING:  # torch is imported where a tensor is made: a process that only reads or
    import torch  # writes records (a benchmark's writers, a notebook) does without it

APPLICATION_ID = 0x4D475250  # "MGRP" in the SQLite header's application_id field
SCHEMA_VERSION = 3
"""3: the learners' statistics in ``learner_stats`` (2 called them ``agent_stats``)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rollouts (
    step INTEGER NOT NULL, question_index INTEGER NOT NULL, rollout INTEGER NOT NULL,
    qid TEXT NOT NULL, main_reward REAL NOT NULL, correct INTEGER NOT NULL,
    format_valid INTEGER NOT NULL, n_sub INTEGER NOT NULL,
    PRIMARY KEY (step, question_index, rollout));
CREATE TABLE IF NOT EXISTS learner_stats (
    step INTEGER NOT NULL, learner TEXT NOT NULL, stats TEXT NOT NULL,
    PRIMARY KEY (step, learner));
CREATE TABLE IF NOT EXISTS steps (step INTEGER PRIMARY KEY, finished_at REAL NOT NULL);
"""
"""The tables, in SQLite's types (store_pg.py reads REAL as PostgreSQL's 8-byte DOUBLE PRECISION)."""
TABLES = ("meta", "rollouts", "learner_stats", "steps")
RECORD_TABLES = ("rollouts", "learner_stats", "steps")
"""The tables a run writes step by step (meta holds the run's identity)."""

ROLLOUT_FIELDS = ("question_index", "rollout", "qid", "main_reward", "correct", "format_valid", "n_sub")


class StoreError(RuntimeError):
    """The store cannot be opened, read or written; the message names the file and the cause."""


def _uri(path: Path, mode: str) -> str:
    """The SQLite URI of ``path`` opened in ``mode`` (ro, rw, rwc); '#', '?' and '%' are escaped."""
    return f"{path.resolve().as_uri()}?mode={mode}"


def _failing_as(action: str):
    """Decorate a ``Store`` method so that a sqlite3 error leaves it as ``cannot <action> <path>``."""
    def decorate(method):
        @functools.wraps(method)
        def wrapped(self, *args, **kwargs):
            with self._errors(action):
                return method(self, *args, **kwargs)
        return wrapped
    return decorate


def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    """INSERT a row, or replace the one with the same ``key``: one statement that SQLite (3.24 on)
    and PostgreSQL both read, with ``?`` for each value."""
    values = ", ".join("?" for _ in columns)
    update = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {update}")


ROLLOUT_COLUMNS = ("step", *ROLLOUT_FIELDS)
_PUT = {"meta": _upsert("meta", ("key", "value"), ("key",)),
        "rollouts": _upsert("rollouts", ROLLOUT_COLUMNS, ("step", "question_index", "rollout")),
        "learner_stats": _upsert("learner_stats", ("step", "learner", "stats"), ("step", "learner")),
        "steps": _upsert("steps", ("step", "finished_at"), ("step",))}


class Records:
    """The store's records, read and written in SQL that both backends take (``?`` marks each
    value). A backend provides ``name`` (what its messages call it), ``driver_error`` (its
    driver's base exception), ``_query(sql, args)`` (the rows of one read) and ``transaction()``
    (a block whose ``execute`` and ``executemany`` commit together)."""

    name: str
    driver_error: type = Exception

    @contextlib.contextmanager
    def _errors(self, action: str):
        """Turn a driver error inside the block into ``StoreError('cannot <action> <store>: ...')``,
        one line."""
        try:
            yield
        except self.driver_error as err:
            raise StoreError(f"cannot {action} {self.name}: {first_line(err)}") from err

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def _check_opened(self, readonly: bool) -> None:
        """Refuse what is not a store of ours (``_check_identity``), or, for writing, one this
        process cannot write (``_check_writable``); a refused store's connection is closed."""
        try:
            self._check_identity()
            if not readonly:
                self._check_writable()
        except BaseException:
            self.conn.close()
            raise

    def transaction(self):
        raise NotImplementedError

    # -- meta ----------------------------------------------------------------------------

    @_failing_as("read")
    def meta(self) -> dict[str, str]:
        return dict(self._query("SELECT key, value FROM meta"))

    @_failing_as("write to")
    def set_meta(self, **values) -> None:
        with self.transaction() as tx:
            tx.executemany(_PUT["meta"], [(k, str(v)) for k, v in values.items()])

    # -- writes --------------------------------------------------------------------------

    @_failing_as("write to")
    def write_rollouts(self, step: int, rows: list[dict]) -> None:
        """All rollouts of one step in one transaction (the main agent's results).

        Each row has the keys ``ROLLOUT_FIELDS``; a row that lacks one is refused with a
        ``ValueError`` before anything is written.
        """
        for i, row in enumerate(rows):
            missing = [key for key in ROLLOUT_FIELDS if key not in row]
            if missing:
                raise ValueError(f"rollout record {i} of step {step} lacks {', '.join(missing)} "
                                 f"(a record has {', '.join(ROLLOUT_FIELDS)})")
        flags = ("correct", "format_valid")
        with self.transaction() as tx:
            tx.executemany(_PUT["rollouts"], [(step, *(int(r[k]) if k in flags else r[k] for k in ROLLOUT_FIELDS))
                                              for r in rows])

    @_failing_as("write to")
    def write_learner_stats(self, step: int, learner: str, stats: dict) -> None:
        """One learner's statistics of ``step``, a JSON object."""
        with self.transaction() as tx:
            tx.execute(_PUT["learner_stats"], (step, learner, json.dumps(stats, sort_keys=True)))

    @_failing_as("write to")
    def finish_step(self, step: int) -> None:
        with self.transaction() as tx:
            tx.execute(_PUT["steps"], (step, time.time()))

    @_failing_as("write to")
    def truncate_after(self, step: int) -> None:
        """Remove every record of steps after ``step`` (what a killed run left half done)."""
        with self.transaction() as tx:
            for table in RECORD_TABLES:
                tx.execute(f"DELETE FROM {table} WHERE step > ?", (step,))

    # -- reads ---------------------------------------------------------------------------

    @_failing_as("read")
    def rollouts(self, step: int) -> list[dict]:
        """The rollout records of ``step``, ordered by question_index, then rollout."""
        rows = self._query(f"SELECT {', '.join(ROLLOUT_COLUMNS)} FROM rollouts WHERE step = ? "
                           "ORDER BY question_index, rollout", (step,))
        return [dict(zip(ROLLOUT_COLUMNS, row)) for row in rows]

    def wait_rollouts(self, step: int, expected: int, timeout: float = 600.0, poll: float = 0.01) -> list[dict]:
        """Block until the main agent's ``expected`` rollout records of ``step`` are in.

        Raises ``TimeoutError`` after ``timeout`` seconds, and ``StoreError`` as ``rollouts`` does.
        """
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rollouts(step)
            if len(rows) >= expected:
                return rows
            if time.monotonic() > deadline:
                raise TimeoutError(f"store {self.name}: only {len(rows)} of {expected} rollout records "
                                   f"of step {step}")
            time.sleep(poll)

    @_failing_as("read")
    def learner_stats(self, learner: str | None = None) -> list[dict]:
        """Every learner's statistics (or ``learner``'s), by step: dicts with ``step``, ``learner``
        and the statistics' keys."""
        query = "SELECT step, learner, stats FROM learner_stats"
        args: tuple = ()
        if learner is not None:
            query, args = query + " WHERE learner = ?", (learner,)
        return [{"step": s, "learner": a, **json.loads(j)} for s, a, j in self._query(query + " ORDER BY step", args)]

    @_failing_as("read")
    def complete_steps(self, learners: list[str]) -> set[int]:
        """The steps that are whole in the store: finished, with the statistics of every learner."""
        finished = {s for (s,) in self._query("SELECT step FROM steps")}
        for learner in learners:
            finished &= {s for (s,) in self._query("SELECT step FROM learner_stats WHERE learner = ?", (learner,))}
        return finished

    @_failing_as("read")
    def is_empty(self) -> bool:
        """True while no step, statistic or rollout has been written."""
        return not any(self._query(f"SELECT 1 FROM {table} LIMIT 1") for table in RECORD_TABLES)

    @_failing_as("read")
    def last_finished_step(self) -> int:
        """The last step fully in the store; -1 before the first."""
        ((step,),) = self._query("SELECT COALESCE(MAX(step), -1) FROM steps")
        return step


class Store(Records):
    """A connection to the run's store. Open one per process; each method is one transaction.

    ``create=True`` makes a new store if the file does not exist or is empty; ``readonly=True``
    opens an existing store for reading only (the two cannot be combined). ``at_rest=True``
    (with ``readonly``) is for a store no process has open or will open while it is read, as
    when a run is checked before it resumes: read that way it leaves no -wal or -shm file behind.
    """

    driver_error = sqlite3.Error

    def __init__(self, path: str | Path, create: bool = False, readonly: bool = False, timeout: float = 30.0,
                 at_rest: bool = False):
        if create and readonly:
            raise ValueError("Store: create=True and readonly=True cannot be combined")
        if at_rest and not readonly:
            raise ValueError("Store: at_rest=True is for reading only (readonly=True)")
        self.path, self.at_rest = Path(path), at_rest
        self.name = str(self.path)
        self._snapshot_dir = None  # the private copy a read-only store is read from, if any (``_snapshot``)
        self._check_path(create, readonly)
        if create and (not self.path.exists() or self.path.stat().st_size == 0):
            self._create()
        self.conn = self._connect("ro" if readonly else "rw", timeout)
        self._check_opened(readonly)

    # -- opening -------------------------------------------------------------------------

    def _check_path(self, create: bool, readonly: bool) -> None:
        """Refuse, before SQLite sees it, a path that cannot hold a store opened this way."""
        parent = self.path.parent
        if not parent.is_dir():
            raise StoreError(f"cannot open {self.path}: directory {parent} does not exist")
        if self.path.is_dir():
            raise StoreError(f"cannot open {self.path}: it is a directory, not a store file")
        if not self.path.exists() and not create:
            raise StoreError(f"cannot open {self.path}: no such file, so no store there "
                             "(create=True makes one)")
        wal = self.path.with_name(self.path.name + "-wal")
        if self.path.exists() and self.path.stat().st_size == 0 and wal.exists() and wal.stat().st_size > 0:
            # SQLite would take the empty file for a new database and drop the log on closing it
            raise StoreError(f"cannot open {self.path}: the file is empty but its write-ahead log {wal.name} holds "
                             f"{wal.stat().st_size:,} bytes, perhaps the run's data; both were left untouched")
        if readonly:
            return
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise StoreError(f"cannot write to {self.path}: the file is write-protected "
                             "(readonly=True opens it for reading)")
        if not os.access(parent, os.W_OK):
            raise StoreError(f"cannot write to {self.path}: its directory is write-protected and SQLite "
                             "keeps its -wal and -shm files there (readonly=True opens it for reading)")

    def _connect(self, mode: str, timeout: float) -> sqlite3.Connection:
        path = self.path
        if mode == "ro" and not os.access(path.parent, os.W_OK | os.X_OK):
            path = self._snapshot()
        uri = _uri(path, mode)
        if mode == "ro" and self.at_rest and not any(path.with_name(path.name + s).exists() for s in ("-wal", "-shm")):
            # No connection has the store open (each one keeps a -shm file) and every write is in
            # the file itself: read it as it is, leaving no -wal or -shm file behind.
            uri += "&immutable=1"
        with self._errors("open"):
            return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)

    def _snapshot(self) -> Path:
        """A copy of the store and its write-ahead log in a private temporary directory, to read
        a store whose directory this process may not write: SQLite reads a WAL store only
        beside a shared-memory file it can create. No writer can be at work in such a directory."""
        self._snapshot_dir = tempfile.TemporaryDirectory(prefix="mgrpo-store-")
        copy = Path(self._snapshot_dir.name) / self.path.name
        for suffix in ("", "-wal"):
            source = self.path.with_name(self.path.name + suffix)
            if source.exists():
                try:
                    shutil.copyfile(source, copy.with_name(copy.name + suffix))
                except OSError as err:
                    raise StoreError(f"cannot read {source}: {err.strerror or err}") from err
        return copy

    def _create(self) -> None:
        """Build a new store in a temporary file beside ``path``, then move it into place, so
        that a reader sees no store or a whole one, never a file without its schema."""
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".new", dir=self.path.parent)
        os.close(fd)
        tmp = Path(name)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # as any new file (mkstemp's are private to this user)
        try:
            with self._errors("create a store at"):
                conn = sqlite3.connect(_uri(tmp, "rw"), uri=True, isolation_level=None)
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(statement)
                    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                    conn.execute("COMMIT")
                finally:
                    conn.close()  # the last connection: SQLite folds the WAL back into the file
            if self.path.exists():  # zero bytes long (checked above): replaced by the new store
                os.replace(tmp, self.path)
            else:
                try:
                    os.link(tmp, self.path)  # never over a store another process just made
                except FileExistsError:
                    pass
                except OSError:  # a file system without hard links
                    os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def _tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _check_identity(self) -> None:
        """Refuse any file that is not a store of ``SCHEMA_VERSION``; only reads it."""
        try:
            app_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
            tables = self._tables()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is not a readable SQLite store ({err}); it was left untouched") from err
        if app_id != APPLICATION_ID:
            what = "an empty file" if self.path.stat().st_size == 0 else "an SQLite file"
            raise StoreError(f"{self.path} is {what} but not an mgrpo_ref store (application_id {app_id:#x}, "
                             f"{len(tables)} tables); it was left untouched")
        version = self.meta().get("schema_version")
        if version != str(SCHEMA_VERSION):
            raise StoreError(f"{self.path} is a store of schema version {version}, this code reads "
                             f"schema version {SCHEMA_VERSION} (start a new run directory, or use the "
                             "mgrpo_ref that wrote it); it was left untouched")

    @_failing_as("write to")
    def _check_writable(self) -> None:
        """Start a write (the header's own application_id, unchanged) and roll it back."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        finally:
            self.conn.execute("ROLLBACK")

    def transaction(self):
        """``with store.transaction() as tx:`` - BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error;
        ``tx`` is the connection. A sqlite3 error inside the block leaves it as a ``StoreError``.
        """
        return _Transaction(self)

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self.conn.execute(sql, args).fetchall()

    @_failing_as("close")
    def close(self) -> None:
        self.conn.close()
        if self._snapshot_dir is not None:
            self._snapshot_dir.cleanup()


DATABASE_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(location: str | Path) -> bool:
    """True when ``location`` names a PostgreSQL database rather than a file."""
    return isinstance(location, str) and location.startswith(DATABASE_SCHEMES)


def open_store(location: str | Path, **options) -> Records:
    """The store at ``location``: a ``postgresql://`` address (``store_pg.PostgresStore``, which
    needs the optional ``psycopg``), or else the path of an SQLite file (``Store``). ``options``
    as the class takes them (``create``, ``readonly``, ...)."""
    if is_database_url(location):
        from .store_pg import PostgresStore
        return PostgresStore(location, **options)
    return Store(location, **options)


# ---------------------------------------------------------------------------
# The rollouts' row format, and the store as the channel of correct(M)


def rollout_rows(episodes: list, rewards: list[float], correct: torch.Tensor, rollouts: int) -> list[dict]:
    """The main agent's half as the store's rows, one per rollout (``ROLLOUT_FIELDS``): what
    the sub-agent's learner reads. ``rewards`` are R_M in episode order, ``correct`` the (B, K)
    correct(M)."""
    flat = correct.view(-1)  # (B*K,)
    return [dict(question_index=i // rollouts, rollout=i % rollouts, qid=e.question.qid,
                 main_reward=rewards[i], correct=bool(flat[i]), format_valid=e.main.format_valid,
                 n_sub=len(e.subs))
            for i, e in enumerate(episodes)]


def correct_from_rows(rows: list[dict], episodes: list, rollouts: int) -> torch.Tensor:
    """(B, K) bool correct(M), from the store's rows of one step, checked against the episodes
    they must describe (the same question and the same number of sub-agent calls)."""
    if len(rows) != len(episodes):
        raise ValueError(f"the store holds {len(rows)} rollout rows for the step's {len(episodes)} episodes")
    import torch

    correct = torch.zeros(len(episodes) // rollouts, rollouts, dtype=torch.bool)  # (B, K)
    for row in rows:
        i = row["question_index"] * rollouts + row["rollout"]
        e = episodes[i] if 0 <= row["rollout"] < rollouts and 0 <= i < len(episodes) else None
        if e is None or row["qid"] != e.question.qid or row["n_sub"] != len(e.subs):
            raise ValueError(f"the store's row for question {row['question_index']}, rollout {row['rollout']} "
                             "does not describe this step's episodes")
        correct[row["question_index"], row["rollout"]] = bool(row["correct"])
    return correct


class StoreChannel:
    """correct(M) from the main agent's half to the sub-agent's through the store: the channel
    of ``step.learner_step`` in the two-process pipeline (``step.DirectChannel`` is the one of a
    single process). ``seconds`` adds up the time spent in the store."""

    def __init__(self, store: Store, rollouts: int):
        self.store, self.rollouts, self.seconds = store, rollouts, 0.0

    def send(self, step: int, episodes: list, main) -> None:
        start = time.perf_counter()
        self.store.write_rollouts(step, rollout_rows(episodes, main.rewards, main.correct, self.rollouts))
        self.seconds += time.perf_counter() - start

    def receive(self, step: int, episodes: list) -> torch.Tensor:
        start = time.perf_counter()
        rows = self.store.wait_rollouts(step, len(episodes))  # the main agent's results
        self.seconds += time.perf_counter() - start
        return correct_from_rows(rows, episodes, self.rollouts)  # (B, K)


class _Transaction:
    """BEGIN IMMEDIATE on entry; COMMIT on a clean exit, ROLLBACK otherwise.

    A sqlite3 error, from the block or from these statements, leaves as a ``StoreError``.
    """

    def __init__(self, store: Store):
        self.store = store
        self.conn = store.conn

    def __enter__(self) -> sqlite3.Connection:
        with self.store._errors("write to"):
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        with self.store._errors("write to"):
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                except sqlite3.Error:
                    self._rollback()
                    raise
                return False
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise exc
        return False

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
