"""``POST /v1/logs``: OpenTelemetry logs, from the real Python SDK and exporter, stored as
events, deduplicated on ``log.record.uid``."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
import uuid
from typing import Any

import aiohttp
import psycopg
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import (
    LogRecord,
    ResourceLogs,
    ScopeLogs,
    SeverityNumber,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourcePb
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from stack.supervisor import Supervisor
from tests.support import eventually, settled, stats, stored_count
from tests.tcpproxy import TCPProxy

DEADLINE = 60.0


def emit(
    endpoint: str, service: str, unique: int, *, twice_every: int = 0, pace: float = 0.0
) -> int:
    """Log ``unique`` records through logging -> LoggingHandler -> BatchLogRecordProcessor ->
    the OTLP/HTTP exporter (gzip), every ``twice_every``-th twice with the same uid, one per
    ``pace`` seconds."""
    provider = LoggerProvider(
        resource=Resource.create({"service.name": service, "service.instance.id": "worker-7"})
    )
    exporter = OTLPLogExporter(endpoint=endpoint, compression=Compression.Gzip, timeout=30)
    # A queue for every record: the SDK drops what does not fit its queue (2,048 by default).
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_queue_size=16_384))
    logger = logging.getLogger(f"otel-test.{service}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))
    sent = 0
    try:
        for i in range(unique):
            for _ in range(2 if twice_every and i % twice_every == 0 else 1):
                logger.warning("order %d failed", i, extra={"log.record.uid": f"u{i}", "n": i})
                sent += 1
            if pace:
                time.sleep(pace)  # the application's pace, spreading the export over time
        assert provider.force_flush(timeout_millis=60_000)
    finally:
        provider.shutdown()
    return sent


# The SDK's own handler, deprecated in favour of a separate package that wraps the same one.
@pytest.mark.filterwarnings("ignore:`LoggingHandler` in `opentelemetry-sdk` is deprecated")
async def test_the_sdk_exports_10000_records_and_each_unique_one_is_stored_once(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    service = f"otel-{uuid.uuid4().hex[:8]}"
    before, counted = time.time(), (await stats(http, stack.read_url))["received"]
    sent = await asyncio.to_thread(
        emit, f"{stack.ingest_url}/v1/logs", service, 8000, twice_every=4
    )
    assert sent == 10_000  # 8,000 records, 2,000 of them twice
    # Every record exported is counted (the copies as duplicates), and each stored once.
    after = await settled(http, stack.read_url, counted + 10_000, timeout=DEADLINE)
    assert after["received"] == counted + 10_000
    assert stored_count(db, service) == 8000
    async with http.get(
        f"{stack.read_url}/events", params={"topic": service, "event_id": "u5"}
    ) as resp:
        (event,) = await resp.json()
    assert event["source"] == "worker-7"
    payload = event["payload"]
    assert payload["body"] == "order 5 failed"
    assert payload["severity_text"] == "WARN" and payload["severity_number"] == 13
    assert payload["attributes"]["n"] == 5 and payload["attributes"]["log.record.uid"] == "u5"
    assert payload["resource"]["service.name"] == service
    assert payload["scope"]["name"] == f"otel-test.{service}"
    assert before - 5 < float(payload["time_unix_nano"]) / 1e9 < time.time() + 5


@pytest.mark.filterwarnings("ignore:`LoggingHandler` in `opentelemetry-sdk` is deprecated")
async def test_an_export_through_a_broker_outage_loses_nothing(
    proxied_ingest: tuple[Supervisor, TCPProxy],
    stack: Supervisor,
    http: aiohttp.ClientSession,
    db: psycopg.Connection[Any],
) -> None:
    """Ingest answers 503 with Retry-After while its broker link is cut; the exporter retries
    those, so every record is stored once the link is back."""
    own, link = proxied_ingest
    service = f"otel-outage-{uuid.uuid4().hex[:8]}"
    counted = (await stats(http, stack.read_url))["received"]
    sending = asyncio.create_task(
        asyncio.to_thread(emit, f"{own.ingest_url}/v1/logs", service, 5000, pace=0.001)
    )
    await eventually(lambda: asyncio.to_thread(stored_count, db, service), lambda n: n >= 500,
                     timeout=DEADLINE, interval=0.05, what="the first records stored")  # fmt: skip
    link.cut()
    refused = await _refusals_while(http, own, seconds=3.0)
    link.restore()
    assert await sending == 5000
    assert refused, "the exporter met no refusal: the outage missed the export"
    await settled(http, stack.read_url, counted + 5000, timeout=DEADLINE)
    assert stored_count(db, service) == 5000


async def _refusals_while(http: aiohttp.ClientSession, own: Supervisor, *, seconds: float) -> int:
    """503s ingest answered for OTLP during ``seconds`` (a window of the outage)."""

    async def count() -> float:
        async with http.get(f"{own.ingest_url}/metrics") as resp:
            text = await resp.text()
        found = re.search(r'^pubsub_ingest_requests_total\{status="503"\} (\S+)$', text, re.M)
        return float(found[1]) if found else 0.0

    before = await count()
    await asyncio.sleep(seconds)  # the outage lasts this long
    return int(await count() - before)


def _request(service: str, records: list[LogRecord]) -> ExportLogsServiceRequest:
    resource = ResourcePb(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
    )
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=records)])]
    )


def _otlp_json(export: ExportLogsServiceRequest) -> dict[str, Any]:
    """The OTLP JSON encoding: the protobuf JSON mapping, with trace and span ids in hex."""
    document: dict[str, Any] = json_format.MessageToDict(export)
    for rl in document["resourceLogs"]:
        for sl in rl["scopeLogs"]:
            for record in sl["logRecords"]:
                for name in ("traceId", "spanId"):
                    if name in record:
                        record[name] = base64.b64decode(record[name]).hex()
    return document


async def test_the_json_encoding_keeps_every_field_and_answers_in_json(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    service = f"otel-json-{uuid.uuid4().hex[:8]}"
    body = AnyValue(kvlist_value=KeyValueList(values=[
        KeyValue(key="big", value=AnyValue(int_value=2**62)),
        KeyValue(key="nested", value=AnyValue(string_value="x\ty")),
    ]))  # fmt: skip
    record = LogRecord(
        time_unix_nano=1_760_000_000_123_456_789,
        severity_number=SeverityNumber.SEVERITY_NUMBER_ERROR,
        severity_text="ERROR",
        body=body,
        trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"),
        span_id=bytes.fromhex("eee19b7ec3c1b174"),
        flags=1,
    )
    document = _otlp_json(_request(service, [record]))
    assert isinstance(
        document["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["timeUnixNano"], str
    )
    async with http.post(f"{stack.ingest_url}/v1/logs", json=document) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        assert await resp.json() == {}  # no partial_success: everything was stored

    async def found() -> list[dict[str, Any]]:
        async with http.get(f"{stack.read_url}/events", params={"topic": service}) as r:
            events: list[dict[str, Any]] = await r.json()
            return events

    (event,) = await eventually(found, lambda e: len(e) == 1, timeout=DEADLINE, what="stored")
    assert event["timestamp"] == "2025-10-09T08:53:20.123456Z"
    payload = event["payload"]
    assert payload["body"] == {"big": 2**62, "nested": "x\ty"}
    assert payload["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert payload["span_id"] == "eee19b7ec3c1b174"
    assert payload["time_unix_nano"] == "1760000000123456789"
    assert event["source"] == "otlp" and payload["flags"] == 1


async def test_records_that_cannot_be_events_are_counted_in_partial_success(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    good = f"otel-ok-{uuid.uuid4().hex[:8]}"
    counted = (await stats(http, stack.read_url))["received"]
    export = _request(good, [LogRecord(body=AnyValue(string_value="fine"))])
    export.resource_logs.append(_request("x" * 300, [LogRecord()]).resource_logs[0])
    async with http.post(
        f"{stack.ingest_url}/v1/logs",
        data=export.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/x-protobuf"
        answer = ExportLogsServiceResponse.FromString(await resp.read())
    assert answer.partial_success.rejected_log_records == 1
    assert "topic" in answer.partial_success.error_message
    await settled(http, stack.read_url, counted + 1)  # the other one is stored


async def test_undecodable_bodies_and_other_content_types_are_refused(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    url = f"{stack.ingest_url}/v1/logs"
    for data, kind, status in (
        (b"\xff\xff\xff", "application/x-protobuf", 400),
        (b"{not json", "application/json", 400),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}',
         "application/json", 400),
        (b"{}", "text/plain", 415),
    ):  # fmt: skip
        async with http.post(url, data=data, headers={"Content-Type": kind}) as resp:
            assert resp.status == status, (data, await resp.text())
            assert (await resp.json())["error"]
