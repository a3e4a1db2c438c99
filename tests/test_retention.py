"""Retention against the real PostgreSQL: what a sweep removes, what it keeps, what a re-send
after expiry does, that storage settles instead of growing, and that a consumer sweeps by itself.

Time is simulated with backdated rows: events stored with a ``received_at`` 40 days back are
past a 30-day horizon the moment they are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson
import psycopg
import pytest

from consumer.merge import Merger
from consumer.retention import Sweeper
from consumer.store import Row, Store, copy_rows
from publisher import watch
from pubsub.database import connect_kwargs
from pubsub.settings import Settings
from readapi import queries
from stack.supervisor import Supervisor
from tests.fix_services import private_settings
from tests.support import assert_volume_counts_the_events, eventually

Conn = psycopg.Connection[tuple[object, ...]]


def received(days_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()


def rows(topic: str, ids: list[str], *, days_ago: float) -> list[Row]:
    body = orjson.dumps(
        [
            {
                "topic": topic,
                "event_id": i,
                "timestamp": received(days_ago),
                "source": "tests",
                "payload": {"id": i, "pad": "x" * 200},
            }
            for i in ids
        ]
    )
    return copy_rows(orjson.loads(body), received(days_ago))


@pytest.fixture
def retained(amqp_url: str, database_url: str) -> Iterator[Settings]:
    """A schema of its own with a 30-day retention, swept 100 events per transaction."""
    with private_settings(
        amqp_url, database_url, prefix="ret", retention="30d", retention_batch=100
    ) as s:
        yield s


@pytest.fixture
def conn(retained: Settings) -> Iterator[Conn]:
    with psycopg.connect(retained.database_url, autocommit=True, **connect_kwargs(retained)) as c:
        yield c


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[tuple[Store, Sweeper]]:
    store, sweeper = Store(settings, shard=1), Sweeper(settings)
    try:
        yield store, sweeper
    finally:
        await store.close()
        await sweeper.close()


async def counts(settings: Settings) -> queries.Counts:
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, **connect_kwargs(settings)
    ) as c:
        return await queries.counts(c, max_topics=100)


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


async def test_a_sweep_removes_what_is_past_the_horizon_and_keeps_the_rest(
    retained: Settings, conn: Conn
) -> None:
    async with opened(retained) as (store, sweeper):
        await store.store(
            [
                ("old-a", rows("a", ids("old", 250), days_ago=40)),
                ("new-a", rows("a", ids("new", 50), days_ago=1)),
                ("old-b", rows("b", ids("old", 30), days_ago=31)),
            ]
        )
        swept = await sweeper.sweep()
    assert swept is not None
    assert (swept.events, swept.topics) == (280, 1)  # in 3 transactions of at most 100
    left = conn.execute("SELECT topic, count(*) FROM events GROUP BY topic").fetchall()
    assert left == [("a", 50)]
    assert {e for (e,) in conn.execute("SELECT event_id FROM events")} == set(ids("new", 50))
    c = await counts(retained)
    # Lifetime counters do not move; what is stored now does.
    assert (c.received, c.unique_processed, c.duplicate_dropped) == (330, 330, 0)
    assert (c.expired, c.stored, c.topics, c.topic_count) == (280, 50, ["a"], 1)
    # The volume follows, and the minutes left without events are gone from it.
    assert_volume_counts_the_events(conn)
    assert conn.execute("SELECT DISTINCT topic FROM volume").fetchall() == [("a",)]
    for table in ("volume", "volume_total"):
        empty = f"SELECT count(*) FROM (SELECT 1 FROM {table} GROUP BY minute HAVING sum(n) = 0) e"
        assert conn.execute(empty).fetchone() == (0,)


@pytest.fixture
def merging(amqp_url: str, database_url: str) -> Iterator[Settings]:
    """As ``retained``, and small blocks merge as soon as they are stored."""
    with private_settings(
        amqp_url, database_url, prefix="retm", retention="30d", retention_batch=100,
        merge_after=0.001,
    ) as s:  # fmt: skip
        yield s


async def test_a_partition_merged_while_it_was_tallied_is_uncounted_exactly(
    merging: Settings,
) -> None:
    """The tally runs in paced transactions of its own; blocks merged between two of them
    change the partition's block ids, and the detach's transaction tallies it again."""

    class MergingMidway(Sweeper):
        merged = 0

        async def pause(self, stop: asyncio.Event, took: float) -> bool:
            if not self.merged:
                merger = Merger(self.settings)

                async def merge() -> int:
                    done = await merger.merge()
                    return 0 if done is None else done.blocks

                try:  # merges wait for the transactions older than the blocks to end
                    self.merged = await eventually(merge, bool, what="a merge")
                finally:
                    await merger.close()
            return await super().pause(stop, took)

    store, sweeper = Store(merging, shard=1), MergingMidway(merging)
    try:
        for n in range(40):  # 40 small blocks of one topic and one hour
            await store.store([(f"old-{n}", rows("a", ids(f"old{n}", 5), days_ago=40))])
        await store.store([("new", rows("a", ids("new", 5), days_ago=1))])
        swept = await sweeper.sweep()
    finally:
        await store.close()
        await sweeper.close()
    assert sweeper.merged > 1
    assert swept is not None and swept.events == 200
    c = await counts(merging)
    assert (c.received, c.unique_processed, c.expired, c.stored) == (205, 205, 200, 5)
    with psycopg.connect(merging.database_url, autocommit=True, **connect_kwargs(merging)) as c2:
        assert_volume_counts_the_events(c2)


async def test_an_event_is_deduplicated_until_it_expires_and_stored_anew_after(
    retained: Settings, conn: Conn
) -> None:
    async with opened(retained) as (store, sweeper):
        first = await store.store([("k1", rows("t", ["x"], days_ago=40))])
        again = await store.store([("k2", rows("t", ["x"], days_ago=0))])  # before the sweep
        assert (first.inserted, again.inserted) == (1, 0)
        swept = await sweeper.sweep()
        assert swept is not None and swept.events == 1
        after_expiry = await store.store([("k3", rows("t", ["x"], days_ago=0))])
        assert after_expiry.inserted == 1
        within = await store.store([("k4", rows("t", ["x"], days_ago=0))])
        assert within.inserted == 0
        nothing = await sweeper.sweep()
        assert nothing is not None and (nothing.events, nothing.topics) == (0, 0)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    c = await counts(retained)
    assert (c.received, c.unique_processed, c.duplicate_dropped) == (4, 2, 2)
    assert (c.expired, c.stored, c.topics) == (1, 1, ["t"])


def test_ledger_keys_live_no_longer_than_the_events() -> None:
    # A retry under the same key after expiry must be stored again, as one without a key is.
    assert Settings(retention="2d").ledger_retention_seconds == 2 * 86400
    assert Settings(retention="30d").ledger_retention_seconds == 168 * 3600
    assert Settings().ledger_retention_seconds == 168 * 3600
    assert Settings().retention_seconds is None
    for bad in ("30 days", "0d", "-1h", "d"):
        with pytest.raises(ValueError, match="PUBSUB_RETENTION"):
            Settings.from_env({"PUBSUB_RETENTION": bad})


def blocks_bytes(conn: Conn) -> int:
    """What the blocks take: every partition, attached or not."""
    row = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(to_regclass(name))), 0)::bigint FROM partitions"
    ).fetchone()
    size = row[0] if row else 0
    return size if isinstance(size, int) else 0


async def test_storage_settles_at_one_horizon_of_events_instead_of_growing(
    retained: Settings, conn: Conn
) -> None:
    """Six rounds of 10,000 events that age past the horizon: the sweep drops the blocks' whole
    partitions, so their bytes go back to nothing each round instead of adding up, and it
    removes every key. (The keys' freed space is reused once vacuum reclaims it, which waits
    for the oldest snapshot of the whole database: the test after this one shows the sweep
    vacuuming.)"""
    sizes = []
    async with opened(retained) as (store, sweeper):
        for rnd in range(6):
            keys = [uuid.uuid4().hex for _ in range(10_000)]
            for part in range(0, len(keys), 2500):
                chunk = keys[part : part + 2500]
                await store.store([(f"r{rnd}-{part}", rows("t", chunk, days_ago=40))])
            grown = blocks_bytes(conn)
            swept = await sweeper.sweep()
            assert swept is not None and swept.events == 10_000
            sizes.append((grown, blocks_bytes(conn)))
            assert conn.execute("SELECT count(*) FROM keys").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    peaks = [grown for grown, _ in sizes]
    # Every round's blocks are the same size, and none is left after its sweep but the empty
    # partitions made ahead (a page for each of their ten indexes).
    assert max(peaks) < 1.2 * min(peaks), sizes
    assert max(after for _, after in sizes) < 0.15 * min(peaks), sizes


async def test_where_autovacuum_is_off_the_sweep_vacuums_by_itself(
    retained: Settings, conn: Conn
) -> None:
    conn.execute("ALTER TABLE keys SET (autovacuum_enabled = false)")

    async def vacuums() -> int:
        row = conn.execute(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'keys'::regclass"
        ).fetchone()
        count = row[0] if row else 0
        return count if isinstance(count, int) else 0

    before = await vacuums()
    async with opened(retained) as (store, sweeper):
        await store.store([("old", rows("v", ids("old", 500), days_ago=40))])
        await store.store([("new", rows("v", ids("new", 500), days_ago=0))])
        swept = await sweeper.sweep()
    assert swept is not None and swept.events == 500  # half the table: past a fifth
    await eventually(vacuums, lambda n: n > before, timeout=10, what="a vacuum of keys")


async def test_the_sweep_waits_for_a_topics_first_events_in_flight(
    retained: Settings, conn: Conn
) -> None:
    """A topic whose events all expired, while a consumer is storing new ones for it: the
    sweep must not take it for empty."""
    async with opened(retained) as (store, sweeper):
        await store.store([("old", rows("z", ["1"], days_ago=40))])
        swept = await sweeper.sweep()
        assert swept is not None and swept.events == 1
        conn.execute("INSERT INTO topics VALUES ('z')")  # as if the sweep had been cut short
        # Made beforehand, as consumers make partitions in transactions of their own.
        conn.execute("SELECT add_partition(now(), '1 day')")
        with psycopg.connect(
            retained.database_url, **connect_kwargs(retained)
        ) as consumer:  # a consumer's transaction, left open
            consumer.execute(
                "INSERT INTO events (topic, event_id, ts, source, payload, received_at)"
                " VALUES ('z', '2', now(), 's', '{}', now())"
            )
            consumer.execute("INSERT INTO topics VALUES ('z') ON CONFLICT DO NOTHING")
            sweeping = asyncio.create_task(sweeper.forget_empty_topics([(0, "z")]))

            async def sweep_waits_on_a_lock() -> bool:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE topics%'"
                ).fetchone()
                return bool(row and row[0])

            await eventually(sweep_waits_on_a_lock, bool, what="the sweep waiting for the lock")
            assert not sweeping.done()
            consumer.commit()
        assert await sweeping == 0
    assert conn.execute("SELECT topic FROM topics").fetchall() == [("z",)]


@pytest.fixture
def swept_often(amqp_url: str, database_url: str) -> Iterator[Settings]:
    with private_settings(
        amqp_url, database_url, prefix="ret", retention="1h", retention_interval=0.2
    ) as s:
        yield s


async def test_a_consumer_with_a_retention_sweeps_by_itself(
    swept_often: Settings, tmp_path: Path
) -> None:
    s = swept_often
    with psycopg.connect(s.database_url, autocommit=True, **connect_kwargs(s)) as c:
        # Events stored two hours ago, counted as a consumer would have counted them, in a
        # partition of the span a consumer makes for a retention of an hour.
        c.execute("SELECT add_partition(now() - interval '2 hours', '1 minute')")
        c.execute(
            "INSERT INTO events (topic, event_id, ts, source, payload, received_at)"
            " SELECT 'old', g::text, now(), 's', '{}', now() - interval '2 hours'"
            " FROM generate_series(1, 5000) g"
        )
        c.execute("INSERT INTO counters (shard, received, unique_processed) VALUES (7, 5000, 5000)")
    stack = Supervisor(s, logdir=tmp_path, consumers=1)
    try:
        stack.start_all()
        async with aiohttp.ClientSession() as http:
            stats = await eventually(
                lambda: watch.fetch_stats(http, stack.read_url),
                # The sweep forgets empty topics after its last delete: wait for both.
                lambda st: st["expired"] == 5000 and st["topic_count"] == 0,
                timeout=60,
                what="the consumer's sweep",
            )
            urls = [stack.url(n) for n in stack.consumers]
            removed = await watch.metric(http, urls, "pubsub_consumer_events_expired_total")
    finally:
        stack.stop_all()
    assert (stats["received"], stats["unique_processed"], stats["stored"]) == (5000, 5000, 0)
    assert (stats["topics"], stats["topic_count"]) == ([], 0)
    assert removed == 5000
