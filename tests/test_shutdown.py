"""SIGTERM drains: ingest finishes the confirms in flight, consumers the batch in hand."""

from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import orjson

from stack.supervisor import Supervisor
from tests.support import event, settled, stats


async def _post(http: aiohttp.ClientSession, url: str, body: bytes) -> int:
    try:
        async with http.post(
            f"{url}/publish", data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return 0  # refused or cut: the client knows it was not accepted


async def test_sigterm_on_ingest_answers_every_request_it_took(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = f"term-{uuid.uuid4().hex[:6]}"
    before = await stats(http, stack.read_url)
    bodies = [orjson.dumps([event(topic, f"{i}-{j}") for j in range(200)]) for i in range(40)]
    posts = [asyncio.create_task(_post(http, stack.ingest_url, b)) for b in bodies]
    await asyncio.sleep(0.05)
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
