"""Retention: remove events older than ``PUBSUB_RETENTION``, a bounded batch at a time.

Every consumer runs a :class:`Sweeper` when a retention is set; a session advisory lock lets
one of them sweep at a time, and the others skip that round. A sweep deletes the oldest events
(by ``received_at``) in transactions of at most ``PUBSUB_RETENTION_BATCH`` rows, counts them in
the ``expired`` counter in the same transaction, and pauses between transactions as long as
the last one took, so that it never holds more than half of one connection's time against the
consumers' inserts. Autovacuum makes the freed space reusable; the table then stays at the
size of one horizon's worth of events. Where autovacuum is off, the sweep vacuums the table
itself each time it removed a fifth of it.

Deletes, not time partitions: a unique key on a partitioned table must contain the partition
key, so ``(topic, event_id)`` would need a key table of its own, written for every event,
and two copies of one event meeting at a partition boundary could both be stored. With one
table the primary key keeps deciding, and an event is deduplicated for exactly as long as it
is stored, which is at least the horizon.

Topics whose events are all gone leave the ``topics`` table. Consumers add topics in the
statement that inserts the events, which locks ``topics`` first; the sweep locks ``topics``
against them before it looks for events of a topic, so it cannot remove a topic whose first
events are being stored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from consumer import metrics
from pubsub import database, dbschema, service
from pubsub.settings import Settings

log = logging.getLogger("pubsub.consumer.retention")

_LOCK_KEY = 0x72657461  # one sweep at a time in a database, whichever consumer runs it
SHARD = -1  # the sweep's counters row; consumers draw theirs from 0..65535

_REMOVE = """
WITH removed AS (
    DELETE FROM events WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM events
        WHERE received_at < now() - make_interval(secs => %(horizon)s)
        ORDER BY received_at LIMIT %(batch)s
    ))
    RETURNING topic, ts
), counted AS (
    INSERT INTO counters AS c (shard, expired)
    SELECT %(shard)s, count(*) FROM removed
    ON CONFLICT (shard) DO UPDATE SET expired = c.expired + excluded.expired
), by_topic AS (
    INSERT INTO volume AS v (topic, minute, shard, n)
    SELECT topic COLLATE "C", MINUTE_OF_TS, %(shard)s, -count(*) FROM removed
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (topic, minute, shard) DO UPDATE SET n = v.n + excluded.n
), in_all AS (
    INSERT INTO volume_total AS v (minute, shard, n)
    SELECT MINUTE_OF_TS, %(shard)s, -count(*) FROM removed GROUP BY 1 ORDER BY 1
    ON CONFLICT (minute, shard) DO UPDATE SET n = v.n + excluded.n
)
SELECT topic, count(*) FROM removed GROUP BY topic
""".replace("MINUTE_OF_TS", dbschema.MINUTE.format(column="ts"))
# The minutes whose events are all gone leave the volume tables (below zero too: events the
# rollup never counted, stored by consumers older than schema 5, were removed). The sweep's
# own rows (shard -1) mark the minutes it touched; their rows are locked (in key order, as
# consumers lock theirs) before they are summed, so a consumer adding to one of them waits
# and is counted, and a consumer's new row, which this statement does not see, is not
# removed.
_COMPACT_VOLUME = """
WITH locked AS MATERIALIZED (
    SELECT ctid AS row, topic, minute, n FROM volume
    WHERE (topic, minute) IN (SELECT topic, minute FROM volume WHERE shard = %(shard)s)
    ORDER BY topic COLLATE "C", minute, shard FOR UPDATE
), empty AS (
    SELECT topic, minute FROM locked GROUP BY 1, 2 HAVING sum(n) <= 0
)
DELETE FROM volume WHERE ctid = ANY (ARRAY(SELECT row FROM locked JOIN empty USING (topic, minute)))
"""
_COMPACT_VOLUME_TOTAL = """
WITH locked AS MATERIALIZED (
    SELECT ctid AS row, minute, n FROM volume_total
    WHERE minute IN (SELECT minute FROM volume_total WHERE shard = %(shard)s)
    ORDER BY minute, shard FOR UPDATE
), empty AS (
    SELECT minute FROM locked GROUP BY 1 HAVING sum(n) <= 0
)
DELETE FROM volume_total
WHERE ctid = ANY (ARRAY(SELECT row FROM locked JOIN empty USING (minute)))
"""
# Whether autovacuum looks after ``events`` (server setting and table option), and the live
# rows the last vacuum or analyze counted.
_AUTOVACUUM = """
SELECT current_setting('autovacuum')::boolean
       AND coalesce(NOT ('autovacuum_enabled=false' = ANY (c.reloptions)), true),
       greatest(c.reltuples, 0)
FROM pg_class c WHERE c.oid = 'events'::regclass
"""
_EMPTY = """
SELECT t FROM unnest(%s::text[]) AS t
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.topic = t)
"""
_FORGET_TOPICS = """
DELETE FROM topics
WHERE topic = ANY (%s::text[])
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.topic = topics.topic)
"""


@dataclass(frozen=True)
class Swept:
    """What one sweep removed."""

    events: int
    topics: int
    seconds: float


class Sweeper:
    """Removes expired events from one consumer's own connection (not the store's, so a sweep
    never delays a batch in hand)."""

    def __init__(self, settings: Settings) -> None:
        horizon = settings.retention_seconds
        if horizon is None:
            raise ValueError("no retention is set (PUBSUB_RETENTION)")
        self.settings, self.horizon = settings, horizon
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._removed_since_vacuum = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every ``PUBSUB_RETENTION_INTERVAL`` seconds until ``stop`` is set; a database
        that does not answer is tried again next round."""
        interval = self.settings.retention_interval
        # Consumers started together should not all try at the same moment.
        delay = random.uniform(0, min(interval, 5.0))
        try:
            while not await service.stopped_within(stop, delay):
                delay = interval
                try:
                    await self.sweep(stop)
                except (psycopg.Error, OSError) as exc:
                    log.warning("retention sweep interrupted, next in %.0fs: %s", interval, exc)
                    await self.close()
        finally:
            await self.close()

    async def sweep(self, stop: asyncio.Event | None = None) -> Swept | None:
        """Remove what is past the horizon now; ``None`` if another process is sweeping."""
        stop = stop or asyncio.Event()
        conn = await self._connection()
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,))
        row = await cur.fetchone()
        if not row or not row[0]:
            return None
        try:
            return await self._sweep(conn, stop)
        finally:
            if not conn.closed:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))

    async def _sweep(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> Swept:
        started = time.monotonic()
        removed, touched = 0, set[str]()
        params = {"horizon": self.horizon, "batch": self.settings.retention_batch, "shard": SHARD}
        while True:
            t0 = time.monotonic()
            async with conn.transaction():
                cur = await conn.execute(_REMOVE, params)
                counts = await cur.fetchall()
            n = sum(int(c) for _, c in counts)
            removed += n
            touched.update(t for t, _ in counts)
            metrics.EVENTS_EXPIRED.inc(n)
            if n < self.settings.retention_batch:
                break
            # Pausing as long as the batch took leaves the consumers at least half the time.
            if await service.stopped_within(stop, time.monotonic() - t0):
                break
        forgotten = await self.forget_empty_topics(sorted(touched)) if touched else 0
        if removed:
            await self.compact_volume()
        if removed:
            await self._vacuum_if_no_autovacuum(conn, removed)
        swept = Swept(removed, forgotten, time.monotonic() - started)
        if removed:
            log.info(
                "removed %d event(s) older than %s and %d topic(s) left empty, in %.1fs",
                removed, self.settings.retention, forgotten, swept.seconds,
            )  # fmt: skip
        return swept

    async def _vacuum_if_no_autovacuum(
        self, conn: psycopg.AsyncConnection[Any], removed: int
    ) -> None:
        """Where autovacuum is off, vacuum ``events`` once a fifth of it was removed (as
        autovacuum's default scale factor would): deleted rows free no space until then."""
        cur = await conn.execute(_AUTOVACUUM)
        row = await cur.fetchone()
        if row is None or row[0]:
            return
        self._removed_since_vacuum += removed
        live = float(row[1] or 0)
        if live > 0 and self._removed_since_vacuum < 0.2 * live:
            return
        started = time.monotonic()
        await conn.execute("VACUUM (ANALYZE) events")
        log.info(
            "autovacuum is off: vacuumed events after %d removal(s), in %.1fs",
            self._removed_since_vacuum, time.monotonic() - started,
        )  # fmt: skip
        self._removed_since_vacuum = 0

    async def compact_volume(self) -> None:
        """Remove the volume rows of the minutes left without events."""
        conn = await self._connection()
        for statement in (_COMPACT_VOLUME, _COMPACT_VOLUME_TOTAL):
            async with conn.transaction():
                await conn.execute(statement, {"shard": SHARD})

    async def forget_empty_topics(self, topics: list[str]) -> int:
        """Remove those of ``topics`` that have no events left; return how many."""
        conn = await self._connection()
        # A look without the lock first: most topics still have events, and the consumers
        # should wait only for the few that look empty.
        async with conn.transaction():
            cur = await conn.execute(_EMPTY, (topics,))
            empty = [t for (t,) in await cur.fetchall()]
        if not empty:
            return 0
        async with conn.transaction():
            # Waits for consumers storing events now, and holds back new ones for this
            # statement: a topic whose first events are in flight is not taken for empty.
            await conn.execute("LOCK TABLE topics IN SHARE ROW EXCLUSIVE MODE")
            cur = await conn.execute(_FORGET_TOPICS, (empty,))
            return cur.rowcount

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await database.connect(self.settings, autocommit=True)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
