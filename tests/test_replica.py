"""The read API on a streaming replica: consumers write to the primary, ``/events`` and
``/stats`` read the replica, and stay correct (consistent, only late) while it lags.

The lag is made on purpose: WAL replay is paused on the replica while events are stored on the
primary, then resumed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from publisher import watch
from publisher.load import EventSource, LoadConfig, Report, send_load
from pubsub import database
from pubsub.settings import Settings
from stack.supervisor import Supervisor
from tests.fix_services import private_settings
from tests.replica import Pair, primary_and_replica
from tests.support import eventually, get_json


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with primary_and_replica() as p:
        yield p


@pytest.fixture
def replicated(pair: Pair, amqp_url: str) -> Iterator[Settings]:
    with private_settings(
        amqp_url, pair.primary.url, prefix="replica", read_database_url=pair.replica.url
    ) as s:
        yield s


async def _send(http: aiohttp.ClientSession, stack: Supervisor, topic: str, n: int) -> int:
    cfg = LoadConfig(
        ingest_url=stack.ingest_url, read_url=stack.read_url, events=n, batch_size=500,
        concurrency=2, topic=topic,
    )  # fmt: skip
    source, report = EventSource(cfg), Report()
    await send_load(http, cfg, source, report)
    assert report.failed_events == 0
    return source.unique


def _primary_received(settings: Settings) -> int:
    with psycopg.connect(settings.database_url, **database.connect_kwargs(settings)) as c:
        row = c.execute("SELECT coalesce(sum(received), 0)::bigint FROM counters").fetchone()
    value = row[0] if row else 0
    return value if isinstance(value, int) else 0


async def test_reads_come_from_the_replica_and_stay_consistent_while_it_lags(
    pair: Pair, replicated: Settings, tmp_path: Path
) -> None:
    stack = Supervisor(replicated, logdir=tmp_path, consumers=1)
    try:
        stack.start_all()
        async with aiohttp.ClientSession() as http:
            unique = await _send(http, stack, "first", 5000)
            stats = await eventually(
                lambda: watch.fetch_stats(http, stack.read_url),
                lambda s: s["received"] == 5000,
                timeout=60,
                what="the replica catching up",
            )
            assert (stats["unique_processed"], stats["stored"]) == (unique, unique)

            with psycopg.connect(pair.replica.url, autocommit=True) as replica:
                replica.execute("SELECT pg_wal_replay_pause()")
                try:
                    await _send(http, stack, "second", 5000)
                    await eventually(
                        lambda: asyncio.to_thread(_primary_received, replicated),
                        lambda n: n == 10_000,
                        timeout=60,
                        what="the primary storing the second batch",
                    )
                    # The replica is behind: what it serves is the state before, complete
                    # and consistent, not half of the new batch.
                    late = await watch.fetch_stats(http, stack.read_url)
                    events: Any = await get_json(http, f"{stack.read_url}/events?topic=second")
                    assert (late["received"], late["stored"], late["topics"]) == (
                        5000, unique, ["first"],
                    )  # fmt: skip
                    assert late["received"] == late["unique_processed"] + late["duplicate_dropped"]
                    assert events == []
                finally:
                    replica.execute("SELECT pg_wal_replay_resume()")
            caught_up = await eventually(
                lambda: watch.fetch_stats(http, stack.read_url),
                lambda s: s["received"] == 10_000,
                timeout=60,
                what="the replica catching up after the pause",
            )
            assert caught_up["topics"] == ["first", "second"]
    finally:
        stack.stop_all()
