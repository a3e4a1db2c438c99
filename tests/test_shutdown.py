"""SIGTERM drains: ingest finishes the confirms in flight, consumers the batch in hand."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator

import aiohttp
import orjson
import psycopg
import pytest

from publisher import watch
from pubsub.settings import Settings
from stack.supervisor import Supervisor
from tests.fix_services import private_settings
from tests.fix_stack import StackFactory
from tests.support import event, eventually, settled, stats
from tests.tcpproxy import proxy


async def _post(http: aiohttp.ClientSession, url: str, body: bytes) -> int:
    try:
        async with http.post(
            f"{url}/publish", data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return 0  # refused or cut: the client knows it was not accepted


async def _taking_requests(
    http: aiohttp.ClientSession, stack: Supervisor, posts: list[asyncio.Task[int]]
) -> None:
    """Until ingest holds a request's body or has answered one: a SIGTERM sent before that
    would find nothing taken, and the test would prove nothing."""
    deadline = time.monotonic() + 10
    while not any(p.done() for p in posts):
        if await watch.metric(http, [stack.url("ingest")], "pubsub_ingest_bytes_in_flight") > 0:
            return
        assert time.monotonic() < deadline, "ingest took no request within 10 s"
        await asyncio.sleep(0.002)


async def test_sigterm_on_ingest_answers_every_request_it_took(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = f"term-{uuid.uuid4().hex[:6]}"
    before = await stats(http, stack.read_url)
    bodies = [orjson.dumps([event(topic, f"{i}-{j}") for j in range(200)]) for i in range(40)]
    posts = [asyncio.create_task(_post(http, stack.ingest_url, b)) for b in bodies]
    await _taking_requests(http, stack, posts)
    stack.send("ingest", signal.SIGTERM)
    statuses = await asyncio.wait_for(asyncio.gather(*posts), 30)
    assert await asyncio.to_thread(stack.procs["ingest"].wait, 20) == 0
    stack.start("ingest")
    accepted = 200 * statuses.count(202)
    assert accepted > 0
    assert set(statuses) <= {202, 0, 503}
    after = await settled(http, stack.read_url, before["received"] + accepted)
    # Every 202 was stored; nothing that was refused sneaked in.
    assert after["received"] - before["received"] == accepted


async def test_sigterm_on_consumers_finishes_and_acks_the_batch_in_hand(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = f"term-c-{uuid.uuid4().hex[:6]}"
    before = await stats(http, stack.read_url)
    for i in range(30):
        body = orjson.dumps([event(topic, f"{i}-{j}") for j in range(1000)])
        assert await _post(http, stack.ingest_url, body) == 202
    for name in stack.consumers:
        stack.send(name, signal.SIGTERM)
    for name in stack.consumers:
        assert await asyncio.to_thread(stack.procs[name].wait, 30) == 0, stack.log(name)
    stack.start_all(stack.consumers)
    after = await settled(http, stack.read_url, before["received"] + 30_000, timeout=60)
    assert after["received"] - before["received"] == 30_000
    # What a stopped consumer stored it had also acknowledged: nothing came back as a repeat.
    for name in stack.consumers:
        async with http.get(stack.url(name) + "/metrics") as resp:
            assert "pubsub_consumer_units_repeated_total 0.0" in await resp.text()


@pytest.fixture
def private(settings: Settings) -> Iterator[Settings]:
    """A schema and queue of the test's own, removed afterwards."""
    with private_settings(settings.amqp_url, settings.database_url, prefix="grace") as s:
        yield s


async def test_a_consumer_stops_within_its_grace_while_the_database_is_down(
    settings: Settings,
    private: Settings,
    own_stack: StackFactory,
    http: aiohttp.ClientSession,
) -> None:
    """SIGTERM while PostgreSQL does not answer: the consumer gives up after
    ``PUBSUB_STOP_TIMEOUT``, acknowledges nothing it did not store, and a consumer started
    later stores every event exactly once."""
    db = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    topic = f"grace-{uuid.uuid4().hex[:6]}"
    with proxy(str(db.get("host", "127.0.0.1")), int(str(db.get("port", 5432)))) as database:
        own = own_stack(
            consumers=1, db_schema=private.db_schema, queue=private.queue, stop_timeout=2.0
        )
        own.overrides["consumer-1"] = {
            "database_url": psycopg.conninfo.make_conninfo(
                settings.database_url, host="127.0.0.1", port=database.port
            )
        }
        own.start_all()
        database.cut()
        for i in range(5):
            body = orjson.dumps([event(topic, f"{i}-{j}") for j in range(100)])
            assert await _post(http, own.ingest_url, body) == 202

        async def retrying() -> bool:
            return "database unavailable" in own.log("consumer-1")

        await eventually(retrying, bool, what="the consumer retrying the store")
        started = time.monotonic()
        own.send("consumer-1", signal.SIGTERM)
        assert await asyncio.to_thread(own.procs["consumer-1"].wait, 15) == 0
        assert time.monotonic() - started < 2.0 + 3.0, own.log("consumer-1")
        assert "stopping with messages not stored" in own.log("consumer-1")

        database.restore()
        own.start("consumer-1")
        after = await settled(http, own.read_url, 500)
        assert (after["received"], after["unique_processed"]) == (500, 500)
        own.stop_all()
