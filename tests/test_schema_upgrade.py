"""A database made by the version before retention (schema 1) is upgraded in place on start,
to the current version (json payloads, the stream's txid)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pubsub import dbschema
from pubsub.database import connect_kwargs
from pubsub.settings import Settings
from tests.fix_services import private_settings
from tests.support import assert_volume_counts_the_events, run_async


@contextlib.contextmanager
def schema_as(
    amqp_url: str, database_url: str, *, version: int, undo: list[str], rows: list[str]
) -> Iterator[Settings]:
    """A current schema taken back to ``version`` by the ``undo`` statements, then given
    ``rows`` (statements that insert them)."""
    with private_settings(amqp_url, database_url, prefix=f"upg{version}") as s:
        with psycopg.connect(s.database_url, autocommit=True, **connect_kwargs(s)) as c:
            for statement in undo:
                c.execute(statement)
            c.execute("DELETE FROM schema_version")
            c.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            for statement in rows:
                c.execute(statement)
        yield s


@pytest.fixture
def old(amqp_url: str, database_url: str) -> Iterator[Settings]:
    """A schema as version 1 left it, with events in two topics."""
    with schema_as(
        amqp_url,
        database_url,
        version=1,
        undo=[
            "DROP TABLE topics",
            "DROP TABLE volume, volume_total",
            "DROP INDEX events_received_at",
            "ALTER TABLE counters DROP COLUMN expired",
            "ALTER TABLE events DROP COLUMN txid",
            "ALTER TABLE ledger DROP COLUMN fingerprint",
            "ALTER TABLE events ALTER COLUMN payload TYPE jsonb USING payload::jsonb",
        ],
        rows=[
            "INSERT INTO events (topic, event_id, ts, source, payload, received_at)"
            " SELECT 't' || (g % 2), g::text, '2026-01-01T10:00:00Z'::timestamptz"
            " + (g % 3) * interval '1 minute', 's', '{\"n\": 1.5}', now()"
            " FROM generate_series(1, 10) g",
            "INSERT INTO counters (shard, received, unique_processed) VALUES (1, 10, 10)",
        ],
    ) as s:
        yield s


def test_a_version_1_schema_is_upgraded_with_its_topics_and_counters(old: Settings) -> None:
    run_async(dbschema.ensure(old))
    with psycopg.connect(old.database_url, **connect_kwargs(old)) as c:
        assert c.execute("SELECT topic FROM topics ORDER BY topic").fetchall() == [("t0",), ("t1",)]
        assert c.execute("SELECT unique_processed, expired FROM counters").fetchall() == [(10, 0)]
        assert c.execute("SELECT max(version) FROM schema_version").fetchone() == (
            dbschema.SCHEMA_VERSION,
        )
        assert c.execute("SELECT fingerprint FROM ledger LIMIT 1").fetchall() == []
        for index in ("events_received_at", "events_txid"):
            assert c.execute("SELECT to_regclass(%s) IS NOT NULL", (index,)).fetchone() == (True,)
        kind = "SELECT pg_typeof(payload)::text, payload::text, txid IS NULL FROM events LIMIT 1"
        assert c.execute(kind).fetchone() == ("json", '{"n": 1.5}', True)
        assert_volume_counts_the_events(c)
        # Events stored from now on carry their transaction for the stream.
        c.execute(
            "INSERT INTO events (topic, event_id, ts, source, payload, received_at)"
            " VALUES ('t0', 'new', now(), 's', '{\"x\": -0.0}', now())"
        )
        new = "SELECT txid IS NOT NULL, payload::text FROM events WHERE event_id = 'new'"
        assert c.execute(new).fetchone() == (True, '{"x": -0.0}')


@pytest.fixture
def version_4(amqp_url: str, database_url: str) -> Iterator[Settings]:
    """A schema as version 4 left it (before the volume rollup), with 5,000 events."""
    with schema_as(
        amqp_url,
        database_url,
        version=4,
        undo=["DROP TABLE volume, volume_total"],
        rows=[
            "INSERT INTO events (topic, event_id, ts, source, payload, received_at)"
            " SELECT 't' || (g % 7), g::text, '2026-01-01T10:00:00Z'::timestamptz"
            " + (g % 300) * interval '7 seconds', 's', '{}', now()"
            " FROM generate_series(1, 5000) g"
        ],
    ) as s:
        yield s


def test_a_version_4_schema_gets_the_volume_of_its_events(version_4: Settings) -> None:
    run_async(dbschema.ensure(version_4))
    with psycopg.connect(version_4.database_url, **connect_kwargs(version_4)) as c:
        assert c.execute("SELECT max(version) FROM schema_version").fetchone() == (
            dbschema.SCHEMA_VERSION,
        )
        assert c.execute("SELECT sum(n)::bigint FROM volume_total").fetchone() == (5000,)
        assert_volume_counts_the_events(c)


def test_the_search_index_follows_the_setting(version_4: Settings) -> None:
    def indexed() -> bool:
        with psycopg.connect(version_4.database_url, **connect_kwargs(version_4)) as c:
            row = c.execute("SELECT to_regclass('events_search') IS NOT NULL").fetchone()
            return bool(row and row[0])

    run_async(dbschema.ensure(version_4))
    assert not indexed()  # scan, the default, keeps none
    run_async(dbschema.ensure(version_4.replace(search="trigram")))
    assert indexed()
    with psycopg.connect(version_4.database_url, **connect_kwargs(version_4)) as c:
        c.execute("SET enable_seqscan = off")
        plan = c.execute(
            "EXPLAIN SELECT * FROM events WHERE (topic || ' ' || source || ' ' || payload::text)"
            " ILIKE '%needle%'"
        ).fetchall()
        assert "events_search" in str(plan)
    run_async(dbschema.ensure(version_4))
    assert not indexed()


@pytest.fixture
def no_ddl_role(database_url: str) -> Iterator[tuple[str, str]]:
    """A login role that may read rows but create nothing, as compose's ``pubsub_app`` and
    ``pubsub_reader``: its name and URL."""
    name = f"pubsub_test_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'app'").format(sql.Identifier(name)))
    try:
        yield name, make_conninfo(database_url, user=name, password="app")
    finally:
        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_role_that_may_not_create_tables_checks_a_current_schema_and_waits_for_an_old_one(
    old: Settings, no_ddl_role: tuple[str, str]
) -> None:
    name, url = no_ddl_role
    app = old.replace(database_url=url)
    schema, role = sql.Identifier(old.db_schema), sql.Identifier(name)
    with psycopg.connect(old.database_url, autocommit=True) as c:
        c.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role))
        c.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, role))
    with pytest.raises(dbschema.NotCurrent, match=r"run `python -m pubsub\.dbschema`"):
        run_async(dbschema.ensure(app))  # version 1: it says who must upgrade it
    done = subprocess.run(
        [sys.executable, "-m", "pubsub.dbschema"],
        env={**os.environ, **app.to_env()},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2 and "as the schema's owner" in done.stderr, done.stderr
    run_async(dbschema.ensure(old))  # the owner upgrades it
    run_async(dbschema.ensure(app))  # now current: checked, nothing to create
