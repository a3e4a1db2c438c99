"""Idempotent storage of a batch of broker messages in one PostgreSQL transaction.

Per batch: make sure the time partitions its receive times need exist, add its topics,
record the ledger keys of its units (skipping units stored before: redeliveries and client
retries, see :mod:`pubsub.message`), hand the new events to PostgreSQL (a COPY into a
temporary table, or, for a few hundred or fewer, one parameter), insert their keys with
``ON CONFLICT DO NOTHING`` and the new ones in blocks (see :mod:`pubsub.layout`), add to the
shared counters, commit. Statements, not rows, cost here, so a batch of thousands of events
takes six round trips, and a small one two (see :meth:`Store.store`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from consumer.partitions import Partitions
from pubsub import database, dbschema, layout, tenants
from pubsub.errors import Unusable
from pubsub.message import Claim, Undecodable
from pubsub.settings import Settings

log = logging.getLogger("pubsub.consumer.store")

# The COPY columns: copy_rows() writes its lines in exactly this order (``key``: the hex of
# the event's key, see pubsub.layout.event_key).
_CREATE_INCOMING = """
CREATE TEMP TABLE IF NOT EXISTS incoming (
    topic text, event_id text, key text, ts text, source text, payload text, received_at text,
    tenant text
) ON COMMIT DELETE ROWS
"""
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
# Topics first, in a statement of their own: the events' statement then sees them (and their
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
# The events' keys decide which events are new (competing consumers insert them in one global
# order, or overlapping batches deadlock); the new ones go into blocks of one tenant, topic,
# partition and hour of timestamps, sorted by (ts, event_id) and cut at BLOCK_EVENTS
# events or about BLOCK_BYTES (see pubsub.layout). A tenant or topic missing from its table
# fails the keys' NOT NULL, a receive time without a partition the blocks' insert: none is
# ever dropped quietly. The counters (``received``: the events of the batch's new units, by
# tenant), the volume per minute and the blocks move in the same statement (fewer round trips
# per batch).
_INSERT_EVENTS = (
    """
WITH given AS MATERIALIZED (
    SELECT topic, event_id, decode(key, 'hex') AS key, ts, source, payload, received_at,
           ts::timestamptz AS at, received_at::timestamptz AS received, tenant AS tenant_name
    FROM (GIVEN_ROWS) AS rows
), placed AS MATERIALIZED (
    SELECT g.*, n.id AS tenant, t.id AS topic_id, BLOCK_BIN AS hour,
           coalesce(p.lo, '-infinity') AS part
    FROM given g LEFT JOIN tenants n ON n.name = g.tenant_name
    LEFT JOIN topics t ON t.tenant = n.id AND t.topic = g.topic
    LEFT JOIN partitions p ON g.received >= p.lo AND g.received < p.hi AND NOT p.detached
), chunked AS MATERIALIZED (
    SELECT *, (row_number() OVER w - 1) / BLOCK_EVENTS AS by_count,
              sum(octet_length(payload) + 64) OVER w / BLOCK_BYTES AS by_bytes
    FROM placed
    WINDOW w AS (PARTITION BY tenant, topic, part, hour ORDER BY at, event_id COLLATE "C")
), numbered AS MATERIALIZED (
    SELECT tenant, topic, part, hour, by_count, by_bytes, nextval('block_ids') AS block
    FROM (SELECT DISTINCT tenant, topic, part, hour, by_count, by_bytes FROM chunked) AS chunks
), keyed AS (
    INSERT INTO keys (tenant, topic, block, key)
    SELECT c.tenant, c.topic_id, n.block, c.key
    FROM chunked c JOIN numbered n USING (tenant, topic, part, hour, by_count, by_bytes)
    ORDER BY c.tenant, c.topic_id, c.key
    ON CONFLICT DO NOTHING
    RETURNING tenant, topic, key, block
), inserted AS MATERIALIZED (
    SELECT c.*, k.block FROM chunked c
    JOIN keyed k ON k.tenant = c.tenant AND k.topic = c.topic_id AND k.key = c.key
), blocked AS (
    INSERT INTO blocks (tenant, topic, id, received, min_ts, max_ts, first_id, last_id, n, events)
    SELECT min(tenant), min(topic), block, max(received), min(at), max(at),
           (array_agg(event_id ORDER BY at, event_id))[1],
           (array_agg(event_id ORDER BY at DESC, event_id DESC))[1], count(*),
           string_agg(concat_ws(E'\\t', event_id, ts, source, received_at,
                                pg_current_xact_id()::text, payload),
                      E'\\n' ORDER BY at, event_id COLLATE "C")
    FROM inserted GROUP BY block
), stored AS (
    SELECT tenant, count(*) AS n FROM inserted GROUP BY tenant
), by_topic AS (
    INSERT INTO volume AS v (tenant, topic, minute, shard, n)
    SELECT tenant, topic COLLATE "C", MINUTE_OF_TS, %(shard)s, count(*) FROM inserted
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (tenant, topic, minute, shard) DO UPDATE SET n = v.n + excluded.n
), in_all AS (
    INSERT INTO volume_total AS v (tenant, minute, shard, n)
    SELECT tenant, MINUTE_OF_TS, %(shard)s, count(*) FROM inserted GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (tenant, minute, shard) DO UPDATE SET n = v.n + excluded.n
), received AS MATERIALIZED (
    SELECT t.id AS tenant, r.tenant AS name, r.n AS received, coalesce(s.n, 0) AS n
    FROM unnest(%(tenants)s::text[], %(received)s::bigint[]) AS r(tenant, n)
    JOIN tenants t ON t.name = r.tenant LEFT JOIN stored s ON s.tenant = t.id
), counted AS (
    INSERT INTO counters AS c (tenant, shard, received, unique_processed, duplicate_dropped)
    SELECT tenant, %(shard)s, received, n, received - n FROM received ORDER BY tenant
    ON CONFLICT (tenant, shard) DO UPDATE SET
        received = c.received + excluded.received,
        unique_processed = c.unique_processed + excluded.unique_processed,
        duplicate_dropped = c.duplicate_dropped + excluded.duplicate_dropped
)
SELECT name, received, n FROM received
""".replace("MINUTE_OF_TS", dbschema.MINUTE.format(column="at"))
    .replace("BLOCK_EVENTS", str(layout.BLOCK_EVENTS))
    .replace("BLOCK_BYTES", str(layout.BLOCK_BYTES))
    .replace("BLOCK_BIN", layout.BLOCK_BIN.format(column="g.at"))
)
# Where the rows come from: the COPY into ``incoming``, or, for a small batch, the lines
# themselves as one parameter that PostgreSQL splits. A COPY costs PostgreSQL about 0.7 ms
# whatever its size, which a batch of a few single events pays many times over; past a few
# hundred rows COPY is the cheaper per row (measured: 18 rows, 44-54 against 85-96 µs of
# PostgreSQL CPU per row; 300 about even; 5,000, 22-25 against 17).
_FROM_COPY = _INSERT_EVENTS.replace("GIVEN_ROWS", "SELECT * FROM incoming")
_FROM_LINES = _INSERT_EVENTS.replace(
    "GIVEN_ROWS",
    """SELECT f[1] AS topic, f[2] AS event_id, f[3] AS key, f[4] AS ts, f[5] AS source,
           f[6] AS payload, f[7] AS received_at, f[8] AS tenant
    FROM (SELECT string_to_array(line, E'\\t') AS f
          FROM string_to_table(%(lines)s, E'\\n') AS line) AS split""",
)
_COPY_FROM_ROWS = 256


def _small(batch: Sequence[tuple[str, Sequence[Row]]]) -> bool:
    """Whether ``batch`` goes as one parameter: few rows, and few bytes (one parameter is
    held whole, several times over, where a COPY goes in pieces of ``_COPY_CHUNK``)."""
    if sum(len(rows) for _, rows in batch) >= _COPY_FROM_ROWS:
        return False
    return sum(len(line) for _, rows in batch for _, line in rows) < _COPY_CHUNK


# An event as the consumer stores it: its key ``(tenant, topic, event_id)``, and a line of
# PostgreSQL's COPY text format (the columns of ``incoming``, tab-separated, not yet
# backslash-escaped). Lines are made once per event as messages arrive, so storing a batch is
# a single COPY.
Row = tuple[tuple[str, str, str], str]


# Bytes of COPY text built at once: a batch of large events is sent in pieces of about this
# size rather than as one string (and its copies) the size of the whole batch.
_COPY_CHUNK = 1 << 20


def _chunks(lines: list[str], size: int) -> Iterator[list[str]]:
    """``lines`` in consecutive groups of about ``size`` characters (one line at least)."""
    group: list[str] = []
    length = 0
    for line in lines:
        group.append(line)
        length += len(line)
        if length >= size:
            yield group
            group, length = [], 0
    if group:
        yield group


def copy_rows(
    events: Sequence[Mapping[str, Any]], received_at: str, tenant: str = tenants.DEFAULT
) -> list[Row]:
    """The rows of decoded events of ``tenant`` (see :func:`pubsub.message.decode`); raise
    :class:`~pubsub.message.Undecodable` if a field holds a COPY separator."""
    dumps = orjson.dumps
    key_of = layout.event_key
    rows: list[Row] = []
    append = rows.append
    for e in events:
        topic, event_id = e["topic"], e["event_id"]
        payload = dumps(e["payload"]).decode()
        append(
            (
                (tenant, topic, event_id),
                f"{topic}\t{event_id}\t{key_of(event_id)}\t{e['timestamp']}\t{e['source']}\t"
                f"{payload}\t{received_at}\t{tenant}",
            )
        )
    # Separators inside a field would shift the columns: refuse, cheaply, in C.
    blob = "\n".join(line for _, line in rows)
    if blob.count("\t") != 7 * len(rows) or blob.count("\n") != len(rows) - 1 or "\r" in blob:
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


class Store:
    """One consumer's connection to PostgreSQL; not safe for concurrent use."""

    def __init__(self, settings: Settings, *, shard: int) -> None:
        self._settings = settings
        self._shard = shard
        self._partitions = Partitions(layout.span(settings.retention_seconds))
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        await self.close()
        conn = await database.connect(self._settings, autocommit=True)
        await conn.execute(_CREATE_INCOMING)
        await conn.set_autocommit(False)
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
        # Every row of a unit was received at once: its line ends with that time and the
        # tenant.
        received = [rows[0][1].rsplit("\t", 2)[1] for _, rows in batch if rows]
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
        # A small batch sends BEGIN with the ledger's statement and COMMIT with the events':
        # two round trips. A COPY cannot travel in a pipeline: a large batch takes five.
        small = _small(batch)
        result: psycopg.AsyncCursor[tuple[object, ...]] | None = None
        pipeline = conn.pipeline() if small else contextlib.nullcontext()
        async with pipeline, conn.transaction():
            places = sorted({place[:2] for _, rows in batch for place, _ in rows})
            if any(tenant != tenants.DEFAULT for tenant, _ in places):
                await conn.execute(_ADD_TENANTS, ([tenant for tenant, _ in places],))
            if places:
                await conn.execute(_ADD_TOPICS, tuple(map(list, zip(*places, strict=True))))
            keys = [key for key, _ in batch] + [key for key, _ in claims]
            fingerprints = [None] * len(batch) + [body for _, body in claims]
            cur = await conn.execute(_RECORD_UNITS, (keys, fingerprints))
            recorded = await cur.fetchone()
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
            unique: dict[tuple[str, str, str], str] = {}
            taken: set[str] = set()
            for unit_key, rows in batch:
                # A redelivery can meet its first copy in one batch: count each unit once.
                if unit_key in fresh and unit_key not in taken and rows:
                    taken.add(unit_key)
                    tenant = rows[0][0][0]  # a unit is one message's: of one tenant
                    received[tenant] = received.get(tenant, 0) + len(rows)
                    for key, line in rows:
                        unique.setdefault(key, line)  # the first copy in delivery order
            if unique:
                # Python orders str by code point, as COLLATE "C" orders UTF-8: the rows
                # arrive in the order the INSERT takes its locks.
                result = await self._insert(conn, [unique[k] for k in sorted(unique)],
                                            received=received, small=small)  # fmt: skip
        by_tenant: dict[str, tuple[int, int]] = {}
        if result is not None:
            # A row per tenant the batch received events of.
            for name, got, new in await result.fetchall():
                by_tenant[str(name)] = (int(str(got)), int(str(new)))
        inserted = sum(new for _, new in by_tenant.values())
        claimed = sum(1 for key, _ in claims if key in fresh)
        return Stored(
            len(batch),
            len(batch) - (len(fresh) - claimed),
            sum(received.values()),
            inserted,
            reused if isinstance(reused, int) else 0,
            by_tenant,
        )

    async def _insert(
        self,
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        lines: list[str],
        *,
        received: Mapping[str, int],
        small: bool,
    ) -> psycopg.AsyncCursor[tuple[object, ...]]:
        """Insert the rows of ``lines`` and move the counters (``received``: events by
        tenant); the cursor of the statement, whose rows say how many were new."""
        params: dict[str, object] = {
            "shard": self._shard,
            "tenants": list(received),
            "received": list(received.values()),
        }
        if small:
            # As they are: no COPY escapes (fields hold no tab or newline).
            params["lines"] = "\n".join(lines)
            return await conn.execute(_FROM_LINES, params)
        cur = conn.cursor()
        async with cur.copy("COPY incoming FROM STDIN") as copy:
            for chunk in _chunks(lines, _COPY_CHUNK):
                await copy.write(("\n".join(chunk) + "\n").replace("\\", "\\\\"))
        return await cur.execute(_FROM_COPY, params)

    async def prune(self, *, older_than: float) -> int:
        """Forget ledger keys older than ``older_than`` seconds; return how many."""
        conn = await self._connection()
        async with conn.transaction():
            cur = await conn.execute(
                "DELETE FROM ledger WHERE seen_at < now() - make_interval(secs => %s)",
                (older_than,),
            )
            return cur.rowcount
