"""Every protocol's decode, fed what hypothesis makes of its body's structure: nested values,
many attributes, labels and records, odd strings, extreme numbers, truncated and corrupted
bytes, compressed or not. Whatever comes in, the answer is events or a 4xx with a reason:
never a 5xx, never another exception."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import cramjam
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from ingest import elastic, loki, native, otlp
from ingest.loki import PushRequest
from ingest.receiver import Receiver
from pubsub.http import Refusal
from pubsub.settings import Settings
from tests.hostile import JSON, NDJSON, PROTOBUF
from tests.inprocess import decode

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Small limits: the fuzzer reaches every bound with small bodies.
SMALL = Settings(
    max_body_bytes=64 * 1024,
    ingest_memory_budget=2 * 1024 * 1024,
    max_batch_events=50,
    max_event_bytes=8 * 1024,
    message_max_bytes=16 * 1024,
)

# --- the shapes ------------------------------------------------------------------------------

texts = st.text(max_size=20) | st.sampled_from(["", "\x00", "\ud7ff", "é" * 3, "a" * 300])
numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, -1, 2**63, 2**64, 1e308, -0.0])
)
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=25,
)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return b'"unwritable"'


def _mangled(data: st.DataObject, body: bytes) -> bytes:
    """The body as made, cut short, with a byte flipped, or with bytes appended."""
    how = data.draw(st.sampled_from(["as is", "as is", "cut", "flip", "append"]))
    if how == "cut" and body:
        return body[: data.draw(st.integers(0, len(body) - 1))]
    if how == "flip" and body:
        at = data.draw(st.integers(0, len(body) - 1))
        return body[:at] + bytes([body[at] ^ data.draw(st.integers(1, 255))]) + body[at + 1 :]
    if how == "append":
        return body + data.draw(st.binary(max_size=20))
    return body


def _compressed(data: st.DataObject, body: bytes) -> tuple[bytes, str | None]:
    how = data.draw(st.sampled_from([None, None, "gzip", "deflate", "gzip cut"]))
    if how == "gzip":
        return gzip.compress(body), "gzip"
    if how == "deflate":
        return zlib.compress(body), "deflate"
    if how == "gzip cut":
        packed = gzip.compress(body)
        return packed[: data.draw(st.integers(0, len(packed)))], "gzip"
    return body, None


def _answer(receiver: Receiver, body: bytes, kind: str, encoding: str | None, **more: Any) -> None:
    try:
        decode(receiver, body, kind=kind, settings=SMALL, encoding=encoding, **more)
    except Refusal as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.message)
        assert exc.message


@st.composite
def events(draw: st.DrawFn) -> Any:
    fields = {
        "topic": texts | scalars,
        "event_id": texts | scalars,
        "source": texts | scalars,
        "timestamp": st.sampled_from(
            [
                "2025-10-21T10:00:00Z",
                "2025-10-21",
                "0001-01-01T00:00:00Z",
                "9999-12-31T23:59:59+14:00",
            ]
        )
        | scalars,
        "payload": json_values,
        "extra": json_values,
    }
    chosen = draw(st.sets(st.sampled_from(list(fields)), max_size=6))
    return {name: draw(fields[name]) for name in sorted(chosen)}


@given(st.data())
@FUZZ
def test_publish_never_answers_5xx(data: st.DataObject) -> None:
    ndjson = data.draw(st.booleans())
    items = data.draw(st.lists(events() | json_values, max_size=8))
    if ndjson:
        body = b"\n".join(_dumps(item) for item in items)
    else:
        body = _dumps(items if data.draw(st.booleans()) else (items[0] if items else {}))
    body, encoding = _compressed(data, _mangled(data, body))
    _answer(native.Publish(), body, NDJSON if ndjson else JSON, encoding)


# AnyValue, nested.
any_values = st.recursive(
    st.builds(AnyValue, string_value=texts)
    | st.builds(AnyValue, int_value=st.integers(-(2**63), 2**63 - 1))
    | st.builds(AnyValue, double_value=st.floats())
    | st.builds(AnyValue, bool_value=st.booleans())
    | st.builds(AnyValue, bytes_value=st.binary(max_size=10))
    | st.just(AnyValue()),
    lambda inner: (
        st.builds(lambda v: AnyValue(array_value=ArrayValue(values=v)), st.lists(inner, max_size=3))
        | st.builds(
            lambda kv: AnyValue(kvlist_value=KeyValueList(values=kv)),
            st.lists(st.builds(KeyValue, key=texts, value=inner), max_size=3),
        )
    ),
    max_leaves=30,
)
key_values = st.lists(st.builds(KeyValue, key=texts, value=any_values), max_size=4)
uint64 = st.integers(0, 2**64 - 1)
records = st.builds(
    LogRecord,
    time_unix_nano=uint64,
    observed_time_unix_nano=uint64,
    severity_number=st.integers(0, 24),
    severity_text=texts,
    body=any_values,
    attributes=key_values,
    trace_id=st.binary(max_size=16),
    span_id=st.binary(max_size=8),
    flags=st.integers(0, 2**32 - 1),
)
exports = st.builds(
    ExportLogsServiceRequest,
    resource_logs=st.lists(
        st.builds(
            ResourceLogs,
            resource=st.builds(Resource, attributes=key_values),
            scope_logs=st.lists(
                st.builds(
                    ScopeLogs,
                    scope=st.builds(
                        InstrumentationScope, name=texts, version=texts, attributes=key_values
                    ),
                    log_records=st.lists(records, max_size=6),
                ),
                max_size=3,
            ),
        ),
        max_size=3,
    ),
)


@given(st.data())
@FUZZ
def test_otlp_never_answers_5xx(data: st.DataObject) -> None:
    export = data.draw(exports)
    as_json = data.draw(st.booleans())
    if as_json:
        from google.protobuf import json_format

        document: Any = json_format.MessageToDict(export)
        if data.draw(st.booleans()):  # a value of the wrong kind somewhere near the top
            document[data.draw(texts)] = data.draw(json_values)
        body = _dumps(document)
    else:
        body = export.SerializeToString()
    if data.draw(st.integers(0, 9)) == 0:
        body = data.draw(st.binary(max_size=200))
    body, encoding = _compressed(data, _mangled(data, body))
    topic = data.draw(st.sampled_from([None, "t", "x" * 300, "\x07"]))
    _answer(
        otlp.Export(),
        body,
        JSON if as_json else PROTOBUF,
        encoding,
        headers={"X-Pubsub-Topic": topic} if topic else None,
    )


label_texts = st.text(alphabet='abcAZ_09="\\ ,{}\n\x00', max_size=40)


@given(st.data())
@FUZZ
def test_loki_never_answers_5xx(data: st.DataObject) -> None:
    as_json = data.draw(st.booleans())
    if as_json:
        streams = data.draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "stream": st.dictionaries(texts, texts | scalars, max_size=4) | json_values,
                        "values": st.lists(
                            st.lists(texts | scalars | json_values, max_size=4)
                            | st.tuples(
                                st.integers(-5, 2**70).map(str),
                                texts,
                                st.dictionaries(texts, json_values, max_size=3),
                            ),
                            max_size=5,
                        ),
                    },
                ),
                max_size=3,
            )
        )
        body = _dumps({"streams": streams} if data.draw(st.booleans()) else streams)
    else:
        push = PushRequest()
        for _ in range(data.draw(st.integers(0, 3))):
            stream = push.streams.add()
            stream.labels = data.draw(
                st.sampled_from(['{app="x"}', '{job="j", host="h"}', "{}"]) | label_texts
            )
            for _ in range(data.draw(st.integers(0, 4))):
                entry = stream.entries.add(line=data.draw(texts))
                entry.timestamp.seconds = data.draw(st.integers(-(2**63), 2**63 - 1))
                entry.timestamp.nanos = data.draw(st.integers(-(2**31), 2**31 - 1))
                for _ in range(data.draw(st.integers(0, 2))):
                    entry.structuredMetadata.add(name=data.draw(texts), value=data.draw(texts))
        raw = push.SerializeToString()
        if data.draw(st.integers(0, 4)) == 0:
            raw = _mangled(data, raw)
        snappy = data.draw(st.integers(0, 4)) > 0
        body = bytes(cramjam.snappy.compress_raw(raw)) if snappy else raw
    body, encoding = _compressed(data, _mangled(data, body) if as_json else body)
    _answer(loki.Push(), body, JSON if as_json else PROTOBUF, encoding)


actions = st.sampled_from(["index", "create", "update", "delete", "other"])


@given(st.data())
@FUZZ
def test_bulk_never_answers_5xx(data: st.DataObject) -> None:
    lines = []
    for _ in range(data.draw(st.integers(0, 6))):
        meta = data.draw(
            st.fixed_dictionaries({}, optional={"_index": texts | scalars, "_id": texts | scalars})
        )
        lines.append(_dumps({data.draw(actions): meta} if data.draw(st.booleans()) else meta))
        document = data.draw(
            json_values | st.fixed_dictionaries({"@timestamp": texts | numbers, "message": texts})
        )
        lines.append(_dumps(document))
    body = b"\n".join(lines) + b"\n"
    body, encoding = _compressed(data, _mangled(data, body))
    index = data.draw(st.sampled_from([None, "logs", "..", "."]))
    _answer(elastic.Bulk(), body, NDJSON, encoding, match_info={"index": index} if index else None)
