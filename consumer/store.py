"""Idempotent storage of a batch of broker messages in one PostgreSQL transaction.

Per batch: make sure the time partitions its receive times need exist, cut its events into
chunks (:mod:`consumer.blocks`), add its topics, record the ledger keys of its units (units
stored before, redeliveries and client retries, are skipped: see :mod:`pubsub.message`) and
insert its events' keys with ``ON CONFLICT DO NOTHING``, store the new ones in blocks (see
:mod:`pubsub.layout`), add to the shared counters, commit. Statements, not rows, cost here: a
batch is two round trips in one pipeline (the ledger's and the keys' answers, then the blocks
with the counters and COMMIT), whatever its size."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg

from consumer import blocks
from consumer.blocks import Row
from consumer.partitions import Partitions
from pubsub import database, layout, tenants
from pubsub.errors import Unusable
from pubsub.message import Claim, Undecodable
from pubsub.settings import Settings

__all__ = ["Row", "Store", "Stored", "copy_rows"]

log = logging.getLogger("pubsub.consumer.store")

# The units' keys, and the claims of Idempotency-Keys with their bodies' fingerprints, in one
# sorted insert (one lock order for every consumer). A claim that meets another fingerprint is
# a key reused with another body: the ledger as it was before this insert says so.
_RECORD_UNITS = """
WITH given AS (
    SELECT * FROM unnest(%s::text[], %s::text[]) AS g(key, fingerprint)
), reused AS (
    SELECT count(*) AS n FROM given g JOIN ledger l USING (key)
    WHERE g.fingerprint IS NOT NULL AND l.fingerprint IS DISTINCT FROM g.fingerprint
), added AS (
    INSERT INTO ledger (key, fingerprint)
    SELECT key, fingerprint FROM given ORDER BY key COLLATE "C"
    ON CONFLICT DO NOTHING
    RETURNING key
)
SELECT ARRAY(SELECT key FROM added), (SELECT n FROM reused)
"""
# Topics first, in a statement of their own: the keys' statement then sees them (and their
# ids) in its snapshot, including those another consumer added a moment ago. Sorted, as every
# consumer locks them in one order. Naming ``topics`` here also locks it before any event is
# stored, which the retention sweep relies on (see consumer.retention). A tenant met for the
# first time is added before its topics (default, always there, is not looked for).
_ADD_TENANTS = """
INSERT INTO tenants (name) SELECT DISTINCT t COLLATE "C" FROM unnest(%s::text[]) AS t ORDER BY 1
ON CONFLICT DO NOTHING
"""
_ADD_TOPICS = """
INSERT INTO topics (tenant, topic)
SELECT DISTINCT n.id, g.topic COLLATE "C"
FROM unnest(%s::text[], %s::text[]) AS g(tenant, topic) JOIN tenants n ON n.name = g.tenant
ORDER BY 1, 2
ON CONFLICT DO NOTHING
"""
# The chunks (see consumer.blocks) get their block ids; the keys of their events go in, in the
# order given (one order for every consumer, or overlapping batches deadlock), each pointing
# to its chunk's block; the answer is the storing transaction, the chunks' block and tenant
# ids, and which keys were new. A tenant or topic missing from its table fails the keys' NOT
# NULL: never an event dropped quietly.
_INSERT_KEYS = """
WITH chunks AS MATERIALIZED (
    SELECT c.i, n.id AS tenant, t.id AS topic, nextval('block_ids') AS block
    FROM unnest(%(tenants)b::text[], %(topics)b::text[]) WITH ORDINALITY AS c(tenant, topic, i)
    LEFT JOIN tenants n ON n.name = c.tenant
    LEFT JOIN topics t ON t.tenant = n.id AND t.topic = c.topic
), keyed AS (
    INSERT INTO keys (tenant, topic, block, key)
    SELECT c.tenant, c.topic, c.block, e.key
    FROM unnest(%(chunks)b::bigint[], %(keys)b::bytea[]) WITH ORDINALITY AS e(i, key, o)
    JOIN chunks c USING (i)
    ORDER BY e.o
    ON CONFLICT DO NOTHING
    RETURNING block, key
)
SELECT pg_current_xact_id()::text,
       ARRAY(SELECT block FROM chunks ORDER BY i), ARRAY(SELECT tenant FROM chunks ORDER BY i),
       ARRAY(SELECT block FROM keyed), ARRAY(SELECT key FROM keyed)
"""
# Keys that went in for events of a unit stored before (see Store._unstale).
_TAKE_OUT_KEYS = """
DELETE FROM keys k
USING unnest(%s::text[], %s::text[], %s::bytea[]) AS d(tenant, topic, key)
JOIN tenants n ON n.name = d.tenant JOIN topics t ON t.tenant = n.id AND t.topic = d.topic
WHERE k.tenant = n.id AND k.topic = t.id AND k.key = d.key
"""
# Blocks as the consumer built them. Of the event ids at a block's first (last) timestamp, the
# first (last) by the database's collation, as reads order them; nearly always there is one. A
# receive time without a partition fails the insert: retried (see Store.store).
_FIRST = """CASE WHEN strpos({ids}, E'\\n') = 0 THEN {ids}
     ELSE (SELECT {pick}(i) FROM string_to_table({ids}, E'\\n') AS i) END"""
_INSERT_BLOCKS = f"""
INSERT INTO blocks (tenant, topic, id, received, min_ts, max_ts, first_id, last_id, n, events)
SELECT tenant, topic, id, received AT TIME ZONE 'UTC', min_ts AT TIME ZONE 'UTC',
       max_ts AT TIME ZONE 'UTC',
       {_FIRST.format(ids="firsts", pick="min")}, {_FIRST.format(ids="lasts", pick="max")},
       n, events
FROM unnest(%(tenant)b::integer[], %(topic)b::text[], %(id)b::bigint[],
            %(received)b::timestamp[], %(min_ts)b::timestamp[], %(max_ts)b::timestamp[],
            %(firsts)b::text[], %(lasts)b::text[], %(n)b::integer[], %(events)b::text[])
     AS b(tenant, topic, id, received, min_ts, max_ts, firsts, lasts, n, events)
"""
# The counters (``received``: the events of the batch's new units, by tenant; ``stored``: those
# stored) and the volume per minute (times in UTC), in one statement; each in one sorted order,
# as every consumer locks their rows. One JSON document rather than ten arrays: a batch of
# single events is mostly fixed costs, and each array parameter is one.
_COUNT = """
WITH by_topic AS (
    INSERT INTO volume AS v (tenant, topic, minute, shard, n)
    SELECT tenant, topic COLLATE "C", minute AT TIME ZONE 'UTC', %(shard)s, n
    FROM json_to_recordset(%(counts)s::json -> 'volume')
         AS g(tenant integer, topic text, minute timestamp, n bigint)
    ORDER BY 1, 2, 3
    ON CONFLICT (tenant, topic, minute, shard) DO UPDATE SET n = v.n + excluded.n
), in_all AS (
    INSERT INTO volume_total AS v (tenant, minute, shard, n)
    SELECT tenant, minute AT TIME ZONE 'UTC', %(shard)s, sum(n)
    FROM json_to_recordset(%(counts)s::json -> 'volume')
         AS g(tenant integer, topic text, minute timestamp, n bigint)
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (tenant, minute, shard) DO UPDATE SET n = v.n + excluded.n
)
INSERT INTO counters AS c (tenant, shard, received, unique_processed, duplicate_dropped)
SELECT t.id, %(shard)s, r.received, r.stored, r.received - r.stored
FROM json_to_recordset(%(counts)s::json -> 'tenants')
     AS r(name text, received bigint, stored bigint)
JOIN tenants t ON t.name = r.name
ORDER BY t.id
ON CONFLICT (tenant, shard) DO UPDATE SET
    received = c.received + excluded.received,
    unique_processed = c.unique_processed + excluded.unique_processed,
    duplicate_dropped = c.duplicate_dropped + excluded.duplicate_dropped
"""
# Characters of lines per statement of blocks: a batch of large events goes in several, none
# of them a parameter the size of the whole batch.
_PIECE = 1 << 20


def copy_rows(
    events: Sequence[Mapping[str, Any]], received_at: str, tenant: str = tenants.DEFAULT
) -> list[Row]:
    """The rows of decoded events of ``tenant`` (see :func:`pubsub.message.decode`); raise
    :class:`~pubsub.message.Undecodable` if a field holds a line or field separator, or a
    timestamp is not an ISO 8601 time with an offset."""
    dumps = orjson.dumps
    key_of = layout.event_key
    parse = blocks.parse_time
    rows: list[Row] = []
    append = rows.append
    for e in events:
        topic, event_id, ts = e["topic"], e["event_id"], e["timestamp"]
        try:
            at = parse(ts)
        except (TypeError, ValueError, OverflowError, AttributeError):
            raise Undecodable(
                f"timestamp {str(ts)[:60]!r} is not an RFC 3339 time with an offset"
            ) from None
        append(
            Row(
                at,
                event_id,
                tenant,
                topic,
                key_of(event_id),
                received_at,
                f"{event_id}\t{ts}\t{e['source']}\t{received_at}\t",
                dumps(e["payload"]).decode(),
                (tenant, topic, event_id),
            )
        )
    # Separators inside a field would shift the columns of a line: refuse, cheaply, in C.
    blob = "\n".join([f"{row.topic}\t{row.head}{row.payload}" for row in rows])
    if blob.count("\t") != 5 * len(rows) or blob.count("\n") != len(rows) - 1 or "\r" in blob:
        raise Undecodable("a field holds a tab, newline or carriage return")
    return rows


@dataclass(frozen=True)
class Stored:
    """What one committed batch changed."""

    units: int
    redelivered: int
    received: int
    inserted: int
    reused_keys: int = 0
    # (received, inserted) by tenant name, for the metrics by tenant.
    by_tenant: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return self.received - self.inserted


@dataclass
class _Keyed:
    """What the keys' statement answered (see _INSERT_KEYS), with the chunks it was given."""

    txid: str
    chunks: list[blocks.Chunk]
    ids: list[int]  # of the chunks' blocks
    tenant_ids: list[int]
    new: list[tuple[int, bytes]]  # (block id, key) of the new events

    def add(self, more: _Keyed) -> None:
        """Take in the answer of a second statement of the same transaction."""
        self.chunks += more.chunks
        self.ids += more.ids
        self.tenant_ids += more.tenant_ids
        self.new += more.new

    def made(self) -> blocks.Blocks:
        return blocks.blocks(
            self.chunks, ids=self.ids, tenant_ids=self.tenant_ids, new=self.new, txid=self.txid
        )


class Store:
    """One consumer's connection to PostgreSQL; not safe for concurrent use."""

    def __init__(self, settings: Settings, *, shard: int) -> None:
        self._settings = settings
        self._shard = shard
        self._partitions = Partitions(layout.span(settings.retention_seconds))
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        await self.close()
        conn = await database.connect(self._settings)
        self._conn = conn
        return conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        """The open connection, made again first if it was lost."""
        conn = self._conn
        return conn if conn is not None and not conn.closed else await self.connect()

    async def store(
        self, batch: Sequence[tuple[str, Sequence[Row]]], *, claims: Sequence[Claim] = ()
    ) -> Stored:
        """Store ``(ledger key, rows)`` units atomically; return what changed.

        A unit whose key is in the ledger already was stored before: it is skipped, events and
        counters alike. ``claims`` record Idempotency-Keys with their bodies' fingerprints;
        one whose key came before with another fingerprint counts as reused."""
        # Every row of a unit was received at once.
        received = [rows[0].received for _, rows in batch if rows]
        conn = await self._connection()
        await self._partitions.ensure(conn, received)
        for attempt in (1, 2):
            try:
                return await self._store(conn, batch, claims)
            except (psycopg.errors.CheckViolation, psycopg.errors.NotNullViolation) as exc:
                # No partition for a receive time, or no id for a topic: not the data's fault
                # (a partition this consumer knew was dropped by retention since, say), so an
                # error to learn from and retry, never one that dead-letters the messages.
                if isinstance(exc, psycopg.errors.CheckViolation) and "partition" not in str(exc):
                    raise
                self._partitions.forget()
                if attempt == 2:
                    raise psycopg.OperationalError(
                        f"the layout moved under a batch: {exc}"
                    ) from exc
                await self._partitions.ensure(conn, received)
        raise AssertionError("unreachable")

    async def _store(
        self,
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        batch: Sequence[tuple[str, Sequence[Row]]],
        claims: Sequence[Claim],
    ) -> Stored:
        # Each event's first copy in delivery order, in chunks. Its keys go in with the
        # ledger's statement, before anyone knows which units are new: nearly always all of
        # them, and a unit stored before holds events whose keys are there already.
        unique: dict[tuple[str, str, str], Row] = {}
        for _, rows in batch:
            for row in rows:
                unique.setdefault(row.place, row)
        chunks = self._cut(list(unique.values()))
        keys = [key for key, _ in batch] + [key for key, _ in claims]
        fingerprints = [None] * len(batch) + [body for _, body in claims]
        made = blocks.Blocks()
        # One pipeline, two round trips: BEGIN leaves with the ledger's and the keys'
        # statements, COMMIT with the blocks'.
        async with conn.pipeline(), conn.transaction():
            places = sorted({(chunk.tenant, chunk.topic) for chunk in chunks})
            if any(tenant != tenants.DEFAULT for tenant, _ in places):
                await conn.execute(_ADD_TENANTS, ([tenant for tenant, _ in places],))
            if places:
                await conn.execute(_ADD_TOPICS, tuple(map(list, zip(*places, strict=True))))
            recording = await conn.execute(_RECORD_UNITS, (keys, fingerprints))
            keying = await self._send_keys(conn, chunks) if chunks else None
            recorded = await recording.fetchone()
            added, reused = (recorded[0], recorded[1]) if recorded else ([], 0)
            fresh = set(added) if isinstance(added, list) else set()
            unknown = fresh.difference(keys)
            if unknown:
                # Keys the batch does not hold (bytes from a non-UTF8 database, a
                # trigger...): reading them as "stored before" would acknowledge events
                # never stored.
                raise Unusable(
                    f"the ledger answered {len(unknown)} key(s) this batch does not hold "
                    f"(e.g. {next(iter(unknown))!r}); nothing was stored or acknowledged: "
                    "check the database's encoding (UTF8) and the ledger table"
                )
            received: dict[str, int] = {}
            taken: set[str] = set()
            stale = False
            for unit_key, rows in batch:
                # A redelivery can meet its first copy in one batch: count each unit once.
                if unit_key in fresh and unit_key not in taken and rows:
                    taken.add(unit_key)
                    tenant = rows[0].tenant  # a unit is one message's: of one tenant
                    received[tenant] = received.get(tenant, 0) + len(rows)
                elif rows and unit_key not in fresh:
                    stale = True
            if keying is not None:
                keyed = await self._keyed(keying, chunks)
                if stale:
                    await self._unstale(conn, batch, fresh, keyed)
                made = keyed.made()
                for piece in made.pieces(_PIECE):
                    await conn.execute(_INSERT_BLOCKS, piece)
            if received:
                await self._count(conn, received, made)
        stored = made.stored
        by_tenant = {name: (got, stored.get(name, 0)) for name, got in received.items()}
        claimed = sum(1 for key, _ in claims if key in fresh)
        return Stored(
            len(batch),
            len(batch) - (len(fresh) - claimed),
            sum(received.values()),
            sum(stored.values()),
            reused if isinstance(reused, int) else 0,
            by_tenant,
        )

    async def _unstale(
        self,
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        batch: Sequence[tuple[str, Sequence[Row]]],
        fresh: set[str],
        keyed: _Keyed,
    ) -> None:
        """Correct ``keyed`` for the units of ``batch`` that were stored before (rare: a
        redelivery, a client's retry). Their events' keys are there already, unless retention
        took the events since: a key that went in for such an event is taken out again (the
        unit was stored, and counted, once). And where such a unit held the first copy of an
        event that a new unit holds too, the new unit's copy is the one to store."""
        first: dict[tuple[str, str, str], str] = {}  # an event's first unit
        first_fresh: dict[tuple[str, str, str], Row] = {}  # its first copy in a new unit
        for unit_key, rows in batch:
            for row in rows:
                first.setdefault(row.place, unit_key)
                if unit_key in fresh:
                    first_fresh.setdefault(row.place, row)
        new = set(keyed.new)
        undone: list[tuple[int, bytes]] = []
        gone: list[tuple[str, str, bytes]] = []
        for chunk, block in zip(keyed.chunks, keyed.ids, strict=True):
            for row in chunk.rows:
                if first[row.place] not in fresh and (block, row.key) in new:
                    undone.append((block, row.key))
                    gone.append((row.tenant, row.topic, row.key))
        if gone:
            await conn.execute(_TAKE_OUT_KEYS, tuple(map(list, zip(*gone, strict=True))))
            keyed.new = [pair for pair in keyed.new if pair not in set(undone)]
        late = [row for place, row in first_fresh.items() if first[place] not in fresh]
        if late:
            chunks = self._cut(late)
            keyed.add(await self._keyed(await self._send_keys(conn, chunks), chunks))

    def _cut(self, rows: list[Row]) -> list[blocks.Chunk]:
        """``rows`` (one per key) in chunks (see consumer.blocks)."""
        times = {}
        for text in {row.received for row in rows}:
            at = datetime.fromisoformat(text)
            times[text] = (blocks.utc(at), self._partitions.start_of(at))
        return blocks.cut(rows, times)

    async def _send_keys(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], chunks: list[blocks.Chunk]
    ) -> psycopg.AsyncCursor[tuple[object, ...]]:
        """Insert the keys of ``chunks``' events; the cursor of the answer."""
        order, keys = blocks.key_order(chunks)
        return await conn.execute(
            _INSERT_KEYS,
            {
                "tenants": [chunk.tenant for chunk in chunks],
                "topics": [chunk.topic for chunk in chunks],
                "chunks": order,
                "keys": keys,
            },
            binary=True,
        )

    async def _keyed(
        self, cur: psycopg.AsyncCursor[tuple[object, ...]], chunks: list[blocks.Chunk]
    ) -> _Keyed:
        answer = await cur.fetchone()
        if answer is None:
            raise AssertionError("the keys' statement returned no row")
        txid, ids, tenant_ids, new_blocks, new_keys = answer
        return _Keyed(
            txid=str(txid),
            chunks=chunks,
            ids=list(ids),  # type: ignore[call-overload]
            tenant_ids=list(tenant_ids),  # type: ignore[call-overload]
            new=list(zip(new_blocks, new_keys, strict=True)),  # type: ignore[call-overload]
        )

    async def _count(
        self,
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        received: Mapping[str, int],
        made: blocks.Blocks,
    ) -> None:
        """Add ``received`` events by tenant, and ``made``'s, to the counters and volumes."""
        counts = {
            "volume": [
                {"tenant": tenant, "topic": topic, "minute": minute, "n": n}
                for (tenant, topic, minute), n in made.volume.items()
            ],
            "tenants": [
                {"name": name, "received": n, "stored": made.stored.get(name, 0)}
                for name, n in received.items()
            ],
        }
        await conn.execute(_COUNT, {"shard": self._shard, "counts": orjson.dumps(counts).decode()})

    async def prune(self, *, older_than: float) -> int:
        """Forget ledger keys older than ``older_than`` seconds; return how many."""
        conn = await self._connection()
        async with conn.transaction():
            cur = await conn.execute(
                "DELETE FROM ledger WHERE seen_at < now() - make_interval(secs => %s)",
                (older_than,),
            )
            return cur.rowcount
