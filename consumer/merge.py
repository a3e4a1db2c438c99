"""Merges of small blocks: at low rates a batch holds a handful of events, and so does its block.

Every consumer runs a :class:`Merger` (unless ``PUBSUB_MERGE_INTERVAL`` is 0); one of them
merges at a time (see :mod:`consumer.rounds`). Each round takes the blocks of fewer than
``SMALL_BLOCK`` events stored between an hour and ``PUBSUB_MERGE_AFTER`` seconds ago (a slice
of them, the next one each round), groups
those that may share a block (one tenant, topic, partition and hour of timestamps, see
:mod:`pubsub.layout`), and packs each group, in the order the blocks were stored, into blocks of
at most ``BLOCK_EVENTS`` events and ``BLOCK_BYTES`` of text. Each new block is one transaction:
delete the old blocks, insert their events as one block sorted as every block is, and point
their keys at it.

What readers see does not change:

- every event keeps its lines' fields, its own storing transaction among them, so the live
  stream finds it at the same position (a merged block carries the first and last of its
  events' transactions, and the stream opens a block by that range, see
  :mod:`readapi.queries`);
- pages are keyed by ``(ts, event_id)``, not by block, and a block's first and last keys are
  computed again;
- a lookup by id follows the key to the new block, changed in the same transaction;
- only blocks whose transactions all ended before the merge began are merged, so a stream
  never finds an event behind its horizon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from consumer import metrics
from consumer.rounds import DUTY, Rounds
from pubsub import layout
from pubsub.settings import Settings

log = logging.getLogger("pubsub.consumer.merge")

_LOCK_KEY = 0x6D657267  # one merger at a time in a database, whichever consumer runs it
_START = datetime.min.replace(tzinfo=UTC)

# Small blocks old enough to merge, among those stored in the last hour (``blocks_small``, by
# storing time): ``scan`` of them from ``from`` on, with how many share each one's place (one
# alone, a sparse topic's hour, has nothing to merge with). The merger walks the hour in such
# slices, round by round, so that each round's work is bounded and no slice holds back the
# rest. ``last_txid`` before the oldest running transaction: their storing transactions all
# ended.
_CANDIDATES = f"""
WITH small AS MATERIALIZED (
    SELECT b.tableoid::bigint AS part, b.tenant, b.topic,
           {layout.BLOCK_BIN.format(column="b.min_ts")} AS hour, b.id, b.n,
           octet_length(b.events) AS size, b.stored_at
    FROM blocks b
    WHERE b.n < {layout.SMALL_BLOCK}
      AND b.stored_at < now() - make_interval(secs => %(after)s)
      AND b.stored_at >= now() - make_interval(secs => %(after)s) - interval '1 hour'
      AND b.stored_at > %(from)s
      AND b.last_txid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY b.stored_at LIMIT %(scan)s
)
SELECT part, tenant, topic, hour, id, n, size,
       count(*) OVER (PARTITION BY part, tenant, topic, hour), stored_at
FROM small ORDER BY part, tenant, topic, hour, id
"""
# One new block from ``ids``: its events sorted as a consumer sorts them, the first and last
# of their transactions, the latest receive and storing times (so the block stays in the
# partition its parts were in), and the keys moved to it. Counts what it deleted, merged and
# re-pointed, so that a block gone meanwhile (retention detached its partition) is noticed.
_MERGE = """
WITH old AS MATERIALIZED (
    DELETE FROM blocks WHERE id = ANY (%(ids)s::bigint[]) AND tableoid = %(part)s::oid
    RETURNING tenant, topic, received, txid, last_txid, stored_at, events
), lines AS MATERIALIZED (
    SELECT o.tenant, o.topic, line, split_part(line, E'\\t', 1) AS event_id,
           split_part(line, E'\\t', 2)::timestamptz AS at
    FROM old o, string_to_table(o.events, E'\\n') AS line
), merged AS (
    INSERT INTO blocks (tenant, topic, id, received, min_ts, max_ts, first_id, last_id, n, txid,
                        last_txid, stored_at, events)
    SELECT min(tenant), min(topic), %(block)s, (SELECT max(received) FROM old), min(at),
           max(at), (array_agg(event_id ORDER BY at, event_id))[1],
           (array_agg(event_id ORDER BY at DESC, event_id DESC))[1], count(*),
           (SELECT min(txid) FROM old), (SELECT max(last_txid) FROM old),
           (SELECT max(stored_at) FROM old),
           string_agg(line, E'\\n' ORDER BY at, event_id COLLATE "C")
    FROM lines
    RETURNING n
), moved AS (
    UPDATE keys SET block = %(block)s
    WHERE tenant = %(tenant)s
      AND topic = (SELECT id FROM topics WHERE tenant = %(tenant)s AND topic = %(topic)s)
      AND key = ANY (ARRAY(SELECT event_key(event_id) FROM lines))
    RETURNING 1
)
SELECT (SELECT count(*) FROM old), (SELECT n FROM merged), (SELECT count(*) FROM moved)
"""


@dataclass(frozen=True, slots=True)
class Small:
    """A block the merge may take: where it lies, and its size."""

    part: int  # the partition's oid
    tenant: int
    topic: str
    hour: object  # the aligned hour of its timestamps
    id: int
    n: int
    size: int  # bytes of text

    @property
    def place(self) -> tuple[int, int, str, object]:
        return self.part, self.tenant, self.topic, self.hour


def pack(blocks: Sequence[Small]) -> Iterator[list[Small]]:
    """Runs of ``blocks`` (sorted by place, then by id) that become one block each: of one
    place, at most ``BLOCK_EVENTS`` events and ``BLOCK_BYTES`` of text, two blocks at least."""
    run: list[Small] = []
    n = size = 0
    for block in blocks:
        if run and (
            block.place != run[0].place
            or n + block.n > layout.BLOCK_EVENTS
            or size + block.size > layout.BLOCK_BYTES
        ):
            if len(run) > 1:
                yield run
            run, n, size = [], 0, 0
        run.append(block)
        n += block.n
        size += block.size
    if len(run) > 1:
        yield run


@dataclass(frozen=True)
class Merged:
    """What one round did."""

    blocks: int  # taken
    into: int  # made
    events: int
    seconds: float


class Merger(Rounds[Merged]):
    """Merges small blocks (see :mod:`consumer.rounds`)."""

    lock_key = _LOCK_KEY
    what = "merge"
    log = log

    def __init__(self, settings: Settings, *, scan: int = 20_000, duty: float = DUTY) -> None:
        super().__init__(settings, interval=settings.merge_interval, duty=duty)
        self.scan = scan  # small blocks looked at per round
        self._from = _START

    async def merge(self, stop: asyncio.Event | None = None) -> Merged | None:
        """One round now; ``None`` if another process is merging."""
        return await self.once(stop)

    async def round(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> Merged:
        started = time.monotonic()
        cur = await conn.execute(
            _CANDIDATES,
            {"after": self.settings.merge_after, "scan": self.scan, "from": self._from},
        )
        rows = await cur.fetchall()
        # The next round goes on after this slice, or from the start once the hour is walked.
        self._from = max(row[8] for row in rows) if len(rows) == self.scan else _START
        small = [Small(*row[:7]) for row in rows if row[7] > 1]
        taken = made = events = 0
        for run in pack(small):
            if stop.is_set():
                break
            t0 = time.monotonic()
            done = False
            async with conn.transaction():
                cur = await conn.execute("SELECT nextval('block_ids')")
                (block,) = await cur.fetchone() or (None,)
                cur = await conn.execute(
                    _MERGE,
                    {
                        "ids": [b.id for b in run], "part": run[0].part, "block": block,
                        "tenant": run[0].tenant, "topic": run[0].topic,
                    },
                )  # fmt: skip
                deleted, n, moved = await cur.fetchone() or (0, 0, 0)
                if deleted != len(run) or n != moved or n != sum(b.n for b in run):
                    # A block went meanwhile (its partition was detached), or the keys do not
                    # match the events: leave them as they were.
                    log.info("merge of blocks %s skipped: %s of them found, %s events, %s keys",
                             [b.id for b in run], deleted, n, moved)  # fmt: skip
                    raise psycopg.Rollback
                done = True
            if done:
                taken, made, events = taken + len(run), made + 1, events + n
                metrics.BLOCKS_MERGED.inc(len(run))
            if await self.pause(stop, time.monotonic() - t0):
                break
        merged = Merged(taken, made, events, time.monotonic() - started)
        if taken:
            log.info("merged %d small block(s) into %d, %d event(s), in %.2fs",
                     taken, made, events, merged.seconds)  # fmt: skip
        return merged
