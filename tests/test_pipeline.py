"""The seeds' scenarios end to end: real ingest, consumers and read API over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import orjson
import psycopg

from publisher.load import LoadConfig, run_load
from stack.supervisor import Supervisor
from tests.support import event, get_json, post_json, settled, stats


def new_topic() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def stored(db: psycopg.Connection[Any], topic: str) -> list[str]:
    rows = db.execute("SELECT event_id FROM events WHERE topic = %s ORDER BY event_id", (topic,))
    return [r[0] for r in rows.fetchall()]


async def deltas(
    http: aiohttp.ClientSession, stack: Supervisor, before: dict[str, Any], sent: int
) -> tuple[int, int, int]:
    after = await settled(http, stack.read_url, before["received"] + sent)
    return (
        after["received"] - before["received"],
        after["unique_processed"] - before["unique_processed"],
        after["duplicate_dropped"] - before["duplicate_dropped"],
    )


async def test_single_event_is_stored_and_served_in_the_seeds_shape(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    topic = new_topic()
    before = await stats(http, stack.read_url)
    sent = event(topic, "evt001", payload={"msg": "event pertama", "n": [1, 2.5, None]})
    status, body, _ = await post_json(http, stack.ingest_url, sent)
    assert status == 202 and body["accepted"] == 1
    assert await deltas(http, stack, before, 1) == (1, 1, 0)
    served = await get_json(http, f"{stack.read_url}/events?topic={topic}")
    assert served == [sent]
    assert stored(db, topic) == ["evt001"]


async def test_same_event_five_times_is_stored_once(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    topic = new_topic()
    before = await stats(http, stack.read_url)
    for i in range(5):
        status, _, _ = await post_json(
            http, stack.ingest_url, event(topic, "same", payload={"i": i})
        )
        assert status == 202
    assert await deltas(http, stack, before, 5) == (5, 1, 4)
    assert stored(db, topic) == ["same"]
    # One copy is kept whole; the others are dropped, not merged. Which one depends on which
    # consumer commits first: competing consumers promise no order between messages.
    (only,) = await get_json(http, f"{stack.read_url}/events?topic={topic}")
    assert only["payload"] in [{"i": i} for i in range(5)]


async def test_batch_with_duplicates_inside(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    topic = new_topic()
    before = await stats(http, stack.read_url)
    batch = [event(topic, "a"), event(topic, "b"), event(topic, "a"), event(topic, "c")]
    status, body, _ = await post_json(http, stack.ingest_url, batch)
    assert (status, body["accepted"]) == (202, 4)
    assert await deltas(http, stack, before, 4) == (4, 3, 1)
    assert stored(db, topic) == ["a", "b", "c"]


async def test_fifty_concurrent_identical_events(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    topic = new_topic()
    before = await stats(http, stack.read_url)
    results = await asyncio.gather(
        *(post_json(http, stack.ingest_url, event(topic, "race")) for _ in range(50))
    )
    assert [r[0] for r in results] == [202] * 50
    assert await deltas(http, stack, before, 50) == (50, 1, 49)
    assert stored(db, topic) == ["race"]


async def test_topics_are_case_sensitive_and_ids_are_per_topic(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    low, high = f"hai-{uuid.uuid4().hex[:6]}", ""
    high = low.replace("hai", "Hai")
    before = await stats(http, stack.read_url)
    status, _, _ = await post_json(
        http, stack.ingest_url, [event(low, "x"), event(high, "x"), event(low, "x")]
    )
    assert status == 202
    assert await deltas(http, stack, before, 3) == (3, 2, 1)
    assert stored(db, low) == ["x"] and stored(db, high) == ["x"]
    topics = (await stats(http, stack.read_url))["topics"]
    assert low in topics and high in topics


async def test_missing_timestamp_takes_the_receive_time(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    topic = new_topic()
    before = await stats(http, stack.read_url)
    body = event(topic, "no-ts")
    del body["timestamp"]
    status, _, _ = await post_json(http, stack.ingest_url, body)
    assert status == 202
    await deltas(http, stack, before, 1)
    row = db.execute(
        "SELECT ts, received_at, stored_at FROM events WHERE topic = %s", (topic,)
    ).fetchone()
    assert row is not None
    ts, received_at, stored_at = row
    assert ts == received_at and received_at <= stored_at


async def test_seeds_workload_batch_and_single_modes(stack: Supervisor) -> None:
    for mode in ("batch", "single"):
        cfg = LoadConfig(
            ingest_url=stack.ingest_url,
            read_url=stack.read_url,
            events=5000,
            duplicates=0.2,
            mode=mode,
            concurrency=16,
            topic=new_topic(),
            settle_timeout=60,
        )
        report = await run_load(cfg)
        assert report.got == {
            "received": 5000,
            "unique_processed": 4000,
            "duplicate_dropped": 1000,
        }, mode
        assert report.ok


async def test_counters_always_add_up(stack: Supervisor, http: aiohttp.ClientSession) -> None:
    s = await stats(http, stack.read_url)
    assert s["received"] == s["unique_processed"] + s["duplicate_dropped"]
    assert s["uptime"] > 0
    assert {"queued_messages", "dead_letter_messages", "topics"} <= set(s)


async def test_a_retry_under_the_same_idempotency_key_is_counted_once(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    topic = new_topic()
    key = uuid.uuid4().hex
    before = await stats(http, stack.read_url)
    # 2,500 events travel as three pieces (1,000 events a message): key#0, key#1, key#2.
    batch = orjson.dumps([event(topic, f"e{i}") for i in range(2500)])
    for _ in range(2):  # the client did not see the first answer and sends again
        async with http.post(
            f"{stack.ingest_url}/publish",
            data=batch,
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
        ) as resp:
            assert resp.status == 202
    sentinel = event(topic, "sentinel")
    assert (await post_json(http, stack.ingest_url, sentinel))[0] == 202
    after = await settled(http, stack.read_url, before["received"] + 2501)
    assert after["received"] - before["received"] == 2501
    assert after["unique_processed"] - before["unique_processed"] == 2501
    assert len(stored(db, topic)) == 2501
    async with http.post(
        f"{stack.ingest_url}/publish",
        data=batch,
        headers={"Content-Type": "application/json", "Idempotency-Key": "k" * 201},
    ) as resp:
        assert resp.status == 400
