"""Retention: drop the partitions of blocks past ``PUBSUB_RETENTION``, with their events' keys.

Every consumer runs a :class:`Sweeper` when a retention is set; one of them sweeps at a time
(see :mod:`consumer.rounds`). Blocks lie in partitions by
receive time (see :mod:`pubsub.layout`); a sweep takes each partition whose end is past the
horizon through three steps:

1. Tally its events by topic and minute, a bounded batch per transaction, paced as step 2
   is. Then, in one transaction, subtract the tally from the counters (``expired``) and the
   volume per minute, and detach it. Its events leave every read at once, and the counts with
   them.
2. Delete the keys of its events, ``PUBSUB_RETENTION_BATCH`` events per transaction, pausing
   between transactions (see :data:`consumer.rounds.DUTY`), so that the sweep never holds more
   than a tenth of one connection's time against the consumers' inserts.
3. Drop it.

Nothing is deleted event by event but the keys; the blocks go with their partition. An event is
deduplicated until its partition is detached, so for at least the horizon; between the detach
and its key's deletion a copy sent again is still taken for a duplicate, never stored twice.
A sweep that stops between the steps is finished by the next one (``partitions.detached``).

Topics whose events are all gone leave the ``topics`` table. Consumers add topics in the
transaction that stores the events, before the events; the sweep locks ``topics`` against them
before it looks for blocks of a topic, so it cannot remove a topic whose first events are being
stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from consumer import metrics, tenant_expiry, uncount
from consumer.rounds import Rounds
from pubsub import dbschema, layout
from pubsub.settings import Settings
from pubsub.tenants import Tenancy

log = logging.getLogger("pubsub.consumer.retention")

_LOCK_KEY = 0x72657461  # one sweep at a time in a database, whichever consumer runs it
SHARD = -1  # the sweep's counters row; consumers draw theirs from 0..65535

# The partitions past the horizon, and those detached before (a sweep that stopped midway).
_EXPIRED = """
SELECT name, detached FROM partitions
WHERE detached OR hi <= now() - make_interval(secs => %(horizon)s)
ORDER BY lo
"""
# The next blocks (by id) of a partition after ``after``, about ``batch`` events (whole blocks:
# one block's more at most), for both paced steps below.
_BATCH = """(
    SELECT id, tenant, topic, events FROM (
        SELECT id, tenant, topic, events, sum(n) OVER (ORDER BY id) - n AS before
        FROM (SELECT * FROM PARTITION WHERE id > %(after)s ORDER BY id LIMIT %(batch)s) AS b
    ) AS t WHERE before < %(batch)s
)"""
# Step 1, first the tally: the next blocks (by id) of a partition, about ``batch`` events, are
# counted by topic and minute into the session's table ``gone``; the statement gives their
# count, the sum of their ids (to tell later whether the partition changed) and the last id.
_GONE = """
CREATE TEMP TABLE IF NOT EXISTS gone (tenant integer, topic text, minute timestamptz, n bigint)
"""
_TALLY = f"""
WITH taken AS MATERIALIZED {_BATCH}, tallied AS (
    INSERT INTO gone (tenant, topic, minute, n)
    SELECT tenant, topic, MINUTE_OF_TS, count(*)
    FROM (SELECT b.tenant, b.topic, split_part(line, E'\\t', 2)::timestamptz AS ts
          FROM taken b, string_to_table(b.events, E'\\n') AS line) AS e
    GROUP BY 1, 2, 3
)
SELECT count(*), coalesce(sum(id), 0), max(id) FROM taken
""".replace("MINUTE_OF_TS", dbschema.MINUTE.format(column="ts"))
_SUMMARY = "SELECT count(*), coalesce(sum(id), 0) FROM PARTITION"
# ... then, in the transaction that detaches the partition, the tally leaves the counts.
_UNCOUNT = """
WITH totals AS MATERIALIZED (
    SELECT tenant, topic, minute, sum(n) AS n FROM gone GROUP BY 1, 2, 3
), UNCOUNT
SELECT tenant, topic, sum(n) FROM totals GROUP BY tenant, topic
""".replace("UNCOUNT", uncount.UNCOUNT)
# Step 2: the next blocks (by id) of a detached partition, about ``batch`` events, with the
# ids of their events...
_NEXT_BLOCKS = f"""
SELECT t.tenant, topics.id, t.id,
       ARRAY(SELECT event_key(split_part(line, E'\\t', 1))
             FROM string_to_table(t.events, E'\\n') AS line)
FROM {_BATCH} AS t JOIN topics ON topics.tenant = t.tenant AND topics.topic = t.topic
ORDER BY t.id
"""
# ... whose keys go, a block at a time: one scan of the keys' index each, whatever the planner
# would guess of a join with rows that string_to_table makes. A key that points elsewhere is
# not this event's.
_UNKEY = """
DELETE FROM keys
WHERE tenant = %s AND topic = %s AND block = %s AND key = ANY (%s::bytea[])
"""
# The minutes whose events are all gone leave the volume tables (below zero too: events the
# rollup never counted, stored by consumers older than schema 5, were removed). The sweep's
# own rows (shard -1) mark the minutes it touched; their rows are locked (in key order, as
# consumers lock theirs) before they are summed, so a consumer adding to one of them waits
# and is counted, and a consumer's new row, which this statement does not see, is not
# removed.
_COMPACT_VOLUME = """
WITH locked AS MATERIALIZED (
    SELECT ctid AS row, tenant, topic, minute, n FROM volume
    WHERE (tenant, topic, minute) IN (SELECT tenant, topic, minute FROM volume
                                      WHERE shard = %(shard)s)
    ORDER BY tenant, topic COLLATE "C", minute, shard FOR UPDATE
), empty AS (
    SELECT tenant, topic, minute FROM locked GROUP BY 1, 2, 3 HAVING sum(n) <= 0
)
DELETE FROM volume
WHERE ctid = ANY (ARRAY(SELECT row FROM locked JOIN empty USING (tenant, topic, minute)))
"""
_COMPACT_VOLUME_TOTAL = """
WITH locked AS MATERIALIZED (
    SELECT ctid AS row, tenant, minute, n FROM volume_total
    WHERE (tenant, minute) IN (SELECT tenant, minute FROM volume_total WHERE shard = %(shard)s)
    ORDER BY tenant, minute, shard FOR UPDATE
), empty AS (
    SELECT tenant, minute FROM locked GROUP BY 1, 2 HAVING sum(n) <= 0
)
DELETE FROM volume_total
WHERE ctid = ANY (ARRAY(SELECT row FROM locked JOIN empty USING (tenant, minute)))
"""
# Whether autovacuum looks after ``keys`` (server setting and table option), and the live
# rows the last vacuum or analyze counted.
_AUTOVACUUM = """
SELECT current_setting('autovacuum')::boolean
       AND coalesce(NOT ('autovacuum_enabled=false' = ANY (c.reloptions)), true),
       greatest(c.reltuples, 0)
FROM pg_class c WHERE c.oid = 'keys'::regclass
"""
_EMPTY = """
SELECT g.tenant, g.topic FROM unnest(%s::integer[], %s::text[]) AS g(tenant, topic)
WHERE NOT EXISTS (SELECT 1 FROM blocks b WHERE b.tenant = g.tenant AND b.topic = g.topic)
"""
_FORGET_TOPICS = """
DELETE FROM topics
WHERE (tenant, topic) IN (SELECT * FROM unnest(%s::integer[], %s::text[]))
  AND NOT EXISTS (SELECT 1 FROM blocks b
                  WHERE b.tenant = topics.tenant AND b.topic = topics.topic)
"""
# A topic of a tenant, by the tenant's id.
Place = tuple[int, str]


@dataclass(frozen=True)
class Swept:
    """What one sweep removed."""

    events: int
    topics: int
    seconds: float


class Sweeper(Rounds[Swept]):
    """Removes expired events (see :mod:`consumer.rounds`)."""

    lock_key = _LOCK_KEY
    what = "retention sweep"
    log = log

    def __init__(self, settings: Settings) -> None:
        if settings.retention_seconds is None and not settings.tenants_file:
            raise ValueError("no retention is set (PUBSUB_RETENTION or a tenants file)")
        super().__init__(settings, interval=settings.retention_interval)
        self.horizon = settings.retention_seconds
        self.span = layout.span(self.horizon)
        self._removed_since_vacuum = 0
        # The tenants' own retentions, read again when the file changes.
        self.tenancy = (
            Tenancy(path=settings.tenants_file, retention=settings.retention)
            if settings.tenants_file
            else None
        )

    async def sweep(self, stop: asyncio.Event | None = None) -> Swept | None:
        """Remove what is past the horizon now; ``None`` if another process is sweeping."""
        return await self.once(stop)

    async def round(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> Swept:
        started = time.monotonic()
        removed, touched = 0, set[Place]()
        # The next partition is made before the consumers need it.
        await conn.execute(
            "SELECT add_partition(now() + %s::interval, %s::interval)", (self.span, self.span)
        )
        expired = []
        if self.horizon is not None:
            cur = await conn.execute(_EXPIRED, {"horizon": self.horizon})
            expired = await cur.fetchall()
        for name, detached in expired:
            if stop.is_set():
                break
            if not detached:
                counts = await self._detach(conn, name, stop)
                if counts is None:
                    break  # stopped: the next sweep tallies it again
                removed += sum(n for _, n in counts)
                touched.update(place for place, _ in counts)
            if await self._unkey(conn, name, stop) is None:
                break  # stopped: the next sweep goes on
            await conn.execute("SELECT drop_partition(%s)", (name,))
            log.info("dropped partition %s", name)
        for tenant, horizon in await self._tenant_horizons(conn):
            if stop.is_set():
                break
            gone = await tenant_expiry.expire(
                conn,
                tenant=tenant,
                horizon=horizon,
                batch=self.settings.retention_batch,
                shard=SHARD,
                pause=lambda took: self.pause(stop, took),
            )
            if gone is None:
                break  # stopped: the next sweep goes on
            removed += gone.events
            touched.update(gone.topics)
            metrics.EVENTS_EXPIRED.inc(gone.events)
        forgotten = await self.forget_empty_topics(sorted(touched)) if touched else 0
        if removed:
            await self.compact_volume()
            await self._vacuum_if_no_autovacuum(conn, removed)
        swept = Swept(removed, forgotten, time.monotonic() - started)
        if removed:
            log.info(
                "removed %d event(s) older than %s and %d topic(s) left empty, in %.1fs",
                removed, self.settings.retention, forgotten, swept.seconds,
            )  # fmt: skip
        return swept

    async def _tenant_horizons(self, conn: psycopg.AsyncConnection[Any]) -> list[tuple[int, float]]:
        """The tenants with a retention of their own shorter than the deployment's, by id,
        with their horizons in seconds."""
        if self.tenancy is None:
            return []
        self.tenancy.refresh()
        own = {
            name: tenant.retention.total_seconds()
            for name, tenant in self.tenancy.registry.tenants.items()
            if tenant.retention is not None
            and (self.horizon is None or tenant.retention.total_seconds() < self.horizon)
        }
        if not own:
            return []
        ids = await tenant_expiry.tenant_ids(conn, sorted(own))
        return [(ids[name], horizon) for name, horizon in sorted(own.items()) if name in ids]

    async def _detach(
        self, conn: psycopg.AsyncConnection[Any], name: str, stop: asyncio.Event
    ) -> list[tuple[Place, int]] | None:
        """Step 1: uncount and detach partition ``name``; what it held, by tenant and topic,
        or ``None``
        if ``stop`` came first.

        The tally reads every event of the partition: it is paced, in transactions of its own,
        and only its sum is applied in the detach's transaction. A partition that changed
        meanwhile (a merge of its blocks, a late import into it) is tallied again there."""
        partition = sql.Identifier(name).as_string(conn)
        tally = _TALLY.replace("PARTITION", partition)
        await conn.execute(_GONE)
        await conn.execute("TRUNCATE gone")
        after, blocks, ids = -1, 0, 0
        while True:
            t0 = time.monotonic()
            async with conn.transaction():
                cur = await conn.execute(
                    tally, {"after": after, "batch": self.settings.retention_batch}
                )
                taken, id_sum, last = await cur.fetchone() or (0, 0, None)
            if not taken or last is None:
                break
            after, blocks, ids = int(last), blocks + int(taken), ids + int(id_sum)
            if await self.pause(stop, time.monotonic() - t0):
                return None
        async with conn.transaction():
            cur = await conn.execute(_SUMMARY.replace("PARTITION", partition))
            if tuple(map(int, await cur.fetchone() or (0, 0))) != (blocks, ids):
                log.info("partition %s changed while it was tallied: tallying it again", name)
                await conn.execute("TRUNCATE gone")
                await conn.execute(tally, {"after": -1, "batch": 2**62})
            cur = await conn.execute(_UNCOUNT, {"shard": SHARD})
            counts = [((int(t), str(p)), int(n)) for t, p, n in await cur.fetchall()]
            await conn.execute("SELECT detach_partition(%s)", (name,))
        metrics.EVENTS_EXPIRED.inc(sum(n for _, n in counts))
        await conn.execute("TRUNCATE gone")
        return counts

    async def _unkey(
        self, conn: psycopg.AsyncConnection[Any], name: str, stop: asyncio.Event
    ) -> int | None:
        """Step 2: delete the keys of detached partition ``name``'s events; how many blocks
        it held, or ``None`` if ``stop`` came first."""
        statement = _NEXT_BLOCKS.replace("PARTITION", sql.Identifier(name).as_string(conn))
        after, blocks = -1, 0
        while True:
            t0 = time.monotonic()
            async with conn.transaction():
                cur = await conn.execute(
                    statement, {"after": after, "batch": self.settings.retention_batch}
                )
                taken = await cur.fetchall()
                if not taken:
                    return blocks
                async with conn.cursor() as deleting:
                    await deleting.executemany(_UNKEY, taken)
            after, blocks = int(taken[-1][2]), blocks + len(taken)
            if await self.pause(stop, time.monotonic() - t0):
                return None

    async def _vacuum_if_no_autovacuum(
        self, conn: psycopg.AsyncConnection[Any], removed: int
    ) -> None:
        """Where autovacuum is off, vacuum ``keys`` once a fifth of it was removed (as
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
        await conn.execute("VACUUM (ANALYZE) keys")
        log.info(
            "autovacuum is off: vacuumed keys after %d removal(s), in %.1fs",
            self._removed_since_vacuum, time.monotonic() - started,
        )  # fmt: skip
        self._removed_since_vacuum = 0

    async def compact_volume(self) -> None:
        """Remove the volume rows of the minutes left without events."""
        conn = await self.connection()
        for statement in (_COMPACT_VOLUME, _COMPACT_VOLUME_TOTAL):
            async with conn.transaction():
                await conn.execute(statement, {"shard": SHARD})

    async def forget_empty_topics(self, topics: list[Place]) -> int:
        """Remove those of ``topics`` that have no events left; return how many."""
        conn = await self.connection()
        # A look without the lock first: most topics still have events, and the consumers
        # should wait only for the few that look empty.
        async with conn.transaction():
            cur = await conn.execute(_EMPTY, _columns(topics))
            empty = [(int(t), str(p)) for t, p in await cur.fetchall()]
        if not empty:
            return 0
        async with conn.transaction():
            # Waits for consumers storing events now, and holds back new ones for this
            # statement: a topic whose first events are in flight is not taken for empty.
            await conn.execute("LOCK TABLE topics IN SHARE ROW EXCLUSIVE MODE")
            cur = await conn.execute(_FORGET_TOPICS, _columns(empty))
            return cur.rowcount


def _columns(places: list[Place]) -> tuple[list[int], list[str]]:
    """``places`` as the two arrays of unnest(tenants, topics)."""
    return [tenant for tenant, _ in places], [topic for _, topic in places]
