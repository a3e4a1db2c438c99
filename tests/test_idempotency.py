"""An Idempotency-Key names one body: the same key with the same body is a replay (stored and
counted once), the same key with other events is another request (stored and counted, never
dropped after a 2xx), and the reuse is counted."""

from __future__ import annotations

import gzip
import uuid

import aiohttp
import orjson

from publisher import watch
from stack.supervisor import Supervisor
from tests.support import event, eventually, settled, stats


async def publish(
    http: aiohttp.ClientSession, stack: Supervisor, body: bytes, key: str, *, gzipped: bool = False
) -> int:
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    if gzipped:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    async with http.post(f"{stack.ingest_url}/publish", data=body, headers=headers) as resp:
        return resp.status


async def consumers_metric(http: aiohttp.ClientSession, stack: Supervisor, name: str) -> float:
    return await watch.metric(http, [stack.url(n) for n in stack.consumers], name)


async def test_a_key_reused_with_other_events_stores_them_and_is_counted(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic, key = f"idem-{uuid.uuid4().hex[:6]}", f"key-{uuid.uuid4().hex}"
    first = orjson.dumps([event(topic, f"a{i}") for i in range(5)])
    other = orjson.dumps([event(topic, f"b{i}") for i in range(5)])
    reused = "pubsub_consumer_idempotency_keys_reused_total"
    repeated = "pubsub_consumer_units_repeated_total"
    before = await stats(http, stack.read_url)
    reused_before = await consumers_metric(http, stack, reused)

    assert await publish(http, stack, first, key) == 202
    await settled(http, stack.read_url, before["received"] + 5)
    # The same key with other events: accepted, so stored and counted, as another request.
    assert await publish(http, stack, other, key) == 202
    after = await settled(http, stack.read_url, before["received"] + 10)
    assert after["unique_processed"] - before["unique_processed"] == 10
    async with http.get(f"{stack.read_url}/events", params={"topic": topic}) as resp:
        assert sorted(e["event_id"] for e in await resp.json()) == sorted(
            [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
        )
    assert await consumers_metric(http, stack, reused) == reused_before + 1

    # The first body again under its key, gzipped this time: a replay, counted once.
    repeated_before = await consumers_metric(http, stack, repeated)
    assert await publish(http, stack, first, key, gzipped=True) == 202
    await eventually(
        lambda: consumers_metric(http, stack, repeated),
        lambda n: n > repeated_before,
        what="the replay recognised",
    )
    assert (await stats(http, stack.read_url))["received"] == before["received"] + 10
    assert await consumers_metric(http, stack, reused) == reused_before + 1
