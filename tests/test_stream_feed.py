"""What the live stream costs: one shared look for new events per read API, reads bounded by
rows and bytes, and positions that move to the head when nothing matched."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import uuid
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from consumer.store import Store
from pubsub import database
from pubsub.settings import Settings
from readapi import feed, queries
from stack.supervisor import Supervisor
from tests.fix_stack import StackFactory
from tests.support import delete_topology, event, eventually, horizon_passed, post_json, take
from tests.test_store import rows
from tests.test_stream import DEADLINE, opened


async def stream_reads(http: aiohttp.ClientSession, stack: Supervisor) -> float:
    """Reads of PostgreSQL for the live streams so far, by the feed and by streams alike."""
    async with http.get(f"{stack.read_url}/metrics") as resp:
        text = await resp.text()
    found = re.findall(r'^pubsub_readapi_stream_reads_total\{by="\w+"\} (\S+)$', text, re.M)
    assert found, "the read API exports no pubsub_readapi_stream_reads_total"
    return sum(float(n) for n in found)


async def reads_within(http: aiohttp.ClientSession, stack: Supervisor, seconds: float) -> float:
    before = await stream_reads(http, stack)
    await asyncio.sleep(seconds)  # a measuring window, not a synchronisation
    return await stream_reads(http, stack) - before


async def test_idle_streams_share_one_look_for_new_events(
    own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = own_stack(consumers=0, stream_poll_interval=0.1, stream_max_clients=80)
    stack.start("readapi")
    topic = f"idle-{uuid.uuid4().hex[:8]}"
    async with opened(http, stack.read_url, topic=topic):
        one = await reads_within(http, stack, 2.0)
        async with contextlib.AsyncExitStack() as more:
            for i in range(60):
                await more.enter_async_context(opened(http, stack.read_url, topic=f"{topic}-{i}"))
            await asyncio.sleep(0.5)  # let the new streams reach the head and join
            sixty_one = await reads_within(http, stack, 2.0)
    # About 20 looks in 2 s either way; 61 streams polling each for itself would make ~1,200.
    # About 20 looks in 2 s at 0.1 s: fewer on a busy machine, never many more.
    assert 1 <= one <= 30, one
    assert sixty_one <= one * 1.5 + 5, (one, sixty_one)


async def stored_txids(db: psycopg.Connection[Any], topic: str) -> list[int]:
    found = db.execute(
        "SELECT txid::text FROM events WHERE topic = %s ORDER BY txid", (topic,)
    ).fetchall()
    return [int(t) for (t,) in found]


async def test_a_read_that_matches_nothing_moves_its_position_in_bounded_scans(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    topic = f"scan-{uuid.uuid4().hex[:8]}"
    store = Store(settings, shard=7)
    try:
        for n in range(3):  # three transactions of ten events
            await store.store([(f"{topic}-{n}", rows(topic, list(range(n * 10, n * 10 + 10))))])
    finally:
        await store.close()
    txids = await stored_txids(db, topic)
    start = queries.StreamCursor.at(txids[0])
    behind = db.execute(
        "SELECT count(*) FROM events WHERE txid >= %s::text::xid8", (str(txids[0]),)
    ).fetchone()
    assert behind is not None
    conn = await database.connect(settings, autocommit=True)
    try:
        await horizon_passed(conn)
        nobody = queries.Filters(source="nobody")
        position, reads = start, 0
        while True:
            page = await queries.stream_read(
                conn, position, nobody, limit=100, max_bytes=1 << 20, scan=10
            )
            reads += 1
            assert page.events == [] and page.position > position
            position = page.position
            if page.caught_up:
                break
            assert reads <= behind[0] // 10 + 1, "the scan does not move on"
        # At the head: past every stored transaction, and the next read scans nothing new.
        assert position.txid > txids[-1]
        again = await queries.stream_read(conn, position, nobody, limit=100, max_bytes=1, scan=10)
        assert again.caught_up and again.events == [] and again.position >= position

        # The same reads with a filter that matches: every event once, in order, one per read
        # when the byte budget holds less than one.
        mine = queries.Filters(topic=topic)
        position, found = start, []
        for _ in range(200):
            page = await queries.stream_read(conn, position, mine, limit=100, max_bytes=1, scan=7)
            assert len(page.events) <= 1
            found += [orjson.loads(e.data)["event_id"] for e in page.events]
            position = page.position
            if page.caught_up:
                break
        assert found == [f"e{i}" for i in range(30)]
    finally:
        await conn.close()


def _narrow_socket(addr_info: Any) -> socket.socket:
    """A client socket with a small receive window: a reader that pauses stops the writes at
    once, instead of the kernel's buffers taking megabytes for it."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_a_client_behind_the_feed_reads_on_by_itself_without_gap_or_repeat(
    own_stack: StackFactory,
) -> None:
    # A queue of its own: on the shared one, the session's consumers would store some of
    # these batches, in transactions of their own, in whatever order they commit.
    queue = f"pubsub.behind-{uuid.uuid4().hex[:8]}.events"
    stack = own_stack(consumers=1, stream_buffer=50, stream_buffer_bytes=40_000, queue=queue)
    try:
        await _behind_the_feed(stack)
    finally:
        stack.stop_all()
        await delete_topology(stack.settings)


async def _behind_the_feed(stack: Supervisor) -> None:
    stack.start_all()
    topic = f"behind-{uuid.uuid4().hex[:8]}"
    sent = [f"e{n:04d}" for n in range(3000)]
    note = "n" * 2000  # 3,000 events of 2 KB: far more than the sockets' buffers hold
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(socket_factory=_narrow_socket)
        ) as narrow,
        aiohttp.ClientSession() as http,
        opened(narrow, stack.read_url, topic=topic) as stream,
    ):
        for n in range(0, len(sent), 500):
            batch = [event(topic, i, payload={"note": note}) for i in sent[n : n + 500]]
            status, body, _ = await post_json(http, stack.ingest_url, batch)
            assert status == 202, body
        first = await take(stream, 1)

        # The buffer (50 events) overflows while this client pauses: the feed drops it.
        async def dropped() -> float:
            async with http.get(f"{stack.read_url}/metrics") as resp:
                found = re.search(r"^pubsub_readapi_streams_dropped_by_feed_total (\S+)$",
                                  await resp.text(), re.M)  # fmt: skip
            return float(found[1]) if found else 0.0

        await eventually(dropped, lambda n: n >= 1, timeout=DEADLINE, what="the stream dropped")
        rest = await take(stream, len(sent) - 1)
    got = [orjson.loads(m.data)["event_id"] for m in first + rest]
    assert got == sent  # one transaction per request, in order: the stream's order is sent's


async def test_a_query_over_the_statement_timeout_is_cancelled_and_answered_503(
    own_stack: StackFactory, http: aiohttp.ClientSession, settings: Settings
) -> None:
    stack = own_stack(consumers=0, read_statement_timeout=0.5)
    stack.start("readapi")
    conn = await database.connect(settings)
    try:
        # A lock held elsewhere makes any read of the table wait: the timeout cancels it.
        await conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        async with asyncio.timeout(DEADLINE):
            async with http.get(f"{stack.read_url}/events", params={"topic": "x"}) as resp:
                status, body = resp.status, await resp.json()
    finally:
        await conn.rollback()
        await conn.close()
    assert status == 503, body
    assert "PUBSUB_READ_STATEMENT_TIMEOUT" in body["error"]


async def test_pages_end_early_at_their_byte_budget(
    stack: Supervisor, own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    topic = f"bytes-{uuid.uuid4().hex[:8]}"
    text = "x" * 200_000
    big = [event(topic, f"e{i}", payload={"text": text}) for i in range(9)]
    huge = event(topic, "e9", payload={"text": "y" * 700_000})
    status, body, _ = await post_json(http, stack.ingest_url, [*big, huge])
    assert status == 202, body
    reader = own_stack(consumers=0, events_max_bytes=500_000)
    reader.start("readapi")

    async def page(url: str) -> tuple[list[str], str | None]:
        async with http.get(url) as resp:
            assert resp.status == 200
            link = resp.headers.get("Link")
            return [e["event_id"] for e in await resp.json()], link

    stored = f"{stack.read_url}/events?topic={topic}&limit=100"
    await eventually(lambda: page(stored), lambda p: len(p[0]) == 10, timeout=DEADLINE,
                     what="the events stored")  # fmt: skip
    pages, url = [], f"{reader.read_url}/events?topic={topic}&limit=100"
    while url:
        got, link = await page(url)
        pages.append(got)
        match = re.match(r"<([^>]+)>", link or "")
        url = f"{reader.read_url}{match[1]}" if match else ""
    # 200 KB events two to a page of 500 KB; the 700 KB one alone on its page.
    assert pages == [["e0", "e1"], ["e2", "e3"], ["e4", "e5"], ["e6", "e7"], ["e8"], ["e9"]]


async def test_streams_whose_reads_time_out_narrow_then_end_and_events_still_answers(
    own_stack: StackFactory, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    """Every read of the events table waits on a lock past the statement timeout: four streams
    that read by themselves narrow their reads, then end saying why, and meanwhile /events is
    answered by the database (its own timeout), not refused for want of a connection."""
    stack = own_stack(consumers=0, read_statement_timeout=0.5, db_pool_size=4)
    stack.start("readapi")
    behind = {"Last-Event-ID": queries.StreamCursor.at(1).encode()}
    db.execute("BEGIN")
    try:
        db.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        async with contextlib.AsyncExitStack() as streams:
            opened_streams = [
                await streams.enter_async_context(opened(http, stack.read_url, headers=behind))
                for _ in range(4)
            ]
            async with http.get(f"{stack.read_url}/events", params={"limit": "1"}) as resp:
                reply = await resp.json()
            assert resp.status == 503, reply
            assert "PUBSUB_READ_STATEMENT_TIMEOUT" in reply["error"], reply
            for stream in opened_streams:
                async with asyncio.timeout(DEADLINE):
                    last = [msg async for msg in stream][-1]
                assert last.event == "error", last
                assert "PUBSUB_READ_STATEMENT_TIMEOUT" in last.data, last
    finally:
        db.execute("ROLLBACK")
    async with http.get(f"{stack.read_url}/events", params={"limit": "1"}) as resp:
        assert resp.status == 200, await resp.text()


async def test_the_feed_reads_only_the_topics_its_streams_follow(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = uuid.uuid4().hex[:8]
    quiet, busy, late = f"quiet-{run}", f"busy-{run}", f"late-{run}"
    read_topics: list[tuple[str, ...] | None] = []
    joined_during_a_read: list[bool] = []
    late_follower: list[feed.Follower] = []
    real_read = queries.stream_read

    async def spied(*args: Any, **kwargs: Any) -> queries.StreamPage:
        read_topics.append(args[2].topics)
        if late_follower and not joined_during_a_read:
            # A stream of another topic reaching the head while this read is under way: it
            # must wait for the next read, which will include its topic.
            joined_during_a_read.append(the_feed.join(late_follower[0]))
        return await real_read(*args, **kwargs)

    monkeypatch.setattr(queries, "stream_read", spied)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=2,
        kwargs={**database.connect_kwargs(settings), "autocommit": True},
        open=False,
    )
    await pool.open()
    stop = asyncio.Event()
    the_feed = feed.Feed(settings.replace(stream_poll_interval=0.05), pool, stop)
    store = Store(settings, shard=11)
    try:
        async with pool.connection() as conn:
            head = await queries.stream_start(conn, None)
        following = feed.Follower(queries.Filters(topic=quiet), head)
        assert the_feed.join(following)
        await store.store([(f"{busy}-0", rows(busy, list(range(500))))])
        await store.store([(f"{quiet}-0", rows(quiet, [1, 2, 3]))])
        await eventually(
            lambda: _taken(following), lambda got: len(got) == 3, what="the quiet topic's events"
        )
        assert {topics for topics in read_topics} == {(quiet,)}, read_topics
        assert {orjson.loads(e.data)["topic"] for _, e in following.buffer} == {quiet}

        # A follower of another topic, at the feed's position, tries to join during a read.
        assert the_feed.position is not None
        late_follower.append(feed.Follower(queries.Filters(topic=late), the_feed.position))
        await eventually(lambda: _value(joined_during_a_read), bool, what="a join during a read")
        assert joined_during_a_read == [False]

        # Refused, a stream reads on by itself up to the feed's position and tries again; it
        # joins between two reads.
        async def rejoin() -> bool:
            assert the_feed.position is not None
            late_follower[0].position = the_feed.position
            return the_feed.join(late_follower[0])

        await eventually(rejoin, bool, what="a join between reads")
        await store.store([(f"{late}-0", rows(late, [7, 8]))])
        await eventually(
            lambda: _taken(late_follower[0]), lambda got: len(got) == 2, what="the late topic's"
        )
        assert (late, quiet) in read_topics
    finally:
        stop.set()
        await the_feed.close()
        await store.close()
        await pool.close()


async def _taken(follower: feed.Follower) -> list[str]:
    return [orjson.loads(e.data)["event_id"] for _, e in follower.buffer]


async def _value(found: list[bool]) -> list[bool]:
    return found
