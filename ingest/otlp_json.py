"""The OTLP JSON encoding of an ``ExportLogsServiceRequest``, read into the protobuf message.

protobuf's own reader of the JSON mapping (``json_format.ParseDict``) is pure Python and
costs about 60 us per log record here, ten times the rest of ingest's work for the record.
This reader knows the one message it reads: it builds the message through the protobuf
runtime's constructors from the document ``orjson`` parsed, and reads what the OTLP
specification says the JSON encoding holds:

- field names in lowerCamelCase, or as in the .proto (``parse`` accepts both, as the
  protobuf JSON mapping does), unknown fields ignored;
- ``traceId`` and ``spanId`` in hex (where the protobuf JSON mapping would use base64);
- 64-bit integers as strings or numbers, enums as numbers or names, doubles as numbers or
  ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, bytes in base64.

``tests/test_otlp_json.py`` checks it against ``json_format`` on the same documents.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource


class NotOtlp(ValueError):
    """The document is not an OTLP JSON ``ExportLogsServiceRequest``; says where and why."""


def parse(document: Any) -> ExportLogsServiceRequest:
    """The request a parsed OTLP JSON document holds; :class:`NotOtlp` naming the first
    problem."""
    root = _object(document, "the body")
    return ExportLogsServiceRequest(
        resource_logs=[
            _resource_logs(item, f"resourceLogs[{n}]")
            for n, item in enumerate(_list(root, "resourceLogs", "resource_logs", "the body"))
        ]
    )


def _resource_logs(value: Any, where: str) -> ResourceLogs:
    obj = _object(value, where)
    resource = _get(obj, "resource", "resource")
    scope_logs = _list(obj, "scopeLogs", "scope_logs", where)
    out = ResourceLogs(
        scope_logs=[_scope_logs(s, f"{where}.scopeLogs[{n}]") for n, s in enumerate(scope_logs)],
        schema_url=_string(_get(obj, "schemaUrl", "schema_url"), f"{where}.schemaUrl"),
    )
    if resource is not None:
        r = _object(resource, f"{where}.resource")
        out.resource.CopyFrom(
            Resource(
                attributes=_attributes(r, f"{where}.resource"),
                dropped_attributes_count=_int(
                    _get(r, "droppedAttributesCount", "dropped_attributes_count"),
                    f"{where}.resource.droppedAttributesCount",
                ),
            )
        )
    return out


def _scope_logs(value: Any, where: str) -> ScopeLogs:
    obj = _object(value, where)
    records = _list(obj, "logRecords", "log_records", where)
    out = ScopeLogs(
        log_records=[_record(item, f"{where}.logRecords[{n}]") for n, item in enumerate(records)],
        schema_url=_string(_get(obj, "schemaUrl", "schema_url"), f"{where}.schemaUrl"),
    )
    scope = _get(obj, "scope", "scope")
    if scope is not None:
        s = _object(scope, f"{where}.scope")
        out.scope.CopyFrom(
            InstrumentationScope(
                name=_string(s.get("name"), f"{where}.scope.name"),
                version=_string(s.get("version"), f"{where}.scope.version"),
                attributes=_attributes(s, f"{where}.scope"),
                dropped_attributes_count=_int(
                    _get(s, "droppedAttributesCount", "dropped_attributes_count"),
                    f"{where}.scope.droppedAttributesCount",
                ),
            )
        )
    return out


def _record(value: Any, where: str) -> LogRecord:
    obj = _object(value, where)
    record = LogRecord(
        time_unix_nano=_int(_get(obj, "timeUnixNano", "time_unix_nano"), f"{where}.timeUnixNano"),
        observed_time_unix_nano=_int(
            _get(obj, "observedTimeUnixNano", "observed_time_unix_nano"),
            f"{where}.observedTimeUnixNano",
        ),
        severity_number=_severity(_get(obj, "severityNumber", "severity_number"), where),
        severity_text=_string(_get(obj, "severityText", "severity_text"), f"{where}.severityText"),
        attributes=_attributes(obj, where),
        dropped_attributes_count=_int(
            _get(obj, "droppedAttributesCount", "dropped_attributes_count"),
            f"{where}.droppedAttributesCount",
        ),
        flags=_int(obj.get("flags"), f"{where}.flags"),
        trace_id=_hex(_get(obj, "traceId", "trace_id"), f"{where}.traceId"),
        span_id=_hex(_get(obj, "spanId", "span_id"), f"{where}.spanId"),
    )
    event_name = _get(obj, "eventName", "event_name")
    if event_name is not None:
        record.event_name = _string(event_name, f"{where}.eventName")
    body = obj.get("body")
    if body is not None:
        record.body.CopyFrom(_any(body, f"{where}.body"))
    return record


def _attributes(obj: dict[str, Any], where: str) -> list[KeyValue]:
    pairs = obj.get("attributes")
    if pairs is None:
        return []
    if not isinstance(pairs, list):
        raise NotOtlp(f"{where}.attributes must be an array")
    return [_pair(pair, f"{where}.attributes[{n}]") for n, pair in enumerate(pairs)]


def _pair(value: Any, where: str) -> KeyValue:
    obj = _object(value, where)
    pair = KeyValue(key=_string(obj.get("key"), f"{where}.key"))
    inner = obj.get("value")
    if inner is not None:
        pair.value.CopyFrom(_any(inner, f"{where}.value"))
    return pair


def _any(value: Any, where: str) -> AnyValue:
    obj = _object(value, where)
    for name, field, convert in _ANY_KINDS:
        given = obj.get(name)
        if given is None:
            given = obj.get(field)
        if given is not None:
            return AnyValue(**{field: convert(given, f"{where}.{name}")})
    return AnyValue()  # no value set: an empty AnyValue, as the mapping reads it


# Arrays and key-value lists within each other, at most: a kvlist is three protobuf messages
# deep, and the protobuf runtime copies no message nested past 100 (MAX_MESSAGE_DEPTH).
MAX_VALUE_DEPTH = 32


def _nested(where: str) -> None:
    if where.count("Value.values[") > MAX_VALUE_DEPTH:
        raise NotOtlp(
            f"{where[:120]}...: values nest deeper than {MAX_VALUE_DEPTH} arrays or key-value lists"
        )


def count_records(document: Any) -> int:
    """The log records of a parsed OTLP JSON document, counted before any is read (those
    not of the right shape are not counted: :func:`parse` then says what is wrong)."""
    count = 0
    for resource in _items(document, "resourceLogs", "resource_logs"):
        for scope in _items(resource, "scopeLogs", "scope_logs"):
            count += len(_items(scope, "logRecords", "log_records"))
    return count


def _items(obj: Any, camel: str, snake: str) -> list[Any]:
    value = _get(obj, camel, snake) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def _array(value: Any, where: str) -> ArrayValue:
    _nested(where)
    items = _object(value, where).get("values") or []
    if not isinstance(items, list):
        raise NotOtlp(f"{where}.values must be an array")
    return ArrayValue(values=[_any(item, f"{where}.values[{n}]") for n, item in enumerate(items)])


def _kvlist(value: Any, where: str) -> KeyValueList:
    _nested(where)
    items = _object(value, where).get("values") or []
    if not isinstance(items, list):
        raise NotOtlp(f"{where}.values must be an array")
    return KeyValueList(
        values=[_pair(item, f"{where}.values[{n}]") for n, item in enumerate(items)]
    )


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise NotOtlp(f"{where} must be true or false")
    return value


def _double(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise NotOtlp(f"{where} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise NotOtlp(f"{where} must be a number, or NaN, Infinity, -Infinity") from None
    if isinstance(value, str) and not math.isfinite(number) and value not in _NON_FINITE:
        raise NotOtlp(f"{where}: write non-finite numbers as NaN, Infinity or -Infinity")
    return number


def _bytes(value: Any, where: str) -> bytes:
    text = _string(value, where)
    try:
        # Standard or URL-safe base64, padded or not, as the protobuf JSON mapping reads it.
        return base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        raise NotOtlp(f"{where} must be base64") from None


_NON_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})


def _severity(value: Any, where: str) -> SeverityNumber.ValueType:
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        try:
            return SeverityNumber.Value(value)
        except ValueError:
            raise NotOtlp(f"{where}.severityNumber: unknown severity {value[:40]!r}") from None
    number = _int(value, f"{where}.severityNumber")
    if not -(2**31) <= number < 2**31:
        raise NotOtlp(f"{where}.severityNumber is out of range")
    return SeverityNumber.ValueType(number)  # an open enum: any 32-bit number


def _int(value: Any, where: str) -> int:
    """A (64-bit) integer: a number, or a string of one; 0 when absent."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise NotOtlp(f"{where} must be an integer")
    if isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and value.strip().lstrip("-").isdigit() and value.isascii()
    ):
        number = int(value)
    else:
        raise NotOtlp(f"{where} must be an integer (a number or a string of digits)")
    if not -(2**63) <= number < 2**64:
        raise NotOtlp(f"{where} is out of range")
    return number


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise NotOtlp(f"{where} must be a string")
    return value


def _hex(value: Any, where: str) -> bytes:
    text = _string(value, where)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise NotOtlp(f"{where} {text[:40]!r} is not hex") from None


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise NotOtlp(f"{where} must be an object")
    return value


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _list(obj: dict[str, Any], camel: str, snake: str, where: str) -> list[Any]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise NotOtlp(f"{where}.{camel} must be an array")
    return value


# AnyValue's kinds: the JSON name, the field, and how to read the value.
_ANY_KINDS: tuple[tuple[str, str, Callable[[Any, str], Any]], ...] = (
    ("stringValue", "string_value", _string),
    ("intValue", "int_value", _int),
    ("boolValue", "bool_value", _bool),
    ("doubleValue", "double_value", _double),
    ("kvlistValue", "kvlist_value", _kvlist),
    ("arrayValue", "array_value", _array),
    ("bytesValue", "bytes_value", _bytes),
)
