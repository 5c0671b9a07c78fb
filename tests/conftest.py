"""Shared fixtures (a tiny base, a PostgreSQL server), and the cluster group: tests marked ``cluster`` start a PostgreSQL server and a local Ray cluster on
this machine, and need the optional extra ``.[cluster]``. They run with ``--cluster``
(``make test-cluster``), and are skipped, saying so, in ``make test``."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--cluster", action="store_true",
                     help="run the tests marked cluster: a local Ray cluster and a PostgreSQL server (needs .[cluster])")


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs a local Ray cluster or a PostgreSQL server (make test-cluster)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--cluster"):
        return
    skip = pytest.mark.skip(reason="a cluster test: make test-cluster runs it")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


class Postgres:
    """A PostgreSQL server of the test session's own (pgserver), on a Unix socket in a temporary
    directory: it listens on no network address. ``database()`` makes a fresh database and
    returns its address; ``stop()`` and ``start()`` take the server down and bring it back on the
    same data and socket."""

    def __init__(self):
        import pgserver
        self._pgserver = pgserver
        self.home = Path(tempfile.mkdtemp(prefix="mgrpo-pg-"))
        self.names = (f"run{i}" for i in itertools.count())
        self.start()

    def start(self):
        self.server = self._pgserver.get_server(self.home, cleanup_mode="stop")

    def stop(self):
        self.server.cleanup()

    def database(self) -> str:
        import psycopg
        name = next(self.names)
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.server.get_uri(name)

    def close(self):
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny base model, pretrained once for the session's tests that ask for it."""
    from mgrpo_ref.pretrain import SIZES, pretrain

    out = tmp_path_factory.mktemp("tiny-base")
    pretrain(SIZES["tiny"], out, progress=False)
    return out


@pytest.fixture(scope="session")
def postgres():
    pytest.importorskip("pgserver", reason="the cluster tests need the extra .[cluster]")
    pytest.importorskip("psycopg", reason="the cluster tests need the extra .[cluster]")
    server = Postgres()
    yield server
    server.close()
