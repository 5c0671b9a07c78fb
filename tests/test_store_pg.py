"""The store in a PostgreSQL database (store_pg.py): the same refusals as the SQLite file's, each one
line naming the database, and nothing written to a database that is refused. The record
semantics both backends share are in test_store.py, run on each."""

import builtins
import threading

import pytest

from mgrpo_ref.store import SCHEMA_VERSION, StoreError, open_store
from mgrpo_ref.store_pg import PostgresStore, masked

pytestmark = pytest.mark.cluster


def tables(url):
    import psycopg
    with psycopg.connect(url) as conn:
        names = [n for (n,) in conn.execute("SELECT table_name FROM information_schema.tables "
                                            "WHERE table_schema = current_schema() ORDER BY table_name")]
        return {n: conn.execute(f"SELECT * FROM {n} ORDER BY 1").fetchall() for n in names}


def refused(url, match, **kwargs):
    with pytest.raises(StoreError, match=match) as info:
        open_store(url, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_an_address_opens_a_postgres_store_and_a_path_an_sqlite_one(postgres, tmp_path):
    url = postgres.database()
    store = open_store(url, create=True)
    assert isinstance(store, PostgresStore) and store.meta()["schema_version"] == str(SCHEMA_VERSION)
    assert set(tables(url)) == {"meta", "rollouts", "learner_stats", "steps"}


def test_a_database_without_a_store_is_refused_unless_asked_to_create_one(postgres):
    url = postgres.database()
    assert "holds no store (create=True makes one)" in refused(url, "no store")
    assert tables(url) == {}


def test_a_foreign_database_is_refused_and_left_as_it_was(postgres):
    import psycopg
    url = postgres.database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    before = tables(url)
    refused(url, "not an mgrpo_ref store", create=True)
    refused(url, "not an mgrpo_ref store")
    assert tables(url) == before


def test_a_store_of_another_schema_version_is_refused_untouched(postgres):
    import psycopg
    url = postgres.database()
    open_store(url, create=True).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    before = tables(url)
    refused(url, "schema version 2, this code reads schema version 3")
    assert tables(url) == before


def test_a_readonly_store_refuses_every_write(postgres):
    url = postgres.database()
    open_store(url, create=True).close()
    reader = open_store(url, readonly=True)
    with pytest.raises(StoreError, match="cannot write to .*read-only"):
        reader.finish_step(1)
    assert reader.is_empty()


def test_an_unreachable_server_is_one_line_with_the_password_masked(tmp_path):
    pytest.importorskip("psycopg")
    message = refused(f"postgresql://ada:secret@/run?host={tmp_path}", "cannot open", timeout=2)
    assert "secret" not in message and "ada:***@" in message
    assert masked("postgresql://u@h/db") == "postgresql://u@h/db"


def test_without_psycopg_the_store_says_which_extra_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_psycopg(name, *args, **kwargs):
        if name == "psycopg":
            raise ImportError("No module named 'psycopg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    refused("postgresql://h/db", r"needs the psycopg package \(pip install -e '.\[cluster\]'\)")


def test_two_processes_creating_one_store_at_once_make_one(postgres):
    url = postgres.database()
    stores, errors = [], []

    def create():
        try:
            stores.append(open_store(url, create=True))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 4
    assert tables(url)["meta"] == sorted([("application", "mgrpo_ref"), ("schema_version", str(SCHEMA_VERSION))])
