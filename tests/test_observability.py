"""Logs a request can be followed by, NDJSON from log shippers, metrics the dashboards name."""

from __future__ import annotations

import json
import uuid

import aiohttp
import orjson

from pubsub.settings import Settings
from stack.supervisor import Supervisor
from tests.fix_stack import StackFactory
from tests.support import delete_topology, event, eventually, settled, stats


async def test_request_id_is_followed_from_ingest_to_the_consumer(
    settings: Settings, http: aiohttp.ClientSession, own_stack: StackFactory
) -> None:
    # Ingest and a consumer of their own, at DEBUG, on a queue of their own.
    own = own_stack(log_level="DEBUG", queue=settings.queue + ".obs", consumers=1)
    own.start("ingest")
    own.start("consumer-1")
    try:
        trace = f"trace-{uuid.uuid4().hex[:8]}"
        for _ in range(3):
            async with http.post(
                own.ingest_url + "/publish",
                json=event(f"obs-{uuid.uuid4().hex[:6]}", "e"),
                headers={"X-Request-Id": trace},
            ) as resp:
                assert resp.status == 202
                assert resp.headers["X-Request-Id"] == trace

        async def consumer_lines() -> list[dict[str, object]]:
            text = own.log("consumer-1", tail=1_000_000)
            return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

        lines = await eventually(
            consumer_lines,
            lambda ls: any(trace in str(line.get("request_ids")) for line in ls),
            what="the request id in the consumer's log",
        )
        assert all({"time", "level", "service", "message"} <= set(line) for line in lines)
        assert {line["service"] for line in lines} == {"consumer"}
    finally:
        own.stop_all()
        await delete_topology(own.settings)


async def test_ndjson_from_log_shippers(stack: Supervisor, http: aiohttp.ClientSession) -> None:
    topic = f"ndjson-{uuid.uuid4().hex[:6]}"
    body = b"\n".join(orjson.dumps(event(topic, f"line-{i}")) for i in range(50)) + b"\n"
    before = await stats(http, stack.read_url)
    async with http.post(
        stack.ingest_url + "/publish", data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as resp:
        assert resp.status == 202
        assert (await resp.json())["accepted"] == 50
    after = await settled(http, stack.read_url, before["received"] + 50)
    assert after["unique_processed"] - before["unique_processed"] == 50
