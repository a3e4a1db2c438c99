"""PostgreSQL schema: the events (laid out as :mod:`pubsub.layout` says), the message
ledger and the shared counters.

``ensure`` is safe to run from every process at once: an advisory lock serialises the
``CREATE ... IF NOT EXISTS`` statements, which otherwise race on the catalog.

``python -m pubsub.dbschema`` creates or upgrades the schema and exits: a deployment whose
services connect as roles that may not create tables (compose's ``pubsub_app`` and
``pubsub_reader``) runs it first, as the schema's owner; the services then find the schema
current and only check it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import psycopg
from psycopg import sql

from pubsub import database, layout, search, service
from pubsub.backoff import Backoff
from pubsub.errors import Unusable
from pubsub.settings import Settings

log = logging.getLogger("pubsub.dbschema")

_LOCK_KEY = 0x70756273  # any constant shared by every process of the project

# 2: counters.expired, events_received_at (retention) and the topics table (/stats).
# 3: payload as json (kept as sent), events.txid and its index (the live stream's order).
# 4: ledger.fingerprint (an Idempotency-Key names one body).
# 5: volume and volume_total, events per minute (GET /events/histogram).
# 6: events in blocks, in time partitions, with a key table (see pubsub.layout); ``events`` is
#    a view.
# 7: blocks.last_txid, the last of the transactions a merged block's events were stored by.
SCHEMA_VERSION = 8

_DDL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Every topic that has stored events: consumers add new ones in the transaction that stores
-- them, the retention sweep removes those left without events. /stats reads this instead of
-- probing the events index once per topic.
CREATE TABLE IF NOT EXISTS topics (
    topic text PRIMARY KEY
);

-- One row per stored piece of a message (see pubsub.message): a redelivered message, or a client's
-- retry under the same Idempotency-Key, is recognised and not counted again.
CREATE TABLE IF NOT EXISTS ledger (
    key         text        PRIMARY KEY,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    -- Of a claimed Idempotency-Key (q:<key>): the fingerprint of the body it first came with.
    fingerprint text
);
CREATE INDEX IF NOT EXISTS ledger_seen_at ON ledger (seen_at);

-- Stored events per minute of their timestamp, by topic (volume) and in all (volume_total):
-- consumers add what each batch inserted, in the storing transaction, so the counts are exact
-- through redeliveries; the retention sweep subtracts what it removes. One row per writer
-- (a consumer's counters shard, the sweep's -1), so that consumers storing the same topic in
-- the same minute never wait for each other's row; a count is the sum over the writers.
CREATE TABLE IF NOT EXISTS volume (
    topic  text        NOT NULL,
    minute timestamptz NOT NULL,
    shard  integer     NOT NULL,
    n      bigint      NOT NULL,
    PRIMARY KEY (topic, minute, shard)
);
CREATE TABLE IF NOT EXISTS volume_total (
    minute timestamptz NOT NULL,
    shard  integer     NOT NULL,
    n      bigint      NOT NULL,
    PRIMARY KEY (minute, shard)
);

-- Sharded so that concurrent consumers rarely wait on each other's counter row.
CREATE TABLE IF NOT EXISTS counters (
    shard             integer PRIMARY KEY,
    received          bigint  NOT NULL DEFAULT 0,
    unique_processed  bigint  NOT NULL DEFAULT 0,
    duplicate_dropped bigint  NOT NULL DEFAULT 0,
    expired           bigint  NOT NULL DEFAULT 0
);
"""

# The minute of a timestamp, aligned to UTC whatever the session's time zone.
MINUTE = "date_bin('1 minute', {column}, '2000-01-01 00:00:00+00')"

# Every topic that has events, by a loose index scan over the primary key: one probe per topic.
# What /stats ran before the topics table; now it fills that table on upgrade.
TOPICS_BY_INDEX_SCAN = """
WITH RECURSIVE t(topic) AS (
    (SELECT topic FROM events ORDER BY topic LIMIT 1)
    UNION ALL
    SELECT (SELECT e.topic FROM events e WHERE e.topic > t.topic ORDER BY e.topic LIMIT 1)
    FROM t WHERE t.topic IS NOT NULL
)
SELECT topic FROM t WHERE topic IS NOT NULL
"""

# The volume of every stored event, counted from the table (the upgrade to version 5).
FILL_VOLUME = f"""
INSERT INTO volume (topic, minute, shard, n)
SELECT topic, {MINUTE.format(column="ts")}, 0, count(*) FROM events GROUP BY 1, 2;
INSERT INTO volume_total (minute, shard, n)
SELECT minute, 0, sum(n) FROM volume GROUP BY 1;
"""

# From versions 1 to 3, before the statements above: what they cannot add by themselves.
# Events stored before version 3 keep a NULL txid (the stream starts after them); a jsonb
# payload becomes json, a rewrite of the table.
_UPGRADE_TABLES = """
ALTER TABLE IF EXISTS ledger ADD COLUMN IF NOT EXISTS fingerprint text;
ALTER TABLE IF EXISTS counters ADD COLUMN IF NOT EXISTS expired bigint NOT NULL DEFAULT 0;
"""
# The same, of an events table (versions 1 to 5).
_UPGRADE_EVENTS = """
ALTER TABLE events ADD COLUMN IF NOT EXISTS txid xid8;
DO $$
BEGIN
    IF (SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema()
        AND table_name = 'events' AND column_name = 'payload') = 'jsonb' THEN
        ALTER TABLE events ALTER COLUMN payload TYPE json USING payload::json;
    END IF;
END $$;
"""
# After them, of an events table: fill in what is new. The volume of the events stored before
# version 5 is counted once, from the table (a scan of it: see docs/operations.md for its
# duration). Then the table makes way for the blocks (pubsub.layout.move).
_UPGRADE = f"""
INSERT INTO topics (topic) {TOPICS_BY_INDEX_SCAN} ON CONFLICT DO NOTHING;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM volume_total) THEN
        {FILL_VOLUME}
    END IF;
END $$;
ALTER TABLE events RENAME TO events_5;
"""


async def prepare(settings: Settings, *, stop: asyncio.Event) -> None:
    """:func:`ensure`, waiting for PostgreSQL as long as it takes to answer (service start-up)."""
    await service.retry(
        lambda: ensure(settings), what="PostgreSQL", stop=stop, backoff=Backoff.of(settings)
    )


async def ensure(settings: Settings) -> None:
    """Create the schema and tables unless this version of them exists already.

    The check comes first because ``CREATE INDEX IF NOT EXISTS`` locks the table even when the
    index exists: a process starting next to busy consumers must not take that lock.
    """
    async with await database.connect(settings) as conn, conn.transaction():
        current = await _current(conn, settings)
        if current and await _searchable(conn, settings):
            return
        if not await _may_create(conn, settings):
            if current:
                log.warning(
                    "PUBSUB_SEARCH=%s, but the search index of schema %s does not match it and "
                    "this role may not change it: run `python -m pubsub.dbschema` as the "
                    "schema's owner (searches work either way, only their speed differs)",
                    settings.search, settings.db_schema,
                )  # fmt: skip
                return
            raise NotCurrent(
                f"schema {settings.db_schema} is not at version {SCHEMA_VERSION}, and this "
                "role may not create or upgrade it: run `python -m pubsub.dbschema` as the "
                "schema's owner"
            )
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        if await _current(conn, settings):
            # Created by another process while this one waited for the lock, or current
            # but for the search index.
            await _reconcile_search(conn, settings)
            return
        cur = await conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (settings.db_schema,)
        )
        if await cur.fetchone() is None:
            # Only then: CREATE SCHEMA IF NOT EXISTS needs the right to create schemas even
            # when the schema exists, which its owner (compose's pubsub_owner) does not have.
            await conn.execute(
                sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(settings.db_schema))
            )
        await conn.execute(
            sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(settings.db_schema))
        )
        old = await _events_table(conn)
        if old:
            await conn.execute(_UPGRADE_EVENTS)
        await conn.execute(_UPGRADE_TABLES)
        await conn.execute(_DDL)
        if old:
            await conn.execute(_UPGRADE)
        cur = await conn.execute("SELECT to_regclass('blocks') IS NOT NULL")
        if (await cur.fetchone() or (False,))[0]:
            await conn.execute(layout.UPGRADE_6)
            await conn.execute(layout.UPGRADE_7)
        await conn.execute(layout.ddl(sql.Identifier(settings.db_schema).as_string(conn)))
        if old:
            started = time.monotonic()
            await conn.execute(layout.move("events_5"))
            await conn.execute("DROP TABLE events_5")
            log.info("moved the events into blocks in %.1fs", time.monotonic() - started)
        await conn.execute(layout.GRANT)
        await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
        await _reconcile_search(conn, settings)


async def _events_table(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether ``events`` is a table (schema 5 and before), not the view over blocks."""
    cur = await conn.execute("SELECT relkind = 'r' FROM pg_class WHERE oid = to_regclass('events')")
    row = await cur.fetchone()
    return bool(row and row[0])


async def _searchable(conn: psycopg.AsyncConnection[Any], settings: Settings) -> bool:
    """Whether the search index exists exactly when ``PUBSUB_SEARCH`` asks for one."""
    return await search.indexed(conn, settings.db_schema) == (settings.search == "trigram")


async def _reconcile_search(conn: psycopg.AsyncConnection[Any], settings: Settings) -> None:
    if await _searchable(conn, settings):
        return
    started = time.monotonic()
    if settings.search == "trigram":
        await search.build(conn, settings.db_schema)
        log.info("built the search index in %.1fs", time.monotonic() - started)
    else:
        await search.drop(conn, settings.db_schema)
        log.info("dropped the search index (PUBSUB_SEARCH=%s)", settings.search)


class NotCurrent(RuntimeError):
    """The schema is older than this code, and this role may not upgrade it."""


async def _may_create(conn: psycopg.AsyncConnection[Any], settings: Settings) -> bool:
    """Whether this role can create the schema's tables: it owns the schema, or may create
    schemas where there is none yet."""
    cur = await conn.execute(
        """
        SELECT CASE WHEN n.oid IS NULL THEN has_database_privilege(current_database(), 'CREATE')
                    ELSE pg_has_role(n.nspowner, 'USAGE') END
        FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = %s
        """,
        (settings.db_schema,),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def _current(conn: psycopg.AsyncConnection[Any], settings: Settings) -> bool:
    table = f"{settings.db_schema}.schema_version"
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    row = await cur.fetchone()
    if not row or not row[0]:
        return False
    cur = await conn.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(
            sql.Identifier(settings.db_schema, "schema_version")
        )
    )
    row = await cur.fetchone()
    return row is not None and int(row[0]) >= SCHEMA_VERSION


async def drop(settings: Settings) -> None:
    """Remove the schema and everything in it (benchmarks and tests clean up with this)."""
    conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
    async with conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.db_schema))
        )


def main() -> None:
    """Create or upgrade the schema named by the environment's settings, then exit; exit 2 if
    this role may not."""
    settings = service.setup("dbschema")

    async def attempt() -> None:
        try:
            await ensure(settings)
        except NotCurrent as exc:
            raise Unusable(str(exc)) from None  # waiting cannot help: stop

    try:
        asyncio.run(
            service.retry(
                attempt, what="PostgreSQL", stop=asyncio.Event(), backoff=Backoff.of(settings)
            )
        )
    except Unusable as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None
    log.info("schema %s is at version %d", settings.db_schema, SCHEMA_VERSION)


if __name__ == "__main__":
    main()
