"""Bodies a hostile client sends: small on the wire, large in memory or CPU, or broken in
ways a parser must name. Shared by the bound tests, the cost tests and the fuzz tests."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

import cramjam
import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from ingest.loki import PushRequest

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Body:
    """A request body, and where and how it is sent."""

    path: str
    kind: str
    data: bytes

    def headers(self, **more: str) -> dict[str, str]:
        return {"Content-Type": self.kind, **more}


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)


def cut_at_flush(data: bytes) -> bytes:
    """A gzip stream that ends at a flush point, without its last block and trailer: what a
    client that died mid-send leaves, and what a lenient reader takes as the part it holds."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    half = len(data) // 2
    return packer.compress(data[:half]) + packer.flush(zlib.Z_SYNC_FLUSH)


def _record(text: str = "") -> LogRecord:
    return LogRecord(body=AnyValue(string_value=text)) if text else LogRecord()


def otlp(records: list[LogRecord], *, resource: dict[str, str] | None = None) -> bytes:
    attrs = [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in (resource or {}).items()]
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=attrs), scope_logs=[ScopeLogs(log_records=records)]
            )
        ]
    ).SerializeToString()


def otlp_empty_records(count: int) -> bytes:
    """``count`` empty log records: two bytes each on the wire."""
    return b"\x0a" + _varint_of(len(inner := _scope_of_empty(count))) + inner


def _scope_of_empty(count: int) -> bytes:
    scope = b"\x12\x00" * count  # ScopeLogs.log_records, each empty
    return b"\x12" + _varint_of(len(scope)) + scope  # ResourceLogs.scope_logs


def _varint_of(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def otlp_heavy_resource(resource_bytes: int, records: int) -> bytes:
    """One resource of ``resource_bytes`` shared by ``records`` small records."""
    return otlp(
        [_record("x") for _ in range(records)],
        resource={"service.name": "heavy", "blob": "r" * resource_bytes},
    )


def otlp_json_nested(depth: int, kind: str = "kvlistValue") -> bytes:
    """A record whose body nests ``depth`` key-value lists (or arrays) within each other,
    written out by hand: deeper than orjson writes."""
    if kind == "kvlistValue":
        opening, closing = b'{"kvlistValue":{"values":[{"key":"k","value":', b"}]}}"
    else:
        opening, closing = b'{"arrayValue":{"values":[', b"]}}"
    value = opening * depth + b'{"stringValue":"leaf"}' + closing * depth
    return (
        b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"1","body":'
        + value
        + b"}]}]}]}"
    )


def loki_json(streams: list[dict[str, object]]) -> bytes:
    return orjson.dumps({"streams": streams})


def loki_json_entries(count: int, labels: dict[str, str] | None = None) -> bytes:
    values = [[str(n + 1), "l"] for n in range(count)]
    return loki_json([{"stream": labels or {"app": "many"}, "values": values}])


def loki_heavy_labels(label_bytes: int, entries: int) -> bytes:
    """A stream whose labels take ``label_bytes``, shared by ``entries`` short lines."""
    return loki_json_entries(entries, {"app": "heavy", "blob": "b" * label_bytes})


def loki_protobuf(labels: str, entries: list[tuple[int, int, str]]) -> bytes:
    """A snappy-compressed push of one stream: entries as (seconds, nanos, line)."""
    push = PushRequest()
    stream = push.streams.add()
    stream.labels = labels
    for seconds, nanos, line in entries:
        entry = stream.entries.add(line=line)
        entry.timestamp.seconds = seconds
        entry.timestamp.nanos = nanos
    return bytes(cramjam.snappy.compress_raw(push.SerializeToString()))


def loki_many_labels(count: int) -> bytes:
    labels = "{" + ",".join(f'l{n}="v"' for n in range(count)) + "}"
    return loki_protobuf(labels, [(1_760_000_000, 0, "line")])


def nested_json(depth: int) -> bytes:
    """An object ``depth`` objects deep, as JSON (orjson writes at most 254 levels)."""
    return b'{"a":' * depth + b"1" + b"}" * depth


def loki_deep_metadata(depth: int) -> bytes:
    """A push whose one entry's structured metadata value nests ``depth`` objects deep."""
    return (
        b'{"streams":[{"stream":{"app":"m"},"values":[["1","l",{"m":'
        + nested_json(depth)
        + b"}]]}]}"
    )


def bulk_document(document: object, index: str = "hostile") -> bytes:
    return orjson.dumps({"create": {"_index": index}}) + b"\n" + orjson.dumps(document) + b"\n"


def bulk_nested(depth: int) -> bytes:
    """A bulk request of one document nested ``depth`` objects deep (orjson reads up to 1024
    and writes up to 254)."""
    return orjson.dumps({"create": {"_index": "deep"}}) + b"\n" + nested_json(depth) + b"\n"


def bulk_actions(count: int) -> bytes:
    return b'{"create":{"_index":"many"}}\n{}\n' * count


def publish_empty_objects(count: int) -> bytes:
    return b"[" + b",".join([b"{}"] * count) + b"]"
