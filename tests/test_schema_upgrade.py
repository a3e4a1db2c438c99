"""Databases made by earlier versions are upgraded in place on start: schema 1 (before
retention), 4 (before the volume rollup) and 5 (events as rows, before blocks)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench.upgrade import SCHEMA_5
from consumer.merge import Merger
from consumer.store import Store, copy_rows
from pubsub import dbschema, search
from pubsub.database import connect_kwargs
from pubsub.settings import Settings
from readapi import histogram, queries
from tests.fix_services import private_settings
from tests.support import (
    assert_volume_counts_the_events,
    db_connection,
    run_async,
    stream_to_head,
)


@contextlib.contextmanager
def schema_as(
    amqp_url: str, database_url: str, *, version: int, undo: list[str], rows: list[str]
) -> Iterator[Settings]:
    """A current schema taken back to version 5, then to ``version`` by the ``undo``
    statements, then given ``rows`` (statements that insert them)."""
    with private_settings(amqp_url, database_url, prefix=f"upg{version}") as s:
        with psycopg.connect(s.database_url, autocommit=True, **connect_kwargs(s)) as c:
            for statement in [*SCHEMA_5, *undo]:
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
        for table in ("blocks", "keys", "events_5"):
            exists = table != "events_5"  # the old table is gone once its events moved
            assert c.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone() == (exists,)
        # Events stored before version 3 have no transaction: the stream starts after them.
        kind = "SELECT pg_typeof(payload)::text, payload::text, txid FROM events LIMIT 1"
        assert c.execute(kind).fetchone() == ("json", '{"n": 1.5}', "0")
        assert_volume_counts_the_events(c)
        # Events stored from now on carry their transaction for the stream.
        c.execute(
            "INSERT INTO events (topic, event_id, ts, source, payload, received_at)"
            " VALUES ('t0', 'new', now(), 's', '{\"x\": -0.0}', now())"
        )
        new = "SELECT txid::text::bigint > 0, payload::text FROM events WHERE event_id = 'new'"
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
            f"EXPLAIN SELECT * FROM blocks WHERE {search.BLOCK_TEXT} ILIKE '%needle%'"
        ).fetchall()
        assert "Bitmap Index Scan" in str(plan)  # the partitions have the index too
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


@pytest.fixture
def version_5(amqp_url: str, database_url: str) -> Iterator[Settings]:
    """A schema as version 5 left it: 3,000 events in three topics, received over five days,
    with their topics, volume and counters."""
    with schema_as(
        amqp_url,
        database_url,
        version=5,
        undo=[],
        rows=[
            "INSERT INTO events (topic, event_id, ts, source, payload, received_at)"
            " SELECT 't' || (g % 3), 'e' || g,"
            " '2026-01-01T10:00:00Z'::timestamptz + g * interval '1 minute', 's' || (g % 2),"
            " json_build_object('n', g, 'word', CASE WHEN g = 1234 THEN 'needle' ELSE 'hay' END,"
            " 'big', 1e308, 'zero', -0.0), now() - (g % 5) * interval '1 day'"
            " FROM generate_series(1, 3000) g",
            "INSERT INTO topics SELECT DISTINCT topic FROM events",
            dbschema.FILL_VOLUME,
            "INSERT INTO counters (shard, received, unique_processed) VALUES (1, 3000, 3000)",
        ],
    ) as s:
        yield s


ALL_EVENTS = (
    "SELECT topic, event_id, ts, source, payload::text FROM events ORDER BY ts, topic, event_id"
)


async def pages(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], filters: queries.Filters, *, descending: bool
) -> list[tuple[str, str, datetime, str, str]]:
    """Every event ``/events`` gives, page by page through the cursors."""
    found: list[tuple[str, str, datetime, str, str]] = []
    after: queries.Cursor | None = None
    while True:
        q = queries.EventQuery(filters, None, None, after, 100, 1 << 20, descending)
        events, after = await queries.events_page(conn, q)
        for e in events:
            ts = datetime.fromisoformat(e["timestamp"])
            payload = orjson.dumps(e["payload"]).decode()  # the text as stored
            found.append((e["topic"], e["event_id"], ts, e["source"], payload))
        if after is None:
            return found


def test_a_version_5_schema_moves_its_events_into_blocks_and_every_read_works(
    version_5: Settings,
) -> None:
    s = version_5
    with psycopg.connect(s.database_url, **connect_kwargs(s)) as c:
        before = c.execute(ALL_EVENTS).fetchall()
        # A block per topic, day of receipt and hour of timestamps.
        origin = "'2000-01-01 00:00:00+00'"
        row = c.execute(
            f"SELECT count(DISTINCT (topic, date_bin('1 day', received_at, {origin}),"
            f" date_bin('1 hour', ts, {origin}))) FROM events"
        ).fetchone()
        blocks = row[0] if row else 0
    run_async(dbschema.ensure(s))
    with psycopg.connect(s.database_url, **connect_kwargs(s)) as c:
        assert c.execute("SELECT max(version) FROM schema_version").fetchone() == (
            dbschema.SCHEMA_VERSION,
        )
        # The view shows the same events, byte for byte, and the blocks hold them by topic.
        assert c.execute(ALL_EVENTS).fetchall() == before
        assert c.execute("SELECT count(*), sum(n) FROM blocks").fetchone() == (blocks, 3000)
        assert c.execute("SELECT count(*) FROM keys").fetchone() == (3000,)
        assert c.execute("SELECT count(*) FROM partitions").fetchone() == (5,)
        assert_volume_counts_the_events(c)

    async def reads() -> None:
        async with await psycopg.AsyncConnection.connect(
            s.database_url, **connect_kwargs(s)
        ) as conn:
            expected = [(t, e, ts, src, p) for t, e, ts, src, p in before]
            assert await pages(conn, queries.Filters(), descending=False) == expected
            assert await pages(conn, queries.Filters(), descending=True) == expected[::-1]
            in_t1 = [e for e in expected if e[0] == "t1"]
            assert await pages(conn, queries.Filters(topic="t1"), descending=True) == in_t1[::-1]
            (needle,) = [e for e in expected if e[1] == "e1234"]
            for filters in (
                queries.Filters(words=("needle",)),
                queries.Filters(event_id="e1234"),
                queries.Filters(topic="t1", event_id="e1234"),
            ):
                assert await pages(conn, filters, descending=False) == [needle], filters
            assert await pages(conn, queries.Filters(topic="t0", event_id="e1234"),
                               descending=False) == []  # fmt: skip
            counts = await queries.counts(conn, max_topics=10)
            assert (counts.unique_processed, counts.topics) == (3000, ["t0", "t1", "t2"])
            by_source = await histogram.histogram(
                conn, queries.Filters(source="s1"), since=None, until=None, width=3600
            )
            assert sum(by_source.counts) == 1500
            # The stream gives every event once, from the first one received.
            at = await queries.stream_start(conn, datetime.now(UTC) - timedelta(days=6))
            streamed = [
                (c.topic, c.event_id) for c in await stream_to_head(conn, at, scan=700, limit=500)
            ]
            assert sorted(streamed) == sorted((e[0], e[1]) for e in expected)

        # Keys decide as the table's primary key did: a known event is a duplicate.
        store = Store(s, shard=1)
        try:
            known = orjson.loads(orjson.dumps([
                {"topic": "t1", "event_id": "e1", "timestamp": "2026-01-01T10:01:00Z",
                 "source": "s1", "payload": {}},
                {"topic": "t1", "event_id": "new", "timestamp": "2026-01-01T10:01:00Z",
                 "source": "s1", "payload": {}},
            ]))  # fmt: skip
            stored = await store.store([("u1", copy_rows(known, datetime.now(UTC).isoformat()))])
            assert (stored.received, stored.inserted) == (2, 1)
        finally:
            await store.close()

    run_async(reads())


def test_a_version_6_schema_gets_each_blocks_last_transaction(
    amqp_url: str, database_url: str
) -> None:
    """Schema 6's blocks held the events of one transaction; schema 7 gives each block its
    last one too (what merges need), and the indexes that find merged and small blocks."""
    with private_settings(amqp_url, database_url, prefix="upg6", merge_after=0.001) as s:
        with psycopg.connect(s.database_url, autocommit=True, **connect_kwargs(s)) as c:
            c.execute("ALTER TABLE blocks DROP COLUMN last_txid")  # and blocks_merged with it
            c.execute("DROP INDEX blocks_small")
            c.execute("DELETE FROM schema_version")
            c.execute("INSERT INTO schema_version (version) VALUES (6)")

        async def store() -> None:
            store = Store(s, shard=1)
            try:
                for n in range(40):
                    batch = orjson.loads(orjson.dumps([
                        {"topic": f"t{n % 2}", "event_id": f"e{n}-{i}", "source": "s",
                         "timestamp": "2026-01-01T10:01:00Z", "payload": {"n": n}}
                        for i in range(3)
                    ]))  # fmt: skip
                    await store.store([(f"u{n}", copy_rows(batch, datetime.now(UTC).isoformat()))])
            finally:
                await store.close()

        run_async(store())
        with psycopg.connect(s.database_url, **connect_kwargs(s)) as c:
            # The stream's order, as schema 6 kept it.
            streamed = [
                (int(txid), topic, event_id)
                for txid, topic, event_id in c.execute(
                    "SELECT txid::text, topic, event_id FROM events ORDER BY txid, topic, event_id"
                )
            ]
        assert len(streamed) == 120
        run_async(dbschema.ensure(s))
        with psycopg.connect(s.database_url, **connect_kwargs(s)) as c:
            assert c.execute("SELECT max(version) FROM schema_version").fetchone() == (
                dbschema.SCHEMA_VERSION,
            )
            assert c.execute(
                "SELECT count(*), count(*) FILTER (WHERE last_txid = txid) FROM blocks"
            ).fetchone() == (40, 40)
            assert {r[0] for r in c.execute(
                "SELECT indexname FROM pg_indexes"
                " WHERE schemaname = current_schema() AND tablename = 'blocks'"
            )} >= {"blocks_merged", "blocks_small"}  # fmt: skip

        async def merged_stream() -> list[Any]:
            merger = Merger(s)
            try:
                assert (await merger.merge()) is not None
            finally:
                await merger.close()
            async with await db_connection(s) as conn:
                cur = await conn.execute("SELECT count(*) FROM blocks")
                assert await cur.fetchone() == (2,)
                return await stream_to_head(conn, queries.StreamCursor.at(0), scan=9, limit=7)

        assert [(c.txid, c.topic, c.event_id) for c in run_async(merged_stream())] == streamed


def test_a_version_7_schema_gets_the_indexes_by_both_ends_of_a_block(
    amqp_url: str, database_url: str
) -> None:
    """Schema 7 indexed blocks by their last timestamp alone; schema 8 by both ends, in place
    of those indexes."""
    with private_settings(amqp_url, database_url, prefix="upg7") as s:
        with psycopg.connect(s.database_url, autocommit=True, **connect_kwargs(s)) as c:
            c.execute("DROP INDEX blocks_ends, blocks_topic_ends")
            c.execute("CREATE INDEX blocks_max_ts ON blocks (tenant, max_ts)")
            c.execute("CREATE INDEX blocks_topic_max_ts ON blocks (tenant, topic, max_ts)")
            c.execute("DELETE FROM schema_version")
            c.execute("INSERT INTO schema_version (version) VALUES (7)")
        run_async(dbschema.ensure(s))
        with psycopg.connect(s.database_url, **connect_kwargs(s)) as c:
            indexes = {
                name: definition
                for name, definition in c.execute(
                    "SELECT indexname, indexdef FROM pg_indexes"
                    " WHERE schemaname = current_schema() AND tablename = 'blocks'"
                )
            }
        assert "blocks_max_ts" not in indexes and "blocks_topic_max_ts" not in indexes
        assert indexes["blocks_ends"].endswith("(tenant, max_ts, min_ts)")
        assert indexes["blocks_topic_ends"].endswith("(tenant, topic, max_ts, min_ts)")


def test_a_version_8_schema_leads_its_counts_with_the_default_tenant(
    amqp_url: str, database_url: str
) -> None:
    """Schema 9 leads topics, counters and the volume tables with a tenant; what a version 8
    schema counted becomes default's, in place, and reads as before."""
    shapes = {
        "topics": "topic",
        "counters": "shard",
        "volume": "topic, minute, shard",
        "volume_total": "minute, shard",
    }
    with private_settings(amqp_url, database_url, prefix="upg8") as s:
        with psycopg.connect(s.database_url, autocommit=True, **connect_kwargs(s)) as c:
            c.execute("DROP TABLE tenants")
            for table, key in shapes.items():
                c.execute(
                    f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey, DROP COLUMN tenant,"
                    f" ADD PRIMARY KEY ({key})"
                )
            c.execute("INSERT INTO topics (topic) VALUES ('kept')")
            c.execute("INSERT INTO counters (shard, received, unique_processed) VALUES (1, 5, 4)")
            c.execute("INSERT INTO volume VALUES ('kept', '2025-10-21T10:00Z', 1, 4)")
            c.execute("INSERT INTO volume_total VALUES ('2025-10-21T10:00Z', 1, 4)")
            c.execute("DELETE FROM schema_version")
            c.execute("INSERT INTO schema_version (version) VALUES (8)")
        run_async(dbschema.ensure(s))
        with psycopg.connect(s.database_url, **connect_kwargs(s)) as c:
            for table, key in shapes.items():
                row = c.execute(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                    " WHERE conrelid = %s::regclass AND contype = 'p'",
                    (table,),
                ).fetchone()
                assert row == (f"PRIMARY KEY (tenant, {key})",), table
                assert c.execute(f"SELECT DISTINCT tenant FROM {table}").fetchall() == [(0,)]
            assert c.execute("SELECT id, name FROM tenants").fetchall() == [(0, "default")]

        async def counted() -> queries.Counts:
            async with await psycopg.AsyncConnection.connect(
                s.database_url, **connect_kwargs(s)
            ) as conn:
                return await queries.counts(conn, max_topics=10)

        counts = run_async(counted())
        assert (counts.received, counts.unique_processed, counts.topics) == (5, 4, ["kept"])
