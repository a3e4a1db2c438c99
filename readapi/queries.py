"""SQL of the read API: pages of events (keyset pagination), the live stream's reads in the
order events were stored, and the statistics."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg import pq
from psycopg_pool import PoolTimeout

from pubsub import database, layout, search

# The pool waited in vain for a connection, or PostgreSQL is down: answer 503, retry later.
UNAVAILABLE: tuple[type[Exception], ...] = (PoolTimeout, *database.UNAVAILABLE)


class BadCursor(ValueError):
    """A pagination cursor that this service did not produce."""


def _pack(first: str, topic: str, event_id: str) -> str:
    raw = orjson.dumps([first, topic, event_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unpack(text: str, what: str) -> tuple[str, str, str]:
    """The three strings of a cursor made by :func:`_pack`; :class:`BadCursor` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text[:2048] + "=" * (-len(text[:2048]) % 4))
        first, topic, event_id = orjson.loads(raw)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadCursor(f"{what} is not one this service produced") from None
    fields = (first, topic, event_id)
    if not all(isinstance(f, str) and "\x00" not in f for f in fields):
        raise BadCursor(f"{what} is not one this service produced")
    return fields


# Marks a cursor of newest-first pages; a timestamp never starts with it, so the cursors of
# oldest-first pages stay as they were.
_DESCENDING = "<"


@dataclass(frozen=True)
class Cursor:
    """Position after the last event of a page: ``(timestamp, topic, event_id)``, in the
    page's order (``descending``: newest first)."""

    ts: datetime
    topic: str
    event_id: str
    descending: bool = False

    def encode(self) -> str:
        mark = _DESCENDING if self.descending else ""
        return _pack(mark + self.ts.isoformat(), self.topic, self.event_id)

    @classmethod
    def decode(cls, text: str) -> Cursor:
        ts, topic, event_id = _unpack(text, "cursor")
        descending = ts.startswith(_DESCENDING)
        try:
            parsed = datetime.fromisoformat(ts.removeprefix(_DESCENDING))
        except ValueError:
            raise BadCursor("cursor is not one this service produced") from None
        if parsed.tzinfo is None:
            raise BadCursor("cursor is not one this service produced")
        return cls(parsed, topic, event_id, descending)


@dataclass(frozen=True, order=True)
class StreamCursor:
    """Position in the live stream: ``(storing transaction, topic, event_id)``, the order in
    which events became visible (see :func:`stream_read`)."""

    txid: int
    topic: str
    event_id: str

    @classmethod
    def at(cls, txid: int) -> StreamCursor:
        """The position before every event stored by transaction ``txid`` (topics are never
        empty, so ``("", "")`` sorts first)."""
        return cls(txid, "", "")

    def encode(self) -> str:
        return _pack(str(self.txid), self.topic, self.event_id)

    @classmethod
    def decode(cls, text: str) -> StreamCursor:
        txid, topic, event_id = _unpack(text, "Last-Event-ID")
        # ASCII digits only: str.isdigit() also holds for "²", which int() refuses.
        if not (txid.isascii() and txid.isdigit()) or len(txid) > 20 or int(txid) >= 2**64:
            raise BadCursor("Last-Event-ID is not one this service produced")
        return cls(int(txid), topic, event_id)


@dataclass(frozen=True)
class Filters:
    """What a reader narrows events to, on ``/events`` and on the stream alike."""

    topic: str | None = None
    source: str | None = None
    event_id: str | None = None
    words: tuple[str, ...] = ()  # of a search (see pubsub.search)
    tenant: int = layout.TENANT  # whose events: a reader sees its tenant's only
    # Any of these topics: the live feed's, which reads only what its streams follow.
    topics: tuple[str, ...] | None = None

    @property
    def exact(self) -> bool:
        """Whether these filters name at most a topic (what the volume rollup counts by)."""
        return self.source is None and self.event_id is None and not self.words

    def sql(self, where: list[str], params: list[Any]) -> None:
        """Add this filter's conditions on events and their parameters."""
        self._topic_sql(where, params)
        for column, value in (("event_id", self.event_id), ("source", self.source)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        search.condition(list(self.words), where, params)

    def _topic_sql(self, where: list[str], params: list[Any]) -> None:
        # The same column on events and on blocks.
        if self.topic is not None:
            where.append("topic = %s")
            params.append(self.topic)
        if self.topics is not None:
            where.append("topic = ANY(%s)")
            params.append(list(self.topics))

    def blocks_sql(self, where: list[str], params: list[Any], *, words: bool = True) -> None:
        """Add the conditions a block must meet to hold an event these filters pass (but for
        the words of a search, which need the block's text, unless ``words``)."""
        where.append("tenant = %s")
        params.append(self.tenant)
        self._topic_sql(where, params)
        if self.event_id is not None:
            # The blocks of the id's keys: one probe of the key table per topic.
            where.append(
                f"""id = ANY(ARRAY(SELECT k.block FROM keys k JOIN topics t ON k.topic = t.id
                    WHERE k.tenant = %s AND k.key = event_key(%s)
                    {"AND t.topic = %s" if self.topic is not None else ""}))"""
            )
            params += [self.tenant, self.event_id]
            if self.topic is not None:
                params.append(self.topic)
        if words:
            search.block_condition(list(self.words), where, params)


@dataclass(frozen=True)
class EventQuery:
    filters: Filters
    since: datetime | None
    until: datetime | None
    after: Cursor | None
    limit: int
    max_bytes: int  # of the events' payloads; a page holds at least one event
    descending: bool = False  # newest first


async def events_page(
    conn: psycopg.AsyncConnection[Any], q: EventQuery, *, timeout: float | None = None
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """One page of events ordered by ``(timestamp, topic, event_id)`` (or the reverse, with
    ``q.descending``), and the next cursor: at most ``q.limit`` events, and no more payload
    bytes than ``q.max_bytes`` (but one). Only the blocks that can hold the page are opened
    (see :func:`_page_blocks` and :func:`_walk`).

    A page of several statements reads them in one snapshot (a transaction of their own, on a
    connection in autocommit mode), so that all see the same blocks; ``timeout`` (seconds)
    bounds them all together, as the connection's statement timeout bounds one."""
    f = q.filters
    if f.event_id is not None:  # the blocks of the id's keys: a few
        cur = await conn.execute(*await page_sql(conn, q))
        return _page_rows(q, await cur.fetchall())
    # In a transaction of its caller's, the page reads in the caller's snapshot (a savepoint).
    own = conn.info.transaction_status == pq.TransactionStatus.IDLE
    if f.exact:
        # Pipelined: BEGIN and the setup leave with the bound, COMMIT with the page, so a
        # page holds its pooled connection for two round trips, not five (a burst of pages
        # on a small pool waited past the pool's timeout).
        async with conn.pipeline(), conn.transaction():
            for setup in [_SNAPSHOT, _NO_WORKERS] if own else [_NO_WORKERS]:
                await conn.execute(setup)
            cur = await conn.execute(*await page_sql(conn, q))
        return _page_rows(q, await cur.fetchall())
    async with conn.transaction():
        if own:
            await conn.execute(_SNAPSHOT)
        rows = await _walk(conn, q, timeout=timeout)
    return _page_rows(q, rows)


_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
# A bounded page opens few blocks, but the planner takes every block for a thousand events (a
# set-returning function's default) and may start parallel workers, which cost more than the
# page (3 ms against 0.5 on a partition of a million one-event blocks).
_NO_WORKERS = "SET LOCAL max_parallel_workers_per_gather = 0"


async def page_sql(conn: psycopg.AsyncConnection[Any], q: EventQuery) -> tuple[str, list[Any]]:
    """The statement of the page ``q`` asks for, and its parameters. When the page can be
    bounded by its blocks, the bound is read first on ``conn``: given to the statement as
    values, it lets the planner estimate the blocks it leaves (a subquery's result it cannot),
    which keeps the page on an index when a partition holds millions of small blocks."""
    edge: tuple[Any, ...] | None = None
    bound = _page_bound(q)
    if bound is not None:
        edge = await (await conn.execute(*bound)).fetchone()
    blocks, blocks_params = _page_blocks(q, edge)
    return _page_statement(q, blocks, blocks_params, limit=q.limit + 1, max_bytes=q.max_bytes)


def _page_statement(
    q: EventQuery,
    blocks: list[str],
    blocks_params: list[Any],
    *,
    limit: int,
    max_bytes: int,
    where: tuple[list[str], list[Any]] = ([], []),
) -> tuple[str, list[Any]]:
    """The statement of the first ``limit`` events of ``q``'s page in the blocks that meet
    ``blocks`` (and the events that meet ``where``), cut to ``max_bytes`` (but one)."""
    conditions: list[str] = ["TRUE", *where[0]]
    params: list[Any] = list(where[1])
    q.filters.sql(conditions, params)
    for condition, value in (("ts >= %s", q.since), ("ts < %s", q.until)):
        if value is not None:
            conditions.append(condition)
            params.append(value)
    topic = q.filters.topic
    beyond, direction = ("<", " DESC") if q.descending else (">", "")
    if q.after is not None:
        if topic is not None:
            conditions.append(f"(ts, event_id) {beyond} (%s, %s)")
            params += [q.after.ts, q.after.event_id]
        else:
            conditions.append(f"(ts, topic, event_id) {beyond} (%s, %s, %s)")
            params += [q.after.ts, q.after.topic, q.after.event_id]
    order = ", ".join(column + direction for column in _event_key(q))
    # The page's rows come from the blocks it can hold, at most limit; of those only the ones
    # that start within the byte budget leave the server (and one more, which tells that more
    # follow).
    query = f"""
        SELECT topic, event_id, ts, source, body FROM (
          SELECT *, sum(octet_length(body)) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING)
                    - octet_length(body) AS before
          FROM (SELECT topic, event_id, ts, source, payload AS body
                FROM {layout.events_of(" AND ".join(blocks))}
                WHERE {" AND ".join(conditions)} ORDER BY {order} LIMIT %s) page
        ) sized WHERE before <= %s ORDER BY {order}
    """
    return query, [*blocks_params, *params, limit, max_bytes]


def _event_key(q: EventQuery) -> tuple[str, ...]:
    """The columns of an event's key in a page's order."""
    return ("ts", "event_id") if q.filters.topic is not None else ("ts", "topic", "event_id")


# The most events the second stretch of a walk counts ahead (see _walk).
_WALK_MOST = 100_000


async def _walk(
    conn: psycopg.AsyncConnection[Any], q: EventQuery, *, timeout: float | None
) -> list[tuple[Any, ...]]:
    """The rows of a page whose filters some events of a block may fail (``source``, ``q``):
    no bound on its blocks is known ahead, and reading every block the range holds would
    read millions for a word that the first of them hold.

    So the page is read in stretches of its order, three at most. The blocks ahead in the
    page's order are counted until they hold ``limit + 1`` events; the first block beyond them
    begins at a key that ends the stretch: an event before it lies in a block that begins
    before it. The stretch's events that pass the filters are the page's next ones. When they
    do not fill it, the share of events that passed sizes the second stretch (twice what it
    predicts the page needs, at most ``_WALK_MOST`` events); none passing, or the second
    stretch not filling it either, the rest of the range is the last stretch.

    A block that overlaps a stretch's start is read again in that stretch; where thousands of
    blocks share one timestamp, each stretch reads them all. Three stretches bound that to
    three readings of them, and a common word's first page still costs a few blocks."""
    deadline = None if timeout is None else time.monotonic() + timeout
    wanted, spent = q.limit + 1, 0
    ahead: int | None = wanted
    found: list[tuple[Any, ...]] = []
    start: tuple[Any, ...] | None = None
    while True:
        stop = None
        if ahead is not None:
            await _statement_budget(conn, deadline)
            stop = await (await conn.execute(*_walk_stop(q, start, ahead))).fetchone()
        await _statement_budget(conn, deadline)
        blocks, blocks_params, where = _stretch(q, start, stop)
        statement = _page_statement(
            q, blocks, blocks_params, limit=wanted - len(found),
            max_bytes=max(q.max_bytes - spent, 0), where=where,
        )  # fmt: skip
        rows = await (await conn.execute(*statement)).fetchall()
        if rows and start is None:  # the first stretch: its share sizes the second
            ahead = min(_WALK_MOST, 2 * wanted * (wanted - len(rows)) // len(rows) + 1)
        else:
            ahead = None
        found += rows
        spent += sum(len(row[4].encode()) for row in rows)
        if len(found) >= wanted or stop is None or spent > q.max_bytes:
            return found
        start = tuple(stop)


async def _statement_budget(conn: psycopg.AsyncConnection[Any], deadline: float | None) -> None:
    """Give the next statement what is left of the page's time; none left cancels the page
    as PostgreSQL cancels a statement that ran out of it."""
    if deadline is not None:
        left = round((deadline - time.monotonic()) * 1000)
        if left < 1:
            raise psycopg.errors.QueryCanceled("canceling the page: its time ran out")
        await conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(left),))


def _walk_stop(q: EventQuery, start: tuple[Any, ...] | None, ahead: int) -> tuple[str, list[Any]]:
    """The statement of the first key of the first block in the page's order (beginning after
    ``start``) that the blocks before it hold ``ahead`` events ahead of; no row when they hold
    fewer. Only the blocks' columns are read, not their text."""
    where, params, _, _ = _page_ranges(q, words=False)
    first, last = _keys(q)
    near = last if q.descending else first
    direction = " DESC" if q.descending else ""
    if start is not None:
        where.append(f"{_row(near)} {'<' if q.descending else '>'} ({_holes(start)})")
        params += start
    order = ", ".join(c + direction for c in near)
    statement = f"""SELECT {", ".join(near)} FROM (
            SELECT {", ".join(near)}, sum(n) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING)
                   - n AS before
            FROM (SELECT n, {", ".join(near)} FROM blocks WHERE {" AND ".join(where)}
                  ORDER BY {order} LIMIT {ahead + 1}) AS ahead
        ) AS counted WHERE before >= {ahead} ORDER BY {order} LIMIT 1"""
    return statement, params


def _stretch(
    q: EventQuery, start: tuple[Any, ...] | None, stop: tuple[Any, ...] | None
) -> tuple[list[str], list[Any], tuple[list[str], list[Any]]]:
    """The conditions on the blocks and on the events of the stretch of ``q``'s order from the
    key ``start`` (on) to ``stop`` (before), each end open when ``None``."""
    blocks, params, _, _ = _page_ranges(q)
    events: list[str] = []
    events_params: list[Any] = []
    first, last = _keys(q)
    key = _row(_event_key(q))
    span = f"interval '{layout.BLOCK_SPAN}'"
    for bound, at_start in ((start, True), (stop, False)):
        if bound is None:
            continue
        holes = f"({_holes(bound)})"
        # Ascending, a stretch holds the blocks that end at or after its start and begin
        # before its stop; descending, the reverse.
        if at_start != q.descending:
            blocks += [f"{_row(last)} {'>=' if at_start else '>'} {holes}", "max_ts >= %s",
                       f"min_ts > %s::timestamptz - {span}"]  # fmt: skip
            events.append(f"{key} {'>=' if at_start else '>'} {holes}")
        else:
            blocks += [f"{_row(first)} {'<=' if at_start else '<'} {holes}", "min_ts <= %s",
                       f"max_ts < %s::timestamptz + {span}"]  # fmt: skip
            events.append(f"{key} {'<=' if at_start else '<'} {holes}")
        params += [*bound, bound[0], bound[0]]
        events_params += bound
    return blocks, params, (events, events_params)


def _holes(values: tuple[Any, ...]) -> str:
    return ", ".join(["%s"] * len(values))


def _page_rows(
    q: EventQuery, rows: list[tuple[Any, ...]]
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """The events of a page's rows, cut to its byte budget, and the next cursor."""
    page: list[tuple[Any, ...]] = []
    total = 0
    for row in rows[: q.limit]:
        size = len(row[4].encode())
        if page and total + size > q.max_bytes:
            break
        page.append(row)
        total += size
    events = [_event(*row) for row in page]
    after = None
    if len(rows) > len(page):
        topic, event_id, ts, _, _ = page[-1]
        after = Cursor(ts, topic, event_id, q.descending)
    return events, after


def _keys(q: EventQuery) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The columns of a block's first and last keys in a page's order: ``(ts, topic,
    event_id)``, or ``(ts, event_id)`` within a topic."""
    if q.filters.topic is not None:
        return ("min_ts", "first_id"), ("max_ts", "last_id")
    return ("min_ts", "topic", "first_id"), ("max_ts", "topic", "last_id")


def _page_blocks(q: EventQuery, edge: tuple[Any, ...] | None) -> tuple[list[str], list[Any]]:
    """The conditions on the blocks that can hold events of the page ``q`` asks for.

    A page is ordered by key, ``(ts, topic, event_id)`` (``(ts, event_id)`` within a topic). A
    block's events lie between its first key, ``(min_ts, topic, first_id)``, and its last,
    ``(max_ts, topic, last_id)``. So beyond the filters: the blocks that overlap the time range
    and reach past the cursor, and, given the ``edge`` that :func:`_page_bound` found, not the
    blocks that start beyond it."""
    where, params, _, _ = _page_ranges(q)
    if edge is not None:
        first, last = _keys(q)
        span = f"interval '{layout.BLOCK_SPAN}'"
        holes = _holes(edge)
        if q.descending:
            where += [f"{_row(last)} >= ({holes})", f"min_ts > %s::timestamptz - {span}"]
        else:
            where += [f"{_row(first)} <= ({holes})", f"max_ts < %s::timestamptz + {span}"]
        params += [*edge, edge[0]]
    return where, params


def _page_ranges(
    q: EventQuery, *, words: bool = True
) -> tuple[list[str], list[Any], list[str], list[Any]]:
    """The conditions on the blocks that overlap the page's range and reach past its cursor,
    and those on the blocks that lie wholly within the range and past the cursor, each with
    their parameters (with the words of a search unless ``words`` is false)."""
    where: list[str] = []
    params: list[Any] = []
    q.filters.blocks_sql(where, params, words=words)
    wholly = list(where)
    wholly_params = list(params)
    first, last = (_row(columns) for columns in _keys(q))
    # Each condition on one end of a block comes with the one it implies on the other (a
    # block spans less than BLOCK_SPAN), so that an index on either column bounds the scan.
    span = f"interval '{layout.BLOCK_SPAN}'"
    if q.since is not None:
        where += ["max_ts >= %s", f"min_ts > %s::timestamptz - {span}"]
        params += [q.since, q.since]
        wholly.append("min_ts >= %s")
        wholly_params.append(q.since)
    if q.until is not None:
        where += ["min_ts < %s", f"max_ts < %s::timestamptz + {span}"]
        params += [q.until, q.until]
        wholly.append("max_ts < %s")
        wholly_params.append(q.until)
    if q.after is not None:
        c = q.after
        by_topic = q.filters.topic is not None
        key = [c.ts, c.event_id] if by_topic else [c.ts, c.topic, c.event_id]
        cursor = "(%s, %s)" if by_topic else "(%s, %s, %s)"
        if q.descending:
            where += [f"{first} < {cursor}", "min_ts <= %s", f"max_ts < %s::timestamptz + {span}"]
            wholly.append(f"{last} < {cursor}")
        else:
            where += [f"{last} > {cursor}", "max_ts >= %s", f"min_ts > %s::timestamptz - {span}"]
            wholly.append(f"{first} > {cursor}")
        params += [*key, c.ts, c.ts]
        wholly_params += key
    return where, params, wholly, wholly_params


def _row(columns: tuple[str, ...]) -> str:
    return f"({', '.join(columns)})"


def _page_bound(q: EventQuery) -> tuple[str, list[Any]] | None:
    """The statement that finds where the page ``q`` ends among its blocks, when every event
    of a block passes the filters that are not about blocks (no ``source``, ``q`` or id);
    ``None`` otherwise.

    The first blocks in the page's order that lie wholly within the range and past the cursor
    and hold ``limit + 1`` events or more end the page by their edge: ascending, the greatest
    last key among them; descending, the least first key. A block that starts beyond it is
    not opened. The statement gives the edge's columns, or no row when there are fewer such
    events."""
    if not q.filters.exact:
        return None
    _, _, wholly, params = _page_ranges(q)
    wanted = q.limit + 1
    first, last = _keys(q)
    near, edge = (last, first) if q.descending else (first, last)
    direction = "DESC" if q.descending else "ASC"
    order = ", ".join(f"{c} {direction}" for c in (*near, "id"))
    edge_order = ", ".join(f"{c} {'ASC' if q.descending else 'DESC'}" for c in edge)
    statement = f"""SELECT {", ".join(edge)} FROM (
            SELECT {", ".join(edge)}, sum(n) OVER (ORDER BY {order}) - n AS before,
                   sum(n) OVER () AS total
            FROM (SELECT n, min_ts, max_ts, topic, first_id, last_id, id FROM blocks
                  WHERE {" AND ".join(wholly)} ORDER BY {order} LIMIT {wanted}) AS ahead
        ) AS counted WHERE before < {wanted} AND total >= {wanted}
        ORDER BY {edge_order} LIMIT 1"""
    return statement, params


def _event(topic: str, event_id: str, ts: datetime, source: str, payload: str) -> dict[str, Any]:
    """An event in the shape it was sent; the payload's text goes out as stored."""
    return {
        "topic": topic,
        "event_id": event_id,
        "timestamp": rfc3339(ts),
        "source": source,
        "payload": orjson.Fragment(payload),
    }


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


# A stream reads only what transactions older than every running one stored: those have all
# ended, so nothing can appear behind its position later (a transaction that commits after a
# younger one would otherwise be skipped). The price: a write transaction that stays open
# holds the stream back until it ends.
#
# One statement, so one snapshot, gives the events and the horizon that snapshot saw. It scans
# at most ``scan`` rows in the stream's order and returns those that match the filters (the
# first ``limit``, and no more bytes than ``max_bytes`` and one event), the last row scanned,
# and the horizon with the number of rows scanned. A filter that matches little thus costs
# ``scan`` rows per read, never a scan from the position to the head; a read that took fewer
# than matched goes on after the last it took next time; and a read that scanned
# everything up to the horizon moves the position there, so the next one starts at the head.
#
# A block's events were stored by transactions from its ``txid`` to its ``last_txid`` (more
# than one once merged, see consumer.merge). The blocks whose first transaction comes after
# the position, taken in that order until they hold ``scan`` events, end the scan at the
# (transaction, topic) of the last of them: the bound. Every event up to the bound lies in a
# block that starts at or before it and ends at or after the position, so opening those blocks
# and keeping their events up to the bound misses none.
_STREAM_READ = """
WITH horizon AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
bound AS MATERIALIZED (
  SELECT txid, topic FROM (
    SELECT txid, topic, sum(n) OVER (ORDER BY txid, topic, id) AS upto
    FROM (SELECT txid, topic, id, n FROM blocks
          WHERE txid > %(txid)s::text::xid8 AND txid < (SELECT xmin FROM horizon) {blocks}
          ORDER BY txid, topic, id LIMIT %(scan)s) AS first
  ) AS counted WHERE upto >= %(scan)s ORDER BY txid, topic LIMIT 1
),
scanned AS MATERIALIZED (
  SELECT txid, topic, event_id, ts, source, payload FROM {events}
  WHERE (txid, topic, event_id) > (%(txid)s::text::xid8, %(topic)s, %(event_id)s)
    AND txid < (SELECT xmin FROM horizon)
    AND (txid, topic) <= ALL (SELECT txid, topic FROM bound)
  ORDER BY txid, topic, event_id LIMIT %(scan)s
),
matched AS (
  SELECT txid, topic, event_id, ts, source, payload AS body FROM scanned
  WHERE TRUE {filters} ORDER BY txid, topic, event_id LIMIT %(limit)s
),
sized AS (
  SELECT *, sum(octet_length(body)) OVER (ORDER BY txid, topic, event_id
                                          ROWS UNBOUNDED PRECEDING) - octet_length(body) AS before
  FROM matched
)
SELECT 'e', txid::text, topic, event_id, ts, source, body FROM sized WHERE before <= %(bytes)s
UNION ALL
(SELECT 'l', txid::text, topic, event_id, NULL, NULL, NULL FROM scanned
 ORDER BY txid DESC, topic DESC, event_id DESC LIMIT 1)
UNION ALL
SELECT 'h', xmin::text, (SELECT count(*) FROM scanned)::text, (SELECT count(*) FROM matched)::text,
       NULL, (SELECT count(*) FROM bound)::text, NULL
FROM horizon
"""
# The blocks a stream read opens: begun before the horizon and before the bound, and ending at
# or after the position's transaction. Two index ranges: the blocks that begin from the
# position on (``blocks_txid``), and the merged ones that began before it (``blocks_merged``).
_STREAM_BLOCKS = """txid < (SELECT xmin FROM horizon)
    AND (txid >= %(txid)s::text::xid8
         OR (last_txid <> txid AND last_txid >= %(txid)s::text::xid8))
    AND (txid, topic) <= ALL (SELECT txid, topic FROM bound)"""


def _named(text: str, values: list[Any], params: dict[str, Any], names: Iterator[int]) -> str:
    """``text`` with its ``%s`` placeholders named, their values put in ``params``."""
    parts = text.split("%s")
    out = [parts[0]]
    for part, value in zip(parts[1:], values, strict=True):
        name = f"f{next(names)}"
        params[name] = value
        out.append(f"%({name})s{part}")
    return "".join(out)


# The live head: transactions from the oldest one still running on are still to be read.
_STREAM_HEAD = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
# The first transaction that stored an event of a tenant received at or after a time. Not the
# transaction of the earliest received block: consumers store concurrently, so a block
# received later may be stored by an earlier transaction, whose events a stream must not skip.
# The planner walks ``blocks_txid`` when most blocks qualify, ``blocks_received`` when few do.
_STREAM_SINCE = """
SELECT min(txid)::text FROM blocks WHERE tenant = %s AND received >= %s
"""


async def stream_start(
    conn: psycopg.AsyncConnection[Any], since: datetime | None, *, tenant: int = layout.TENANT
) -> StreamCursor:
    """Where a new stream of ``tenant`` begins: before every event received at or after
    ``since``, or at the live head (what is stored from now on)."""
    row = None
    if since is not None:
        cur = await conn.execute(_STREAM_SINCE, (tenant, since))
        row = await cur.fetchone()
    if row is None or row[0] is None:
        cur = await conn.execute(_STREAM_HEAD)
        row = await cur.fetchone()
    txid = int(row[0]) if row else 0
    return StreamCursor.at(txid)


@dataclass(frozen=True)
class StreamEvent:
    """An event of the stream: its position, its source, and its SSE data (the event's
    JSON, made once however many streams send it)."""

    at: StreamCursor
    source: str
    data: str
    payload_at: int  # where the payload's text starts in data (it ends before the last "}")

    @property
    def payload(self) -> str:
        return self.data[self.payload_at : -1]

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class StreamPage:
    """What one read of the stream found, and where the next read starts."""

    events: list[StreamEvent]
    position: StreamCursor
    caught_up: bool  # the read reached the live head: nothing after it is visible yet


async def stream_read(
    conn: psycopg.AsyncConnection[Any],
    after: StreamCursor,
    filters: Filters,
    *,
    limit: int,
    max_bytes: int,
    scan: int,
) -> StreamPage:
    """Events stored after ``after`` in the order they became visible: at most ``limit`` of
    them, of at most ``max_bytes`` together (or one event), found among ``scan`` rows."""
    params: dict[str, Any] = {
        "txid": str(after.txid), "topic": after.topic, "event_id": after.event_id,
        "scan": scan, "limit": limit, "bytes": max_bytes,
    }  # fmt: skip
    where: list[str] = []
    values: list[Any] = []
    filters.sql(where, values)
    blocks: list[str] = []
    blocks_values: list[Any] = []
    filters.blocks_sql(blocks, blocks_values)
    # Named parameters throughout: the filters' own become f0, f1, ...
    names = iter(range(len(blocks_values) + len(values)))
    blocks_sql = _named(" AND ".join(blocks), blocks_values, params, names)
    filters_sql = _named("".join(f" AND {w}" for w in where), values, params, names)
    query = _STREAM_READ.format(
        blocks=f"AND {blocks_sql}",
        events=layout.events_of(f"{_STREAM_BLOCKS} AND {blocks_sql}"),
        filters=filters_sql,
    )
    cur = await conn.execute(query, params)
    found: list[StreamEvent] = []
    last: StreamCursor | None = None
    horizon, scanned, matched, bounded = 0, 0, 0, False
    for kind, txid, topic, event_id, ts, source, body in await cur.fetchall():
        if kind == "e":
            at = StreamCursor(int(txid), topic, event_id)
            data = orjson.dumps(_event(topic, event_id, ts, source, body)).decode()
            found.append(StreamEvent(at, source, data, len(data) - len(body) - 1))
        elif kind == "l":
            last = StreamCursor(int(txid), topic, event_id)
        else:
            horizon, scanned, matched, bounded = int(txid), int(topic), int(event_id), source != "0"
    found.sort(key=lambda e: e.at)
    events: list[StreamEvent] = []
    total = 0
    for event in found:
        if len(events) == limit or (events and total + event.size > max_bytes):
            break
        events.append(event)
        total += event.size
    if len(events) < matched or len(events) == limit:
        # Cut by count or bytes: more may match; go on right after what was taken.
        return StreamPage(events, events[-1].at, caught_up=False)
    if (scanned == scan or bounded) and last is not None:
        # The scan ended before the head: at its count, or at the bound (merged blocks may
        # hold fewer events up to it than their counts say, never none: see _STREAM_READ).
        return StreamPage(events, last, caught_up=False)
    return StreamPage(events, max(after, StreamCursor.at(horizon)), caught_up=True)


# One statement, so one snapshot: the counters and the topics agree with each other. The
# consumers keep ``topics`` in the transactions that store events, so listing them is one short
# index scan however many events and topics there are.
_COUNTS = """
SELECT coalesce(sum(received), 0), coalesce(sum(unique_processed), 0),
       coalesce(sum(duplicate_dropped), 0), coalesce(sum(expired), 0),
       (SELECT count(*) FROM topics WHERE tenant = %(tenant)s),
       ARRAY(SELECT topic FROM topics WHERE tenant = %(tenant)s ORDER BY topic LIMIT %(limit)s)
FROM counters WHERE tenant = %(tenant)s
"""


@dataclass(frozen=True)
class Counts:
    received: int
    unique_processed: int
    duplicate_dropped: int
    expired: int
    topic_count: int
    topics: list[str]
    topics_truncated: bool

    @property
    def stored(self) -> int:
        """Events stored now: every unique one, less those the retention removed."""
        return self.unique_processed - self.expired


async def counts(
    conn: psycopg.AsyncConnection[Any], *, max_topics: int, tenant: int = layout.TENANT
) -> Counts:
    """What ``tenant`` stored, received and dropped, and its topics."""
    cur = await conn.execute(_COUNTS, {"tenant": tenant, "limit": max_topics + 1})
    row = await cur.fetchone()  # sums always give one row
    if row is None:
        raise RuntimeError("the counters query returned no row")
    received, unique, duplicate, expired, topic_count = (int(v) for v in row[:5])
    topics = list(row[5])
    return Counts(
        received, unique, duplicate, expired, topic_count,
        topics[:max_topics], len(topics) > max_topics,
    )  # fmt: skip
