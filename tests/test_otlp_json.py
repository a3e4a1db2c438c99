"""``ingest.otlp_json`` reads the OTLP JSON encoding into the same message as protobuf's own
``json_format`` does, for generated requests of every shape, and refuses what is not one."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given
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

from ingest import otlp_json
from tests.support import fuzzing

text = st.text(max_size=12)
u64 = st.integers(0, 2**64 - 1)


def any_values(depth: int = 2) -> st.SearchStrategy[AnyValue]:
    leaves = st.one_of(
        text.map(lambda v: AnyValue(string_value=v)),
        st.booleans().map(lambda v: AnyValue(bool_value=v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: AnyValue(int_value=v)),
        st.floats(allow_nan=False).map(lambda v: AnyValue(double_value=v)),
        st.binary(max_size=8).map(lambda v: AnyValue(bytes_value=v)),
        st.just(AnyValue()),
    )
    if depth == 0:
        return leaves
    inner = any_values(depth - 1)
    return st.one_of(
        leaves,
        st.lists(inner, max_size=3).map(lambda vs: AnyValue(array_value=ArrayValue(values=vs))),
        st.lists(st.tuples(text, inner), max_size=3).map(
            lambda kvs: AnyValue(
                kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs])
            )
        ),
    )


attributes = st.lists(
    st.tuples(text, any_values(1)).map(lambda kv: KeyValue(key=kv[0], value=kv[1])), max_size=3
)
records = st.builds(
    LogRecord,
    time_unix_nano=u64,
    observed_time_unix_nano=u64,
    severity_number=st.integers(0, 24),
    severity_text=text,
    body=any_values(),
    attributes=attributes,
    dropped_attributes_count=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 2**32 - 1),
    trace_id=st.sampled_from([b"", bytes(range(16))]),
    span_id=st.sampled_from([b"", bytes(range(8))]),
)
requests = st.lists(
    st.builds(
        ResourceLogs,
        resource=st.builds(Resource, attributes=attributes),
        scope_logs=st.lists(
            st.builds(
                ScopeLogs,
                scope=st.builds(InstrumentationScope, name=text, version=text),
                log_records=st.lists(records, max_size=3),
                schema_url=text,
            ),
            max_size=2,
        ),
    ),
    max_size=2,
).map(lambda rl: ExportLogsServiceRequest(resource_logs=rl))


def otlp_json_document(request: ExportLogsServiceRequest, *, names: bool) -> dict[str, Any]:
    """The OTLP JSON encoding: the protobuf JSON mapping with hex trace and span ids."""
    document: dict[str, Any] = json_format.MessageToDict(request, preserving_proto_field_name=names)
    for rl in document.get("resourceLogs" if not names else "resource_logs", []):
        for sl in rl.get("scopeLogs" if not names else "scope_logs", []):
            for record in sl.get("logRecords" if not names else "log_records", []):
                for key in ("traceId", "spanId", "trace_id", "span_id"):
                    if key in record:
                        record[key] = base64.b64decode(record[key]).hex()
    return document


def same(a: ExportLogsServiceRequest, b: ExportLogsServiceRequest) -> bool:
    # NaN != NaN inside messages: compare their encodings.
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


@fuzzing(200)
@given(request=requests, names=st.booleans())
def test_it_reads_what_json_format_writes_into_the_same_message(
    request: ExportLogsServiceRequest, names: bool
) -> None:
    document = otlp_json_document(request, names=names)
    assert same(otlp_json.parse(document), request)


def test_the_spellings_the_mapping_allows_read_as_json_format_reads_them() -> None:
    document = {
        "resourceLogs": [{"scopeLogs": [{"logRecords": [{
            "timeUnixNano": 1700000000000000000,  # a number as well as a string
            "observedTimeUnixNano": "1700000000000000001",
            "severityNumber": "SEVERITY_NUMBER_WARN",  # an enum by name
            "body": {"kvlistValue": {"values": [
                {"key": "nan", "value": {"doubleValue": "NaN"}},
                {"key": "inf", "value": {"doubleValue": "-Infinity"}},
                {"key": "b64url", "value": {"bytesValue": "-_8"}},
                {"key": "i", "value": {"intValue": 7}},
                {"key": "empty"},
            ]}},
            "unknownField": {"ignored": True},
        }]}]}],
    }  # fmt: skip
    read = otlp_json.parse(document)
    record = read.resource_logs[0].scope_logs[0].log_records[0]
    assert record.time_unix_nano == 1700000000000000000
    assert record.severity_number == 13
    values = {kv.key: kv.value for kv in record.body.kvlist_value.values}
    assert math.isnan(values["nan"].double_value)
    assert values["inf"].double_value == -math.inf
    assert values["b64url"].bytes_value == b"\xfb\xff"
    assert values["i"].int_value == 7
    assert values["empty"] == AnyValue()


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ([], "the body must be an object"),
        ({"resourceLogs": {}}, "resourceLogs must be an array"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}, "not hex"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]},
         "timeUnixNano must be an integer"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "-1"}]}]}]},
         "out of range"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"severityNumber": "LOUD"}]}]}]},
         "unknown severity"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"boolValue": 1}}]}]}]},
         "must be true or false"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"doubleValue": "inf"}}]}]}]},
         "NaN, Infinity or -Infinity"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"bytesValue": "!!"}}]}]}]},
         "base64"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": [{"key": 1}]}]}]}]},
         "key must be a string"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [
            {"body": {"intValue": str(2**64)}}]}]}]}, "out of range"),
    ],
)  # fmt: skip
def test_what_is_not_an_otlp_request_is_refused_with_where(document: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        otlp_json.parse(document)
