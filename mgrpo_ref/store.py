"""The shared store: the only thing the two agents' processes share (PAPER.md section 6).

In the paper the main agent logs trajectories and rewards to a shared database and the
sub-agent reads the rewards it needs from it; no gradient crosses between the agents, only
scalars. Ours is one SQLite file in the run directory, in WAL mode [ours]:

* SQLite is in the standard library, and every write is a transaction, so a record is
  atomic: a reader sees all of it or none of it;
* WAL (write-ahead logging) lets readers and a writer work at once, from several
  processes, and survives the crash of any of them (an unfinished transaction is rolled
  back when the file is next opened);
* a notebook can open the same file read-only during a run.

Schema (``SCHEMA_VERSION`` 1):

    meta(key TEXT PRIMARY KEY, value TEXT)          run identity: schema version, variant, seed
    rollouts(step, question, rollout,               one row per (step, question, rollout),
             qid, main_reward, correct,             written by the main agent's worker
             format_valid, n_sub,
             PRIMARY KEY (step, question, rollout))
    agent_stats(step, agent, stats,                 one row per (step, agent): that agent's
                PRIMARY KEY (step, agent))          training statistics, a JSON object
    steps(step PRIMARY KEY, finished_at)            a step is in the store once both agents
                                                    have written their records

The file's SQLite header carries ``APPLICATION_ID``, so a foreign SQLite file (or any other
file) is refused with a clear error and never overwritten.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

APPLICATION_ID = 0x4D475250  # "MGRP" in the SQLite header's application_id field
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rollouts (
    step INTEGER NOT NULL, question INTEGER NOT NULL, rollout INTEGER NOT NULL,
    qid TEXT NOT NULL, main_reward REAL NOT NULL, correct INTEGER NOT NULL,
    format_valid INTEGER NOT NULL, n_sub INTEGER NOT NULL,
    PRIMARY KEY (step, question, rollout));
CREATE TABLE IF NOT EXISTS agent_stats (
    step INTEGER NOT NULL, agent TEXT NOT NULL, stats TEXT NOT NULL,
    PRIMARY KEY (step, agent));
CREATE TABLE IF NOT EXISTS steps (step INTEGER PRIMARY KEY, finished_at REAL NOT NULL);
"""


class StoreError(RuntimeError):
    """The file is not a store of this project (or is damaged); nothing was written to it."""


class Store:
    """A connection to the run's store. Open one per process; each method is one transaction."""

    def __init__(self, path: str | Path, create: bool = False, readonly: bool = False, timeout: float = 30.0):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise StoreError(f"no store at {self.path}")
        if readonly:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=timeout)
        else:
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        try:
            self._check_or_init(create and not readonly)
        except sqlite3.DatabaseError as err:
            self.conn.close()
            raise StoreError(f"{self.path} is not a readable SQLite store ({err}); "
                             "it was left untouched") from None

    def _check_or_init(self, create: bool) -> None:
        app_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id == 0 and not tables and create:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            with self.transaction():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self.conn.execute(statement)
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        if app_id != APPLICATION_ID:
            self.conn.close()
            raise StoreError(f"{self.path} is an SQLite file but not an mgrpo_ref store "
                             f"(application_id {app_id:#x}); it was left untouched")
        version = self.meta().get("schema_version")
        if version != str(SCHEMA_VERSION):
            self.conn.close()
            raise StoreError(f"{self.path} has store schema {version}, this code reads {SCHEMA_VERSION}")

    def transaction(self):
        """``with store.transaction():`` - BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""
        return _Transaction(self.conn)

    def close(self) -> None:
        self.conn.close()

    # -- meta ----------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta"))

    def set_meta(self, **values) -> None:
        with self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                  [(k, str(v)) for k, v in values.items()])

    # -- writes --------------------------------------------------------------------------

    def write_rollouts(self, step: int, rows: list[dict]) -> None:
        """All rollouts of one step in one transaction (the main agent's results)."""
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO rollouts VALUES (:step, :question, :rollout, :qid, :main_reward,"
                " :correct, :format_valid, :n_sub)",
                [dict(r, step=step, correct=int(r["correct"]), format_valid=int(r["format_valid"])) for r in rows])

    def write_stats(self, step: int, agent: str, stats: dict) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO agent_stats VALUES (?, ?, ?)",
                              (step, agent, json.dumps(stats, sort_keys=True)))

    def finish_step(self, step: int) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO steps VALUES (?, ?)", (step, time.time()))

    def truncate_after(self, step: int) -> None:
        """Remove every record of steps after ``step`` (what a killed run left half done)."""
        with self.transaction():
            for table in ("rollouts", "agent_stats", "steps"):
                self.conn.execute(f"DELETE FROM {table} WHERE step > ?", (step,))

    # -- reads ---------------------------------------------------------------------------

    def rollouts(self, step: int) -> list[dict]:
        cur = self.conn.execute("SELECT * FROM rollouts WHERE step = ? ORDER BY question, rollout", (step,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def wait_rollouts(self, step: int, expected: int, timeout: float = 600.0, poll: float = 0.01) -> list[dict]:
        """Block until the main agent's ``expected`` rollout records of ``step`` are in."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rollouts(step)
            if len(rows) >= expected:
                return rows
            if time.monotonic() > deadline:
                raise TimeoutError(f"store: only {len(rows)} of {expected} rollout records of step {step}")
            time.sleep(poll)

    def stats(self, agent: str | None = None) -> list[dict]:
        query = "SELECT step, agent, stats FROM agent_stats"
        args: tuple = ()
        if agent is not None:
            query, args = query + " WHERE agent = ?", (agent,)
        return [{"step": s, "agent": a, **json.loads(j)} for s, a, j in self.conn.execute(query + " ORDER BY step", args)]

    def last_finished_step(self) -> int:
        """The last step fully in the store; -1 before the first."""
        (step,) = self.conn.execute("SELECT COALESCE(MAX(step), -1) FROM steps").fetchone()
        return step


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
