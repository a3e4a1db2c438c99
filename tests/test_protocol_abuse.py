"""Hostile and careless input on the protocol routes (OTLP, Loki push, Elasticsearch bulk):
each is answered 4xx with a reason or stored whole, never a 5xx, never half-stored."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import cramjam
import orjson
import psycopg
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from ingest.loki import PushRequest
from stack.supervisor import Supervisor
from tests.support import event, post_json, settled, stats

DEADLINE = 60.0
PROTOBUF = {"Content-Type": "application/x-protobuf"}
NDJSON = {"Content-Type": "application/x-ndjson"}
PATHS = ("/v1/logs", "/loki/api/v1/push", "/_bulk", "/logs/_bulk")


def otlp(service: str, records: list[LogRecord]) -> bytes:
    resource = Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
    )
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=records)])]
    ).SerializeToString()


def loki_protobuf(labels: str, lines: list[str]) -> bytes:
    push = PushRequest()
    stream = push.streams.add()
    stream.labels = labels
    for n, line in enumerate(lines):
        entry = stream.entries.add(line=line)
        entry.timestamp.seconds = 1_760_000_000 + n
    return bytes(cramjam.snappy.compress_raw(push.SerializeToString()))


async def nothing_was_counted(
    http: aiohttp.ClientSession, stack: Supervisor, counted: int, topic: str
) -> dict[str, Any]:
    """Publish one marker and wait for it: a refused request before it counted nothing."""
    marker = event(f"marker-{uuid.uuid4().hex[:8]}", "m")
    status, _, _ = await post_json(http, stack.ingest_url, marker)
    assert status == 202
    after = await settled(http, stack.read_url, counted + 1, timeout=DEADLINE)
    assert after["received"] == counted + 1, f"{topic}: a refused request was counted"
    return after


@pytest.mark.parametrize("path", PATHS)
async def test_a_body_over_the_limit_is_413_on_every_protocol(
    path: str, stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    body = b"\n" * (stack.settings.max_body_bytes + 1)
    kind = "application/x-protobuf" if path == "/v1/logs" else "application/x-ndjson"
    if path.startswith("/loki"):
        kind = "application/json"
    async with http.post(f"{stack.ingest_url}{path}", data=body,
                         headers={"Content-Type": kind}) as resp:  # fmt: skip
        assert resp.status == 413, await resp.text()


@pytest.mark.parametrize("path", PATHS)
async def test_another_content_type_is_415_on_every_protocol(
    path: str, stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with http.post(f"{stack.ingest_url}{path}", data=b"a=b", headers=form) as resp:
        assert resp.status == 415, await resp.text()
        assert "content type" in await resp.text()


async def test_a_snappy_bomb_is_refused_before_it_is_inflated(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    url = f"{stack.ingest_url}/loki/api/v1/push"
    real = bytes(cramjam.snappy.compress_raw(b"\0" * (stack.settings.max_body_bytes + 1)))
    # The block format declares the inflated length first: a varint of 2**31 here.
    lying = bytes([0x80, 0x80, 0x80, 0x80, 0x08]) + real[4:]
    for body in (real, lying):
        async with http.post(url, data=body, headers=PROTOBUF) as resp:
            assert resp.status == 413, await resp.text()
            assert "inflates to" in await resp.text()


async def test_truncated_protobuf_is_400(stack: Supervisor, http: aiohttp.ClientSession) -> None:
    records = [LogRecord(body=AnyValue(string_value="x" * 100)) for _ in range(10)]
    whole = otlp("t", records)
    async with http.post(f"{stack.ingest_url}/v1/logs", data=whole[: len(whole) // 2 + 3],
                         headers=PROTOBUF) as resp:  # fmt: skip
        assert resp.status == 400, await resp.text()
    push = PushRequest()
    push.streams.add(labels='{app="t"}').entries.add(line="y" * 100)
    raw = push.SerializeToString()
    cut = bytes(cramjam.snappy.compress_raw(raw[: len(raw) - 10]))
    async with http.post(f"{stack.ingest_url}/loki/api/v1/push", data=cut,
                         headers=PROTOBUF) as resp:  # fmt: skip
        assert resp.status == 400, await resp.text()


async def test_100000_records_in_one_request_are_413_and_nothing_is_stored(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    counted = (await stats(http, stack.read_url))["received"]
    topic = f"many-{uuid.uuid4().hex[:8]}"
    bodies = (
        ("/v1/logs", PROTOBUF, otlp(topic, [LogRecord(time_unix_nano=n + 1)
                                            for n in range(100_000)])),
        ("/loki/api/v1/push", {"Content-Type": "application/json"}, orjson.dumps(
            {"streams": [{"stream": {"app": topic},
                          "values": [[str(n + 1), "l"] for n in range(100_000)]}]})),
        ("/_bulk", NDJSON, f'{{"create": {{"_index": "{topic}"}}}}\n{{}}\n'.encode() * 100_000),
    )  # fmt: skip
    for path, headers, body in bodies:
        async with http.post(f"{stack.ingest_url}{path}", data=body, headers=headers) as resp:
            assert resp.status == 413, (path, await resp.text())
            assert "PUBSUB_MAX_BATCH_EVENTS" in await resp.text()
    await nothing_was_counted(http, stack, counted, topic)


async def test_every_anyvalue_kind_and_a_record_without_body_are_stored_as_sent(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    service = f"anyvalue-{uuid.uuid4().hex[:8]}"
    nested = KeyValueList(values=[
        KeyValue(key="deeper", value=AnyValue(kvlist_value=KeyValueList(values=[
            KeyValue(key="leaf", value=AnyValue(bytes_value=b"\x00\xff")),
        ]))),
        KeyValue(key="list", value=AnyValue(array_value=ArrayValue(values=[
            AnyValue(int_value=-(2**63)), AnyValue(double_value=float("inf")),
            AnyValue(bool_value=False), AnyValue(),
        ]))),
    ])  # fmt: skip
    attributes = [
        KeyValue(key="s", value=AnyValue(string_value="ünï")),
        KeyValue(key="b", value=AnyValue(bool_value=True)),
        KeyValue(key="i", value=AnyValue(int_value=2**63 - 1)),
        KeyValue(key="d", value=AnyValue(double_value=float("nan"))),
        KeyValue(key="bytes", value=AnyValue(bytes_value=b"\x01\x02")),
        KeyValue(key="kv", value=AnyValue(kvlist_value=nested)),
        KeyValue(key="empty", value=AnyValue()),
    ]
    records = [
        LogRecord(
            time_unix_nano=1_000_000, attributes=attributes, body=AnyValue(kvlist_value=nested)
        ),
        LogRecord(time_unix_nano=2_000_000),  # no body at all
    ]
    counted = (await stats(http, stack.read_url))["received"]
    async with http.post(f"{stack.ingest_url}/v1/logs", data=otlp(service, records),
                         headers=PROTOBUF) as resp:  # fmt: skip
        assert resp.status == 200, await resp.text()
        answer = ExportLogsServiceResponse.FromString(await resp.read())
    assert not answer.HasField("partial_success")
    await settled(http, stack.read_url, counted + 2, timeout=DEADLINE)
    rows = db.execute(
        "SELECT payload FROM events WHERE topic = %s ORDER BY ts", (service,)
    ).fetchall()
    first, second = (row[0] for row in rows)
    expected_nested = {
        "deeper": {"leaf": "AP8="},
        "list": [-(2**63), "Infinity", False, None],
    }
    assert first["body"] == expected_nested
    assert first["attributes"] == {
        "s": "ünï", "b": True, "i": 2**63 - 1, "d": "NaN", "bytes": "AQI=",
        "kv": expected_nested, "empty": None,
    }  # fmt: skip
    # Fields at their default are left out; the body is always there.
    assert second == {
        "body": None, "time_unix_nano": "2000000", "resource": {"service.name": service}
    }  # fmt: skip


async def test_label_values_that_are_not_utf8_are_400_and_nothing_is_stored(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    counted = (await stats(http, stack.read_url))["received"]
    topic = f"utf8-{uuid.uuid4().hex[:8]}"
    url = f"{stack.ingest_url}/loki/api/v1/push"
    good = f'{{"streams": [{{"stream": {{"app": "{topic}"}}, "values": [["1", "ok"]]}}, '
    bad_json = (good + '{"stream": {"app": "\xff"}, "values": [["2", "no"]]}]}').encode("latin-1")
    async with http.post(url, data=bad_json, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400, await r.text()
    push = PushRequest()
    push.streams.add(labels=f'{{app="{topic}"}}').entries.add(line="ok")
    raw = push.SerializeToString()
    # The same push, with one label value's bytes replaced by bytes that are not UTF-8.
    raw = raw.replace(topic.encode(), b"\xff" * len(topic.encode()))
    async with http.post(url, data=bytes(cramjam.snappy.compress_raw(raw)),
                         headers=PROTOBUF) as resp:  # fmt: skip
        assert resp.status == 400, await resp.text()
    bulk = f'{{"create": {{"_index": "{topic}"}}}}\n'.encode() + b'{"m": "\xff"}\n'
    async with http.post(f"{stack.ingest_url}/_bulk", data=bulk, headers=NDJSON) as resp:
        assert resp.status == 200, await resp.text()
        (item,) = (await resp.json())["items"]
        assert item["create"]["status"] == 400
    await nothing_was_counted(http, stack, counted, topic)
