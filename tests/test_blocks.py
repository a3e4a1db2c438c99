"""The block layout against the real PostgreSQL (see pubsub/layout.py): every read gives what a
row per event gave, in the same order, however the events fall into blocks; and a page opens
only the blocks it needs.

Events are stored through the consumer's store in several batches, so that one timestamp, one
topic and one hour are spread over many blocks: the cases where a block's bounds alone do not
order the events.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
import pytest_asyncio

from consumer.store import Store, copy_rows
from pubsub import layout
from pubsub.settings import Settings
from readapi import queries
from tests.fix_services import private_settings
from tests.support import db_connection, stream_to_head

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Key = tuple[str, str]  # (topic, event_id)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def own(amqp_url: str, database_url: str) -> Iterator[Settings]:
    with private_settings(amqp_url, database_url, prefix="blk") as s:
        yield s


@pytest_asyncio.fixture
async def conn(own: Settings) -> AsyncIterator[Conn]:
    async with await db_connection(own) as c:
        yield c


async def store(settings: Settings, batches: list[list[dict[str, Any]]]) -> None:
    s = Store(settings, shard=3)
    try:
        for n, batch in enumerate(batches):
            events = orjson.loads(orjson.dumps(batch))
            await s.store([(f"unit-{n}", copy_rows(events, datetime.now(UTC).isoformat()))])
    finally:
        await s.close()


def event(topic: str, event_id: str, ts: datetime) -> dict[str, Any]:
    return {
        "topic": topic,
        "event_id": event_id,
        "timestamp": ts.isoformat(),
        "source": "blocks",
        "payload": {"id": event_id},
    }


@pytest.fixture
def ties() -> list[list[dict[str, Any]]]:
    """600 events in 12 batches over 3 topics: half of them at one timestamp, the rest within
    a second of it or an hour and more away, in random order."""
    rng = random.Random(31)
    events = []
    for n in range(600):
        if n % 2:
            ts = T0
        elif n % 3:
            ts = T0 + timedelta(milliseconds=rng.randrange(-999, 1000))
        else:
            ts = T0 + timedelta(hours=rng.randrange(-3, 4), seconds=rng.randrange(3600))
        events.append(event(f"t{n % 3}", f"e{rng.randrange(10**6):06d}-{n}", ts))
    rng.shuffle(events)
    return [events[i : i + 50] for i in range(0, 600, 50)]


def order(batches: list[list[dict[str, Any]]], *, topic: str | None) -> list[Key]:
    """The events as /events orders them: by timestamp, topic, event id (the database's
    collation of these ids is byte order: ASCII letters, digits and a dash)."""
    events = [e for b in batches for e in b if topic is None or e["topic"] == topic]
    events.sort(key=lambda e: (datetime.fromisoformat(e["timestamp"]), e["topic"], e["event_id"]))
    return [(e["topic"], e["event_id"]) for e in events]


async def walk(
    conn: Conn, filters: queries.Filters, *, limit: int, descending: bool, **window: Any
) -> list[Key]:
    found: list[Key] = []
    after: queries.Cursor | None = None
    since, until = window.get("since"), window.get("until")
    for _ in range(10_000):
        q = queries.EventQuery(filters, since, until, after, limit, 1 << 20, descending)
        events, after = await queries.events_page(conn, q)
        found += [(e["topic"], e["event_id"]) for e in events]
        if after is None:
            return found
    raise AssertionError("the pages did not end")


@pytest.mark.parametrize("limit", [1, 7, 100])
@pytest.mark.parametrize("descending", [False, True])
async def test_pages_give_every_event_once_in_order_across_blocks(
    own: Settings, conn: Conn, ties: list[list[dict[str, Any]]], limit: int, descending: bool
) -> None:
    await store(own, ties)
    row = await (await conn.execute("SELECT count(*), sum(n) FROM blocks")).fetchone()
    assert row is not None and row[0] > 36 and row[1] == 600  # many blocks share a timestamp
    for topic in (None, "t1"):
        expected = order(ties, topic=topic)
        if descending:
            expected.reverse()
        found = await walk(conn, queries.Filters(topic=topic), limit=limit, descending=descending)
        assert found == expected, (topic, limit, descending)


async def test_a_time_window_and_a_cursor_inside_it(
    own: Settings, conn: Conn, ties: list[list[dict[str, Any]]]
) -> None:
    await store(own, ties)
    since, until = T0, T0 + timedelta(hours=1)
    expected = [
        k
        for k, e in zip(order(ties, topic=None), sorted_events(ties), strict=True)
        if since <= datetime.fromisoformat(e["timestamp"]) < until
    ]
    for descending in (False, True):
        found = await walk(
            conn, queries.Filters(), limit=9, descending=descending, since=since, until=until
        )
        assert found == (expected[::-1] if descending else expected)


def sorted_events(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    events = [e for b in batches for e in b]
    events.sort(key=lambda e: (datetime.fromisoformat(e["timestamp"]), e["topic"], e["event_id"]))
    return events


async def test_a_page_opens_only_the_blocks_it_needs(own: Settings, conn: Conn) -> None:
    """2,000 events at one timestamp in one topic, in 40 blocks: a page of 10 deep in them
    opens a block or two, not all 40 (a row per event read its index; blocks must not read
    every tie)."""
    batches = [[event("same", f"id-{b:02d}-{i:02d}", T0) for i in range(50)] for b in range(40)]
    await store(own, batches)
    everything = order(batches, topic="same")
    middle = queries.Cursor(T0, "same", everything[1000][1])
    for filters in (queries.Filters(topic="same"), queries.Filters()):
        q = queries.EventQuery(filters, None, None, middle, 10, 1 << 20)
        events, _ = await queries.events_page(conn, q)
        assert [("same", e["event_id"]) for e in events] == everything[1001:1011]
        opened = await blocks_opened(conn, q)
        assert opened <= 2, (filters, opened)


async def test_a_page_among_many_small_blocks_reads_only_its_own_from_the_table(
    own: Settings, conn: Conn
) -> None:
    """2,000 one-event blocks over one hour (each of its own topic): the blocks near a cursor
    deep in them overlap the hour before it by their span, yet a page of 10 there reads about
    its own blocks from the table, in both orders; the rest are passed over in an index."""
    batch = [
        event(f"t{i:04d}", f"id-{i:04d}", T0 + timedelta(seconds=i * 1.5)) for i in range(2000)
    ]
    await store(own, [batch])
    await conn.execute("ANALYZE blocks")
    everything = order([batch], topic=None)
    for descending in (False, True):
        keys = everything[::-1] if descending else everything
        at = 1000
        topic, event_id = keys[at]
        ts = T0 + timedelta(seconds=int(event_id.removeprefix("id-")) * 1.5)
        q = queries.EventQuery(
            queries.Filters(), None, None, queries.Cursor(ts, topic, event_id, descending), 10,
            1 << 20, descending,
        )  # fmt: skip
        events, _ = await queries.events_page(conn, q)
        assert [(e["topic"], e["event_id"]) for e in events] == keys[at + 1 : at + 11]
        # Sequential scans are off: the question is what the best index scan must read.
        await conn.execute("SET enable_seqscan = off")
        try:
            read = await blocks_read(conn, q)
        finally:
            await conn.execute("RESET enable_seqscan")
        assert read <= 40, (descending, read)


async def blocks_read(conn: Conn, q: queries.EventQuery) -> int:
    """How many blocks a page's query fetches from the table (and then keeps or filters out),
    by its plan's scans of the blocks' partitions."""

    def read(node: dict[str, Any]) -> int:
        own = 0
        if node.get("Relation Name", "").startswith("blocks"):
            own = int(node["Actual Rows"]) + int(node.get("Rows Removed by Filter", 0))
            own *= int(node["Actual Loops"])
        return own + sum(read(child) for child in node.get("Plans", []))

    return read(await page_plan(conn, q))


async def blocks_opened(conn: Conn, q: queries.EventQuery) -> int:
    """How many blocks a page's query decodes: the rows ``string_to_table`` was called for."""

    return decoded(await page_plan(conn, q))


async def page_plan(conn: Conn, q: queries.EventQuery) -> dict[str, Any]:
    """The plan of a page's statement as it ran: ``EXPLAIN ANALYZE``'s top node."""
    query, params = await queries.page_sql(conn, q)
    cur = await conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", params)
    row = await cur.fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else orjson.loads(row[0])
    node: dict[str, Any] = plan[0]["Plan"]
    return node


@pytest.mark.parametrize("limit", [1, 7, 100])
@pytest.mark.parametrize("descending", [False, True])
async def test_search_and_source_pages_give_every_match_once_in_order(
    own: Settings, conn: Conn, ties: list[list[dict[str, Any]]], limit: int, descending: bool
) -> None:
    """Filters that some events of a block fail are read in stretches (queries._walk): every
    match comes once, in order, whatever the page size, both ways, with or without a window."""
    for n, e in enumerate(e for b in ties for e in b):
        e["source"] = "odd" if n % 2 else "even"
    await store(own, ties)
    events = sorted_events(ties)
    window = {"since": T0 - timedelta(seconds=1), "until": T0 + timedelta(hours=2)}
    for filters, passes in (
        (queries.Filters(source="odd"), lambda e: e["source"] == "odd"),
        (queries.Filters(words=("7",)), lambda e: "7" in e["event_id"]),
        (queries.Filters(topic="t1", words=("e",), source="even"),
         lambda e: e["topic"] == "t1" and e["source"] == "even"),
    ):  # fmt: skip
        for bounds in ({}, window):
            expected = [
                (e["topic"], e["event_id"])
                for e in events
                if passes(e)
                and bounds.get("since", T0 - timedelta(days=1))
                <= datetime.fromisoformat(e["timestamp"])
                < bounds.get("until", T0 + timedelta(days=1))
            ]
            if descending:
                expected.reverse()
            assert 0 < len(expected) < 600
            found = await walk(conn, filters, limit=limit, descending=descending, **bounds)
            assert found == expected, (filters, bounds, limit, descending)


async def test_a_search_page_opens_the_blocks_of_its_stretch_once(
    own: Settings, conn: Conn
) -> None:
    """2,000 one-event blocks: a page of 10 of a source every event has opens about its own
    blocks, not all 2,000; one whose only event comes last opens each block once, not once per
    stretch."""
    batch = [
        event(f"t{i:04d}", f"id-{i:04d}", T0 + timedelta(seconds=i * 1.5)) for i in range(2000)
    ]
    batch[-1]["source"] = "rare"
    await store(own, [batch])
    await conn.execute("ANALYZE blocks")
    for source, most in (("blocks", 30), ("rare", 2100)):
        q = queries.EventQuery(queries.Filters(source=source), None, None, None, 10, 1 << 20)
        events, opened = await opening(conn, q)
        assert len(events) == (10 if source == "blocks" else 1)
        assert opened <= most, (source, opened)


async def test_a_search_page_is_cancelled_when_its_statements_ran_out_of_time(
    own: Settings, conn: Conn
) -> None:
    """The statements of a page share one timeout: what is left of it bounds the next one."""
    await store(own, [[event("t", f"id-{i}", T0) for i in range(20)]])
    q = queries.EventQuery(queries.Filters(source="none"), None, None, None, 10, 1 << 20)
    with pytest.raises(psycopg.errors.QueryCanceled):
        await queries.events_page(conn, q, timeout=0)
    await conn.execute("SELECT pg_sleep(0.02)")  # not cancelled: the timeout was the page's
    assert await queries.events_page(conn, q, timeout=5) == ([], None)


async def opening(conn: Conn, q: queries.EventQuery) -> tuple[list[dict[str, Any]], int]:
    """A page's events, and how many blocks all of its statements decoded together (their
    plans as they ran, sent back by auto_explain)."""
    plans: list[dict[str, Any]] = []

    def notice(diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if '"Plan"' in text:
            plans.append(orjson.loads(text[text.index("{") :]))

    await conn.execute("LOAD 'auto_explain'")
    for setting, value in (
        ("log_min_duration", "0"), ("log_analyze", "on"), ("log_timing", "off"),
        ("log_format", "json"), ("log_level", "notice"),
    ):  # fmt: skip
        await conn.execute(f"SET auto_explain.{setting} = {value}")
    conn.add_notice_handler(notice)
    try:
        events, _ = await queries.events_page(conn, q)
    finally:
        conn.remove_notice_handler(notice)
        await conn.execute("SET auto_explain.log_min_duration = -1")
    assert plans
    return events, sum(decoded(plan["Plan"]) for plan in plans)


def decoded(node: dict[str, Any]) -> int:
    """How many blocks a plan's node and those under it split into events."""
    own = int(node["Actual Loops"]) if node.get("Function Name") == "string_to_table" else 0
    return own + sum(decoded(child) for child in node.get("Plans", []))


async def test_lookups_by_id_find_the_one_block(own: Settings, conn: Conn) -> None:
    batches = [[event(f"t{i % 2}", f"same-{i // 2}", T0) for i in range(40)]]
    await store(own, batches)
    for filters, found in (
        (queries.Filters(event_id="same-3"), [("t0", "same-3"), ("t1", "same-3")]),
        (queries.Filters(topic="t1", event_id="same-3"), [("t1", "same-3")]),
        (queries.Filters(topic="t2", event_id="same-3"), []),
        (queries.Filters(event_id="absent"), []),
    ):
        assert await walk(conn, filters, limit=10, descending=False) == found


async def test_uuid_and_other_ids_have_distinct_keys(own: Settings, conn: Conn) -> None:
    """A UUID's key is its 16 bytes, another id's its text: ids that would meet if either were
    taken for the other stay apart, and a UUID in another spelling is another id."""
    u = "0123abcd-4567-89ef-0123-456789abcdef"
    ids = [u, u.upper(), u.replace("-", ""), "{" + u + "}", "x" * 16, "e"]
    await store(own, [[event("k", i, T0) for i in ids]])
    await store(own, [[event("k", i, T0) for i in ids]])  # all duplicates now
    cur = await conn.execute("SELECT count(*), count(DISTINCT key) FROM keys")
    assert await cur.fetchone() == (len(ids), len(ids))
    found = await walk(conn, queries.Filters(topic="k"), limit=100, descending=False)
    assert sorted(i for _, i in found) == sorted(ids)


async def test_the_stream_gives_every_event_once_in_storing_order(
    own: Settings, conn: Conn, ties: list[list[dict[str, Any]]]
) -> None:
    start = await queries.stream_start(conn, None)
    await store(own, ties)
    streamed = await stream_to_head(conn, start, scan=61, limit=37)
    assert streamed == sorted(streamed)
    assert sorted((c.topic, c.event_id) for c in streamed) == sorted(order(ties, topic=None))


async def test_the_consumers_keys_are_the_databases(conn: Conn) -> None:
    """``pubsub.layout.event_key`` (the consumers') and the SQL function ``event_key`` (reads,
    retention, imports) give every id the same key."""
    u = "0123abcd-4567-89ef-0123-456789abcdef"
    ids = [u, u.upper(), u[:-1] + "g", u + " ", " " + u, u.replace("-", "_"), "é" * 18, "x", "👍"]
    ids += [str(uuid.UUID(int=random.Random(n).getrandbits(128))) for n in range(20)]
    cur = await conn.execute(
        "SELECT encode(event_key(i), 'hex') FROM unnest(%s::text[]) WITH ORDINALITY AS u(i, n)"
        " ORDER BY n",
        (ids,),
    )
    assert [k for (k,) in await cur.fetchall()] == [layout.event_key(i).hex() for i in ids]


async def test_a_stream_since_a_time_starts_before_every_event_received_since(
    own: Settings, conn: Conn
) -> None:
    """Consumers store concurrently: a message received later may be stored by an earlier
    transaction. A stream started ``since`` a time must begin before both."""
    now = datetime.now(UTC)
    later, earlier = (now - timedelta(seconds=s) for s in (10, 20))
    s = Store(own, shard=1)
    try:
        for at, name in ((later, "later"), (earlier, "earlier")):
            events = [event("since", name, T0)]
            await s.store([(f"unit-{name}", copy_rows(events, at.isoformat()))])
    finally:
        await s.close()
    start = await queries.stream_start(conn, now - timedelta(seconds=30))
    streamed = await stream_to_head(conn, start, scan=10, limit=10)
    assert [c.event_id for c in streamed] == ["later", "earlier"]  # in storing order
