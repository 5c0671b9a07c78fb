"""The shared store in a PostgreSQL database, for learners on several hosts (docs/cluster.md).

One SQLite file serves learners that share a disk. Learners on two hosts need a store both
reach over the network; a database server is the one that already keeps what SQLite's file
keeps [ours]:

* every write is a transaction, so a record is atomic and a reader sees all of it or none;
* a committed row survives the crash of any learner, and of the server itself (its
  write-ahead log), which an in-memory store (a dictionary, or one held by an actor) would lose;
* any number of readers and writers, on any host, at once.

``PostgresStore`` answers the methods of ``store.Records`` with the same tables (REAL read
as 8-byte DOUBLE PRECISION, so a reward reads back as it was written) and the same refusals:
a database holding tables that are not a store is "foreign", a store of another schema
version is refused, and neither is ever written to. The database is the run's: one database
per run, as one file per run directory. Its identity is the ``meta`` row
``application = mgrpo_ref`` (SQLite keeps it in the file's header instead).

What crosses the network is SQL text and the rows' scalars: a step's rollout records, each
learner's statistics as JSON, and the step numbers. Every driver error leaves as a
``store.StoreError`` with one line naming the database (its password, if any, masked).
``psycopg`` (version 3) is imported only here, so a local run never needs it.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit, urlunsplit

from .store import _SCHEMA, SCHEMA_VERSION, TABLES, Records, StoreError

APPLICATION = "mgrpo_ref"
"""The ``meta`` row ``application`` of every store of ours."""
SCHEMA = _SCHEMA.replace(" REAL ", " DOUBLE PRECISION ")
_LOCK = 0x4D475250  # the advisory lock two processes creating one store at once take in turn


def masked(url: str) -> str:
    """``url`` with its password, if any, as ***: how messages name a database."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore(Records):
    """A connection to a run's store in the PostgreSQL database at ``url``; one per process.

    ``create=True`` makes the store's tables in a database that holds no table; ``readonly``
    opens every transaction read-only. ``timeout`` bounds the wait to connect, in seconds.
    ``at_rest`` is taken for the same calls as ``store.Store`` and changes nothing here.
    """

    def __init__(self, url: str, create: bool = False, readonly: bool = False, timeout: float = 30.0,
                 at_rest: bool = False):
        if create and readonly:
            raise ValueError("PostgresStore: create=True and readonly=True cannot be combined")
        self.url, self.name = url, masked(url)
        try:
            import psycopg
        except ImportError:
            raise StoreError(f"cannot open {self.name}: a PostgreSQL store needs the psycopg package "
                             "(pip install -e '.[cluster]')") from None
        self.driver_error = psycopg.Error
        with self._errors("open"):
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout)))
        try:
            if readonly:
                with self._errors("open"):
                    self.conn.execute("SET default_transaction_read_only = on")
            if create:
                self._create()
        except BaseException:
            self.conn.close()
            raise
        self._check_opened(readonly)

    def _tables(self) -> set[str]:
        """The tables of the connection's current schema (``public`` unless the address says otherwise)."""
        return {name for (name,) in self.conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}

    def _create(self) -> None:
        """The store's tables and identity, in one transaction, in a database with no table yet."""
        with self._errors("create a store in"), self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            if self._tables():
                return  # a store already (or something else, refused by _check_identity)
            for statement in filter(str.strip, SCHEMA.split(";")):
                self.conn.execute(statement)
            self.conn.execute("INSERT INTO meta VALUES ('application', %s), ('schema_version', %s)",
                              (APPLICATION, str(SCHEMA_VERSION)))

    def _check_identity(self) -> None:
        """Refuse a database that does not hold a store of ``SCHEMA_VERSION``; only reads it."""
        with self._errors("read"):
            tables = self._tables()
            meta = dict(self.conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        if not tables:
            raise StoreError(f"cannot open {self.name}: the database holds no store (create=True makes one)")
        if meta.get("application") != APPLICATION or not set(TABLES) <= tables:
            raise StoreError(f"{self.name} is a PostgreSQL database but not an mgrpo_ref store "
                             f"({len(tables)} table{'s' * (len(tables) != 1)}); it was left untouched")
        version = meta.get("schema_version")
        if version != str(SCHEMA_VERSION):
            raise StoreError(f"{self.name} is a store of schema version {version}, this code reads "
                             f"schema version {SCHEMA_VERSION} (start a new run with another database, or use "
                             "the mgrpo_ref that wrote it); it was left untouched")

    def _check_writable(self) -> None:
        """Rewrite one row as it is, and roll the change back: refused without write permission."""
        with self._errors("write to"), self.conn.transaction(force_rollback=True):
            self.conn.execute("UPDATE meta SET value = value WHERE key = 'application'")

    @contextlib.contextmanager
    def transaction(self):
        """``with store.transaction() as tx:`` - BEGIN ... COMMIT, or ROLLBACK on error; ``tx``
        takes the SQL of ``Records`` (``?`` for each value)."""
        with self._errors("write to"), self.conn.transaction():
            yield _QuestionMarks(self.conn)

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self.conn.execute(sql.replace("?", "%s"), args).fetchall()

    def close(self) -> None:
        with self._errors("close"):
            self.conn.close()


class _QuestionMarks:
    """A connection that reads ``?`` as psycopg's ``%s`` (no statement of ours holds either character
    otherwise)."""

    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql: str, args: tuple = ()) -> None:
        self.conn.execute(sql.replace("?", "%s"), args)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)
