"""``POST /loki/api/v1/push``: Loki's push API, from a real Loki logging handler (JSON) and in
Loki's own protobuf + snappy, stored as events."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import cramjam
import logging_loki  # type: ignore[import-untyped]
import orjson
import psycopg
import pytest

from ingest.loki import PushRequest, parse_labels
from pubsub.http import Refusal
from stack.supervisor import Supervisor
from tests.support import eventually, settled, stats, stored_count

DEADLINE = 60.0


def log_through_handler(url: str, service: str, n: int) -> None:
    handler = logging_loki.LokiHandler(
        url=url, tags={"service_name": service, "host": "web-1"}, timeout=10
    )
    logger = logging.getLogger(f"loki-test.{service}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for i in range(n):
            logger.error("payment %d declined", i, extra={"tags": {"shard": str(i % 3)}})
    finally:
        logger.removeHandler(handler)
        handler.close()


async def test_a_loki_handler_pushes_and_every_line_is_stored_with_its_labels(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    service = f"loki-{uuid.uuid4().hex[:8]}"
    counted = (await stats(http, stack.read_url))["received"]
    url = f"{stack.ingest_url}/loki/api/v1/push"
    await asyncio.to_thread(log_through_handler, url, service, 200)  # raises unless 204
    await settled(http, stack.read_url, counted + 200, timeout=DEADLINE)
    assert stored_count(db, service) == 200
    async with http.get(f"{stack.read_url}/events", params={"topic": service, "limit": "1"}) as r:
        (event,) = await r.json()
    assert event["source"] == "web-1"
    payload = event["payload"]
    assert payload["line"] == "payment 0 declined"
    assert payload["labels"]["service_name"] == service
    assert payload["labels"]["severity"] == "error" and payload["labels"]["shard"] == "0"
    assert abs(int(payload["time_unix_nano"]) / 1e9 - time.time()) < 120


async def test_the_same_push_twice_is_stored_once(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    service = f"loki-dup-{uuid.uuid4().hex[:8]}"
    now = time.time_ns()
    body = {
        "streams": [
            {
                "stream": {"service_name": service, "env": "prod"},
                "values": [[str(now + i), '{"msg": "json stays text"}', {"trace_id": "ab"}]
                           for i in range(10)],
            }
        ]
    }  # fmt: skip
    counted = (await stats(http, stack.read_url))["received"]
    for _ in range(2):  # a client's retry after a lost answer
        async with http.post(f"{stack.ingest_url}/loki/api/v1/push", json=body) as resp:
            assert resp.status == 204, await resp.text()
    after = await settled(http, stack.read_url, counted + 20, timeout=DEADLINE)
    assert after["received"] == counted + 20
    assert stored_count(db, service) == 10
    async with http.get(f"{stack.read_url}/events", params={"topic": service, "limit": "1"}) as r:
        (event,) = await r.json()
    assert event["payload"]["line"] == '{"msg": "json stays text"}'  # text, exactly as sent
    assert event["payload"]["structured_metadata"] == {"trace_id": "ab"}
    assert event["source"] == "loki"


async def test_protobuf_with_snappy_as_promtail_sends_it(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    service = f"loki-pb-{uuid.uuid4().hex[:8]}"
    push = PushRequest()
    stream = push.streams.add()
    stream.labels = f'{{service_name="{service}", path="C:\\\\logs\\\\a \\"b\\"", job="x"}}'
    entry = stream.entries.add(line="disk full")
    entry.timestamp.seconds, entry.timestamp.nanos = 1_760_000_000, 123_456_789
    meta = entry.structuredMetadata.add()
    meta.name, meta.value = "pod", "p-1"
    body = bytes(cramjam.snappy.compress_raw(push.SerializeToString()))
    async with http.post(
        f"{stack.ingest_url}/loki/api/v1/push",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
    ) as resp:
        assert resp.status == 204, await resp.text()

    async def found() -> list[dict[str, Any]]:
        async with http.get(f"{stack.read_url}/events", params={"topic": service}) as r:
            events: list[dict[str, Any]] = await r.json()
            return events

    (event,) = await eventually(found, lambda e: len(e) == 1, timeout=DEADLINE, what="stored")
    assert event["timestamp"] == "2025-10-09T08:53:20.123456Z"
    assert event["payload"]["labels"] == {
        "service_name": service, "path": 'C:\\logs\\a "b"', "job": "x"
    }  # fmt: skip
    assert event["payload"]["structured_metadata"] == {"pod": "p-1"}
    assert event["payload"]["time_unix_nano"] == "1760000000123456789"


async def test_bad_pushes_are_refused_in_plain_text(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    url = f"{stack.ingest_url}/loki/api/v1/push"
    for data, kind, status in (
        (b"not snappy", "application/x-protobuf", 400),
        (b"{not json", "application/json", 400),
        (orjson.dumps({"streams": [{"stream": {"a": "b"}, "values": [["x", "line"]]}]}),
         "application/json", 400),
        (b"{}", "text/plain", 415),
    ):  # fmt: skip
        async with http.post(url, data=data, headers={"Content-Type": kind}) as resp:
            assert resp.status == status, (data, await resp.text())
            assert resp.content_type == "text/plain" and (await resp.text()).strip()


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("{}", {}),
        ('{a="1"}', {"a": "1"}),
        ('{ a = "1" , b="x,y=\\"z\\"" }', {"a": "1", "b": 'x,y="z"'}),
        ('{a="line\\nbreak"}', {"a": "line\nbreak"}),
    ],
)
def test_labels_are_read_in_prometheus_syntax(text: str, labels: dict[str, str]) -> None:
    assert parse_labels(text) == labels


@pytest.mark.parametrize("text", ["a=1", "{a=1}", '{a="1" b="2"}', '{"a"="1"}', '{a="1'])
def test_labels_in_another_syntax_are_refused(text: str) -> None:
    with pytest.raises(Refusal):
        parse_labels(text)


async def test_winston_loki_under_node_pushes_protobuf_and_every_line_is_stored(
    node_clients: Path,
    stack: Supervisor,
    http: aiohttp.ClientSession,
    db: psycopg.Connection[Any],
) -> None:
    """winston-loki, from the npm registry, sends Loki's protobuf compressed with snappy."""
    service = f"loki-node-{uuid.uuid4().hex[:8]}"
    counted = (await stats(http, stack.read_url))["received"]
    node = await asyncio.create_subprocess_exec(
        "node", str(node_clients / "loki_winston.js"), stack.ingest_url, service, "2000",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(node.communicate(), DEADLINE)
    assert node.returncode == 0, err.decode()
    assert orjson.loads(out) == {"sent": 2000, "contentType": "application/x-protobuf"}
    await settled(http, stack.read_url, counted + 2000, timeout=DEADLINE)
    assert stored_count(db, service) == 2000
    async with http.get(f"{stack.read_url}/events", params={"topic": service, "limit": "1"}) as r:
        (event,) = await r.json()
    assert event["source"] == "node-1"
    assert event["payload"]["labels"] == {"service_name": service, "host": "node-1",
                                          "level": "warn"}  # fmt: skip
    lines = {row[0] for row in db.execute(
        "SELECT payload->>'line' FROM events WHERE topic = %s", (service,)
    )}  # fmt: skip
    assert lines == {f'cart {i} abandoned {{"cart":"{i}","region":"eu","level":"warn"}}'
                     for i in range(2000)}  # fmt: skip
