"""A tenant's own retention: its blocks leave the partitions past its horizon, a batch at a time.

Partitions are shared by the tenants (they span receive time), so a tenant whose retention is
shorter than the deployment's (``retention`` in the tenants file, see :mod:`pubsub.tenants`)
cannot drop them. Its blocks in each partition past its horizon go instead, oldest first,
about ``PUBSUB_RETENTION_BATCH`` events per transaction, paced as the sweep's other steps (see
:mod:`consumer.retention`). Each transaction deletes whole blocks of that one tenant in that
one partition (found by the ``(tenant, min_ts)`` index, never by a scan of the others'), the
keys of their events, and their counts (``expired``, the volume per minute), together, so the
counts stay exact whenever the sweep stops. Other tenants' blocks are not read.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from consumer import uncount
from pubsub import dbschema

# The partitions whose end is past a tenant's horizon.
_PAST = """
SELECT name FROM partitions
WHERE NOT detached AND hi <= now() - make_interval(secs => %(horizon)s)
ORDER BY lo
"""
# The minute of an event's timestamp, from its line (see pubsub.layout).
_MINUTE = dbschema.MINUTE.format(column="split_part(line, E'\\t', 2)::timestamptz")
# The minute of an event's timestamp, from its line (see pubsub.layout).
_MINUTE = dbschema.MINUTE.format(column="split_part(line, E'\\t', 2)::timestamptz")
# The next blocks of the tenant in a partition, about ``batch`` events (whole blocks), deleted;
# their events uncounted; the keys of each block's events, for _UNKEY.
_TAKE = """
WITH chosen AS MATERIALIZED (
    SELECT id FROM (
        SELECT id, sum(n) OVER (ORDER BY min_ts, id) - n AS before
        FROM (SELECT id, n, min_ts FROM PARTITION WHERE tenant = %(tenant)s
              ORDER BY min_ts, id LIMIT %(batch)s) AS b
    ) AS t WHERE before < %(batch)s
), gone AS MATERIALIZED (
    DELETE FROM PARTITION WHERE id IN (SELECT id FROM chosen) AND tenant = %(tenant)s
    RETURNING tenant, topic, id, events
), lines AS MATERIALIZED (
    SELECT g.tenant, g.topic, g.id, split_part(line, E'\\t', 1) AS event_id,
           MINUTE_OF_TS AS minute
    FROM gone g, string_to_table(g.events, E'\\n') AS line
), totals AS MATERIALIZED (
    SELECT tenant, topic, minute, count(*) AS n FROM lines GROUP BY 1, 2, 3
), UNCOUNT
SELECT l.tenant, t.id, l.id, array_agg(event_key(l.event_id)), l.topic, count(*)
FROM lines l JOIN topics t ON t.tenant = l.tenant AND t.topic = l.topic
GROUP BY l.tenant, t.id, l.id, l.topic
""".replace("MINUTE_OF_TS", _MINUTE).replace("UNCOUNT", uncount.UNCOUNT)
# One block's keys: one scan of the keys' index each (see consumer.retention).
_UNKEY = """
DELETE FROM keys
WHERE tenant = %s AND topic = %s AND block = %s AND key = ANY (%s::bytea[])
"""


@dataclass(frozen=True)
class Expired:
    """What one tenant's expiry removed."""

    events: int
    topics: set[tuple[int, str]]  # (tenant id, topic) that lost events


async def expire(
    conn: psycopg.AsyncConnection[Any],
    *,
    tenant: int,
    horizon: float,
    batch: int,
    shard: int,
    pause: Callable[[float], Awaitable[bool]],
) -> Expired | None:
    """Remove tenant ``tenant``'s events received more than ``horizon`` seconds ago, in the
    partitions wholly past it; ``None`` if ``pause`` (given each transaction's seconds) says
    to stop, which the next sweep takes up again."""
    cur = await conn.execute(_PAST, {"horizon": horizon})
    names = [str(name) for (name,) in await cur.fetchall()]
    removed, topics = 0, set[tuple[int, str]]()
    for name in names:
        statement = _TAKE.replace("PARTITION", sql.Identifier(name).as_string(conn))
        while True:
            started = time.monotonic()
            async with conn.transaction():
                cur = await conn.execute(
                    statement, {"tenant": tenant, "batch": batch, "shard": shard}
                )
                taken = await cur.fetchall()
                if taken:
                    async with conn.cursor() as deleting:
                        await deleting.executemany(_UNKEY, [row[:4] for row in taken])
            if not taken:
                break
            removed += sum(int(row[5]) for row in taken)
            topics.update((int(row[0]), str(row[4])) for row in taken)
            if await pause(time.monotonic() - started):
                return None
    return Expired(removed, topics)


async def tenant_ids(conn: psycopg.AsyncConnection[Any], names: list[str]) -> dict[str, int]:
    """The ids of the tenants named that have stored events."""
    cur = await conn.execute("SELECT name, id FROM tenants WHERE name = ANY (%s)", (names,))
    return {str(name): int(i) for name, i in await cur.fetchall()}
