"""Merges of small blocks (consumer/merge.py) against the real PostgreSQL: every read gives the
same before and after, the live stream and its positions included, while the blocks become
fewer and larger and never mix topics, hours or partitions."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
import pytest_asyncio

from consumer.merge import Merger, Small, pack
from consumer.store import Store, copy_rows
from pubsub import layout
from pubsub.settings import Settings
from readapi import queries
from tests.fix_services import private_settings
from tests.support import db_connection, eventually, stream_to_head

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def own(amqp_url: str, database_url: str) -> Iterator[Settings]:
    with private_settings(amqp_url, database_url, prefix="mrg", merge_after=0.001) as s:
        yield s


@pytest_asyncio.fixture
async def conn(own: Settings) -> AsyncIterator[Conn]:
    async with await db_connection(own) as c:
        yield c


def trickle(seed: int, batches: int) -> list[list[dict[str, Any]]]:
    """Small batches, as a low rate gives: 1 to 4 events over 3 topics, timestamps in two
    hours, a third of them on one instant; some events sent twice."""
    rng = random.Random(seed)
    out: list[list[dict[str, Any]]] = []
    sent: list[dict[str, Any]] = []
    for b in range(batches):
        batch = []
        for i in range(rng.randint(1, 4)):
            if sent and rng.random() < 0.1:
                batch.append(rng.choice(sent))
                continue
            ts = T0 if rng.random() < 0.3 else T0 + timedelta(seconds=rng.randrange(7200))
            e = {
                "topic": f"t{rng.randrange(3)}",
                "event_id": f"{seed}-{b}-{i}-{rng.randrange(1000)}",
                "timestamp": ts.isoformat(),
                "source": "merge",
                "payload": {"n": b, "text": "x" * rng.randrange(200)},
            }
            batch.append(e)
            sent.append(e)
        out.append(batch)
    return out


async def store(
    settings: Settings, batches: list[list[dict[str, Any]]], *, received: datetime | None = None
) -> None:
    s = Store(settings, shard=5)
    try:
        for batch in batches:
            events = orjson.loads(orjson.dumps(batch))
            at = (received or datetime.now(UTC)).isoformat()
            await s.store([(f"unit-{random.getrandbits(64)}", copy_rows(events, at))])
    finally:
        await s.close()


async def mergeable(conn: Conn) -> int:
    """Runs of small blocks that one merge could join, ignoring age and running transactions."""
    cur = await conn.execute(
        f"""SELECT b.tableoid::bigint, b.tenant, b.topic,
                   {layout.BLOCK_BIN.format(column="b.min_ts")}, b.id, b.n, octet_length(b.events)
            FROM blocks b WHERE b.n < {layout.SMALL_BLOCK} ORDER BY 1, 2, 3, 4, b.id"""
    )
    return len(list(pack([Small(*row) for row in await cur.fetchall()])))


async def merge_all(settings: Settings, conn: Conn, *, scan: int = 20_000) -> None:
    """Merge until nothing is left to merge (a round skips blocks whose storing transaction
    another running transaction may still hide), without the pauses that keep merges gentle."""
    merger = Merger(settings, scan=scan, duty=1.0)
    try:

        async def round_() -> int:
            await merger.merge()
            return await mergeable(conn)

        await eventually(round_, lambda left: left == 0, timeout=30, what="merges done")
    finally:
        await merger.close()


async def reads(conn: Conn) -> dict[str, Any]:
    """What readers see: pages both ways and by topic, lookups, the view's rows."""
    out: dict[str, Any] = {}
    for name, filters, descending in (
        ("asc", queries.Filters(), False),
        ("desc", queries.Filters(), True),
        ("t1", queries.Filters(topic="t1"), False),
    ):
        found: list[Any] = []
        after: queries.Cursor | None = None
        for _ in range(10_000):
            q = queries.EventQuery(filters, None, None, after, 7, 1 << 20, descending)
            events, after = await queries.events_page(conn, q)
            found += events
            if after is None:
                break
        out[name] = orjson.dumps(found)  # payloads are JSON fragments: compare the text
    ids = [e["event_id"] for e in orjson.loads(out["asc"])[::9]]
    out["lookups"] = [
        orjson.dumps((await queries.events_page(
            conn, queries.EventQuery(queries.Filters(event_id=i), None, None, None, 10, 1 << 20)
        ))[0])
        for i in ids
    ]  # fmt: skip
    cur = await conn.execute(
        "SELECT topic, event_id, ts, source, payload::text, received_at, txid FROM events"
        " ORDER BY topic, event_id"
    )
    out["view"] = await cur.fetchall()
    return out


async def blocks(conn: Conn) -> tuple[int, int, int]:
    cur = await conn.execute("SELECT count(*), sum(n), max(n) FROM blocks")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def test_a_merge_changes_no_read(own: Settings, conn: Conn) -> None:
    start = await queries.stream_start(conn, None)
    await store(own, trickle(1, 150))
    before = await reads(conn)
    streamed = await stream_to_head(conn, start, scan=13)
    count, events, _ = await blocks(conn)

    await merge_all(own, conn)

    merged, still, largest = await blocks(conn)
    assert still == events == len(streamed)
    assert merged < count / 4, (count, merged)
    assert largest <= layout.BLOCK_EVENTS
    assert await reads(conn) == before
    # A stream resumed from any position it held before the merge goes on exactly as it would
    # have: the merged blocks hold events of many transactions.
    assert await stream_to_head(conn, start, scan=13) == streamed
    for k in range(0, len(streamed), 17):
        for scan in (1, 5, 300):
            assert await stream_to_head(conn, streamed[k], scan=scan) == streamed[k + 1 :]
    # Every key points to the block that holds its event.
    cur = await conn.execute(
        "SELECT count(*) FROM events e JOIN topics t ON t.topic = e.topic"
        " JOIN keys k ON k.topic = t.id AND k.key = event_key(e.event_id) AND k.block = e.block"
    )
    assert await cur.fetchone() == (events,)


async def test_a_merge_keeps_topics_hours_and_partitions_apart(own: Settings, conn: Conn) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    await store(own, trickle(2, 60), received=yesterday)
    await store(own, trickle(3, 60))
    cur = await conn.execute("SELECT tableoid, sum(n) FROM blocks GROUP BY 1 ORDER BY 1")
    by_partition = await cur.fetchall()
    assert len(by_partition) == 2

    await merge_all(own, conn)

    cur = await conn.execute("SELECT tableoid, sum(n) FROM blocks GROUP BY 1 ORDER BY 1")
    assert await cur.fetchall() == by_partition
    bin_ = layout.BLOCK_BIN
    cur = await conn.execute(
        f"SELECT count(*) FROM blocks WHERE {bin_.format(column='min_ts')}"
        f" <> {bin_.format(column='max_ts')}"
    )
    assert await cur.fetchone() == (0,)
    cur = await conn.execute(
        "SELECT count(*) FROM blocks b, string_to_table(b.events, E'\\n') AS line"
        " WHERE b.topic <> (SELECT e.topic FROM events e"
        "                   WHERE e.block = b.id AND e.event_id = split_part(line, E'\\t', 1))"
    )
    assert await cur.fetchone() == (0,)


async def test_the_stream_stays_exact_while_blocks_merge_and_arrive(
    own: Settings, conn: Conn
) -> None:
    """Stores, merges and stream reads interleaved: the stream gives every event once, in its
    order, whichever blocks it finds them in."""
    start = await queries.stream_start(conn, None)
    merger = Merger(own, duty=1.0)
    at, seen = start, []
    try:
        for round_ in range(12):
            await store(own, trickle(10 + round_, 15))
            await merger.merge()
            for _ in range(random.Random(round_).randint(1, 4)):
                page = await queries.stream_read(
                    conn, at, queries.Filters(), limit=5, max_bytes=1 << 20, scan=7
                )
                seen += [e.at for e in page.events]
                at = page.position
    finally:
        await merger.close()
    seen += await stream_to_head(conn, at, scan=7)
    assert seen == sorted(seen)
    cur = await conn.execute("SELECT topic, event_id FROM events")
    assert sorted((c.topic, c.event_id) for c in seen) == sorted(await cur.fetchall())


async def test_events_sent_again_after_a_merge_are_duplicates(own: Settings, conn: Conn) -> None:
    batches = trickle(4, 80)
    await store(own, batches)
    await merge_all(own, conn)
    count, events, _ = await blocks(conn)
    await store(own, batches)
    assert await blocks(conn) == (count, events, (await blocks(conn))[2])
    cur = await conn.execute(
        "SELECT count(*) FROM keys k WHERE NOT EXISTS (SELECT 1 FROM blocks b WHERE b.id = k.block)"
    )
    assert await cur.fetchone() == (0,)


async def test_rounds_walk_past_blocks_that_have_nothing_to_merge_with(
    own: Settings, conn: Conn
) -> None:
    """Each round looks at a slice of the small blocks, the next one each round: blocks alone
    in their place (one per sparse topic) stored first do not keep the others from merging."""
    alone = [[dict(e, topic=f"sparse-{n}")] for n, e in enumerate(trickle(5, 12)[0] * 12)]
    await store(own, alone)
    await store(own, [[dict(e, topic="busy") for e in b] for b in trickle(6, 30)])
    assert await mergeable(conn) > 0
    await merge_all(own, conn, scan=4)
    # One block per hour of the busy topic's timestamps.
    cur = await conn.execute(
        f"SELECT (SELECT count(*) FROM blocks WHERE topic = 'busy'),"
        f" (SELECT count(DISTINCT {layout.BLOCK_BIN.format(column='ts')}) FROM events"
        f"  WHERE topic = 'busy')"
    )
    row = await cur.fetchone()
    assert row is not None and row[0] == row[1]


def test_pack_joins_runs_of_one_place_within_a_blocks_bounds() -> None:
    def small(topic: str, id_: int, n: int, size: int = 100) -> Small:
        return Small(1, 0, topic, T0, id_, n, size)

    runs = list(pack([
        small("a", 1, 60), small("a", 2, 60), small("a", 3, 60), small("a", 4, 60),
        small("a", 5, 60), small("b", 6, 1), small("c", 7, 3, 1000), small("c", 8, 3, 65_000),
        small("c", 9, 3), small("c", 10, 3),
    ]))  # fmt: skip
    assert [[b.id for b in run] for run in runs] == [[1, 2, 3, 4], [8, 9, 10]]
