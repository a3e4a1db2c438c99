"""``python -m bench.upgrade``: how long the upgrade from schema 5 takes per million events.

A private schema is made as version 5 made it (:data:`SCHEMA_5`: the events table with its
indexes), filled with ``--events`` events in bulk (100 topics, UUID event ids, log-like
payloads, received over three days), and then upgraded by ``pubsub.dbschema.ensure``: the
events move into blocks and keys (see ``pubsub/layout.py``). It prints the upgrade's duration,
the seconds per million events, and the bytes per event before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

import psycopg

from bench import record
from pubsub import database, dbschema
from pubsub.settings import Settings

# Schema 5 as it was made, less what version 6 keeps as it was (topics, ledger, volume,
# counters): the events table with its indexes, in place of the blocks and the view. Run on a
# current schema, these statements take it back to version 5.
SCHEMA_5 = [
    "DROP VIEW events",
    "DROP FUNCTION insert_event(), add_partition(timestamptz, interval),"
    " detach_partition(text), drop_partition(text)",
    "DROP TABLE blocks, keys, partitions",
    "DROP FUNCTION event_key(text)",
    "DROP SEQUENCE block_ids",
    "ALTER TABLE topics DROP COLUMN id",
    """CREATE TABLE events (
        topic       text        NOT NULL,
        event_id    text        NOT NULL,
        ts          timestamptz NOT NULL,
        source      text        NOT NULL,
        payload     json        NOT NULL,
        received_at timestamptz NOT NULL,
        stored_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
        txid        xid8                 DEFAULT pg_current_xact_id(),
        PRIMARY KEY (topic, event_id)
    )""",
    "CREATE INDEX events_topic_ts ON events (topic, ts, event_id)",
    "CREATE INDEX events_ts ON events (ts, topic, event_id)",
    "CREATE INDEX events_received_at ON events (received_at)",
    "CREATE INDEX events_txid ON events (txid)",
]

_FILL = """
INSERT INTO events (topic, event_id, ts, source, payload, received_at)
SELECT 'topic-' || (g %% 100), md5(g::text)::uuid::text,
       '2026-01-01T00:00:00Z'::timestamptz + g * interval '250 milliseconds',
       'host-' || (g %% 20),
       json_build_object('level', 'info',
                         'msg', 'GET /api/orders/' || (g::bigint * 7919 %% 100000) || ' 200',
                         'user', 'u' || (g %% 50000), 'duration_ms', g %% 2000),
       now() - (g %% 3) * interval '1 day'
FROM generate_series(%(first)s, %(last)s) AS g
"""
_BYTES = """
SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
"""


def measure(settings: Settings, events: int) -> list[str]:
    asyncio.run(dbschema.ensure(settings))
    kwargs = database.connect_kwargs(settings)
    with psycopg.connect(settings.database_url, autocommit=True, **kwargs) as conn:
        for statement in SCHEMA_5:
            conn.execute(statement)
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (5)")
        for first in range(1, events + 1, 1_000_000):
            last = min(events, first + 999_999)
            conn.execute(_FILL, {"first": first, "last": last})
            print(f"  {last:,} of {events:,} events", file=sys.stderr, flush=True)
        conn.execute("INSERT INTO topics SELECT DISTINCT topic FROM events")
        conn.execute(dbschema.FILL_VOLUME)
        conn.execute("VACUUM ANALYZE")
        before = int((conn.execute(_BYTES).fetchone() or (0,))[0])
    started = time.perf_counter()
    asyncio.run(dbschema.ensure(settings))
    took = time.perf_counter() - started
    with psycopg.connect(settings.database_url, autocommit=True, **kwargs) as conn:
        conn.execute("VACUUM ANALYZE")
        after = int((conn.execute(_BYTES).fetchone() or (0,))[0])
        moved = int((conn.execute("SELECT sum(n) FROM blocks").fetchone() or (0,))[0])
    if moved != events:
        raise SystemExit(f"the upgrade moved {moved:,} events of {events:,}")
    return [
        f"{events:,} events (100 topics, UUID ids, received over three days), one run:",
        "",
        "| upgrade 5 → 6 | figure |",
        "| --- | --- |",
        f"| duration | {took:.1f} s |",
        f"| per million events | {took / events * 1e6:.1f} s |",
        f"| bytes per event, schema 5 | {before / events:,.1f} |",
        f"| bytes per event, schema 6 | {after / events:,.1f} |",
    ]


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.upgrade", description=__doc__)
    p.add_argument("--events", type=int, default=1_000_000, help="events of the schema-5 table")
    args = p.parse_args()
    settings = Settings.from_env(db_schema=f"upgrade_{uuid.uuid4().hex[:8]}", log_level="WARNING")
    out = record.Output()
    try:
        for line in measure(settings, args.events):
            out(line)
    finally:
        asyncio.run(dbschema.drop(settings))
    out.write("upgrade", title="The upgrade from schema 5: events into blocks")


if __name__ == "__main__":
    cli()
