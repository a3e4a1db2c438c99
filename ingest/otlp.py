"""``POST /v1/logs``: OpenTelemetry logs over OTLP/HTTP, stored as events.

Every OpenTelemetry SDK and the Collector export logs this way; pointing their endpoint at
ingest is all it takes. A request (``ExportLogsServiceRequest``, protobuf or the OTLP JSON
encoding, gzip or not) goes through the same memory budget, validation, broker confirms and
metrics as ``POST /publish``, and ``200`` comes only once the broker confirmed its events.

Each log record becomes one event:

- ``topic``: the resource attribute ``PUBSUB_OTLP_TOPIC_ATTRIBUTE`` (``service.name``), else
  ``unknown_service``; an ``X-Pubsub-Topic`` header overrides it for the whole request;
- ``source``: the first of the resource attributes ``PUBSUB_OTLP_SOURCE_ATTRIBUTES``
  (``service.instance.id``, ``host.name``) that is set, else ``otlp``;
- ``timestamp``: ``timeUnixNano``, else ``observedTimeUnixNano``, else the receive time;
- ``event_id``: the record's ``log.record.uid`` attribute (the semantic conventions define it
  for exactly this), else a hash of the record and of its resource's hash, so a retried
  export, which carries the same records, is deduplicated;
- ``payload``: ``body`` (any value, as JSON; null when there is none), and those of
  ``severity_number``, ``severity_text``, ``attributes``, ``trace_id`` and ``span_id`` (hex),
  ``flags``, ``event_name``, ``time_unix_nano``, ``observed_time_unix_nano``, ``resource`` (its
  attributes) and ``scope`` (name, version, attributes) that are not at their default.

A record that cannot be an event (a topic over 255 characters, a record over
``PUBSUB_MAX_EVENT_BYTES``) is left out and counted in ``partial_success``; the others are
stored. Values JSON cannot hold keep their meaning: bytes as base64, non-finite doubles as the
strings ``NaN``, ``Infinity`` and ``-Infinity`` (as the protobuf JSON mapping writes them).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import operator
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, EncodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from ingest import intake, jsonsize, metrics, otlp_json, protowire
from ingest.receiver import Batch, Intake, Receiver, Tally, content_type
from ingest.validate import validate_records
from pubsub.http import Refusal
from pubsub.settings import Settings

log = logging.getLogger("pubsub.ingest.otlp")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class Export(Receiver):
    """``POST /v1/logs`` on :mod:`ingest.receiver`'s path."""

    name = "otlp"

    def accept(self, request: web.Request) -> str:
        return content_type(request, PROTOBUF, JSON)

    def decode(self, intake: Intake) -> Batch:
        settings = intake.settings
        export = parse(intake.body, intake.kind, max_records=settings.max_batch_events,
                       hold=intake.hold)  # fmt: skip
        topic = intake.request.headers.get("X-Pubsub-Topic") or None
        shared = Tally(intake.hold)
        events = to_events(
            export, settings=settings, received_at=intake.received_at, topic=topic,
            hold=shared,
        )  # fmt: skip
        del export  # what lives on is the events and their encoding
        # The encoding was held already, in part: each record's copy of its shared context.
        pieces, problems = validate_records(
            events, settings=settings, hold=lambda size: intake.hold(max(0, size - shared.total))
        )
        response = ExportLogsServiceResponse()
        if problems:
            response.partial_success.rejected_log_records = len(problems)
            response.partial_success.error_message = problems[min(problems)]
            metrics.OTLP_RECORDS_REJECTED.inc(len(problems))
        return Batch(pieces, len(events) - len(problems), result=response)

    def reply(self, batch: Batch, intake: Intake) -> web.Response:
        response: ExportLogsServiceResponse = batch.result
        if intake.kind == PROTOBUF:
            body = response.SerializeToString()
        else:
            body = json_format.MessageToJson(response, indent=None).encode()
        return web.Response(body=body, content_type=intake.kind)


# Memory a parsed request takes, held before parsing: per record (the protobuf runtime's
# message, its event) and per byte on the wire (an attribute of a dozen bytes becomes a
# KeyValue, an AnyValue and an entry of a Python dict: about 200 bytes).
_PARSED_PER_RECORD = 512
_PARSED_PER_BYTE = 16


def parse(
    body: bytes,
    kind: str,
    *,
    max_records: int = 2**31,
    hold: Callable[[int], None] = lambda _: None,
) -> ExportLogsServiceRequest:
    """The request in either encoding, its records counted before it is parsed (413 past
    ``max_records``) and what parsing takes held (``hold``); :class:`Refusal` 400 when it
    does not decode."""
    if kind == PROTOBUF:
        what = "an ExportLogsServiceRequest"
        records = protowire.count(body, (1, 2, 2), limit=max_records, what=what)
        _check_count(records, max_records)
        hold(_PARSED_PER_BYTE * len(body) + _PARSED_PER_RECORD * records)
        export = ExportLogsServiceRequest()
        try:
            export.ParseFromString(body)
        except DecodeError as exc:
            raise Refusal(
                400, f"not an ExportLogsServiceRequest: {exc} (or nested deeper than the "
                f"{protowire.MAX_MESSAGE_DEPTH} message levels protobuf reads)",
            ) from None  # fmt: skip
        return export
    hold(jsonsize.parsed_size(body))
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise Refusal(400, f"not an OTLP JSON ExportLogsServiceRequest: {reason}") from None
    records = otlp_json.count_records(document)
    _check_count(records, max_records)
    hold(_PARSED_PER_RECORD * records)
    try:
        return otlp_json.parse(document)
    except (ValueError, TypeError, DecodeError, EncodeError) as exc:
        # ValueError also from the protobuf runtime: a value out of its field's range.
        reason = " ".join(str(exc).split())[:300]
        raise Refusal(400, f"not an OTLP JSON ExportLogsServiceRequest: {reason}") from None


def _check_count(records: int, max_records: int) -> None:
    if records > max_records:
        raise Refusal(
            413, f"{records} log records in one request, over PUBSUB_MAX_BATCH_EVENTS "
            f"({max_records})",
        )  # fmt: skip


def value(v: AnyValue) -> Any:
    """An ``AnyValue`` as JSON."""
    kind = v.WhichOneof("value")
    return None if kind is None else _READ[kind](v)  # None: no value set


def _double(v: AnyValue) -> Any:
    d = v.double_value
    if math.isfinite(d):
        return d
    return "NaN" if math.isnan(d) else ("Infinity" if d > 0 else "-Infinity")


# How each kind of AnyValue reads as JSON. Every record pays this for its body and each of its
# attributes: the scalar kinds read through attrgetter (C) rather than a Python function.
_READ: dict[str, Callable[[AnyValue], Any]] = {
    "string_value": operator.attrgetter("string_value"),
    "bool_value": operator.attrgetter("bool_value"),
    "int_value": operator.attrgetter("int_value"),
    "double_value": _double,
    "array_value": lambda v: [value(item) for item in v.array_value.values],
    "kvlist_value": lambda v: attributes(v.kvlist_value.values),
    "bytes_value": lambda v: base64.b64encode(v.bytes_value).decode(),
}


def attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    # value() inlined: a call per attribute made the mapping ~15% slower (timeit, 100 records).
    out: dict[str, Any] = {}
    for kv in pairs:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = None if kind is None else _READ[kind](v)
    return out


def to_events(
    export: ExportLogsServiceRequest,
    *,
    settings: Settings,
    received_at: datetime,
    topic: str | None,
    hold: Callable[[int], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """An event for each record, in order; :class:`Refusal` 413 past the batch limit.

    Every event carries its resource's attributes and its scope: shared in memory, but
    written out once per event when encoded. ``hold`` is told that size, for each scope's
    records, before they are mapped, so a large resource over many small records is refused
    (413) before it is copied."""
    count = sum(len(s.log_records) for r in export.resource_logs for s in r.scope_logs)
    _check_count(count, settings.max_batch_events)
    events: list[dict[str, Any]] = []
    topic_key = settings.otlp_topic_attribute
    source_keys = [k.strip() for k in settings.otlp_source_attributes.split(",") if k.strip()]
    for resource_logs in export.resource_logs:
        resource = resource_logs.resource
        resource_attrs = attributes(resource.attributes)
        # Hashed once: each record's id is a hash of the record and this digest.
        resource_key = hashlib.blake2b(
            resource.SerializeToString(deterministic=True), digest_size=16
        ).digest()
        resource_size = len(orjson.dumps(resource_attrs))
        topic_of = topic or _text(resource_attrs.get(topic_key)) or "unknown_service"
        source = next(
            (t for k in source_keys if (t := _text(resource_attrs.get(k)))), "otlp"
        )  # fmt: skip
        for scope_logs in resource_logs.scope_logs:
            given = scope_logs.scope
            fields = (("name", given.name), ("version", given.version),
                      ("attributes", attributes(given.attributes)))  # fmt: skip
            scope = {k: v for k, v in fields if v}
            shared = resource_size + len(orjson.dumps(scope)) + len(topic_of) + len(source)
            hold(shared * len(scope_logs.log_records))
            for record in scope_logs.log_records:
                events.append(_event(
                    record,
                    resource_attrs=resource_attrs,
                    resource_key=resource_key,
                    scope=scope,
                    topic=topic_of,
                    source=source,
                    received_at=received_at,
                ))  # fmt: skip
    return events


def _text(v: Any) -> str:
    return v if isinstance(v, str) else ("" if v is None else str(v))


def _event(
    record: LogRecord,
    *,
    resource_attrs: dict[str, Any],
    resource_key: bytes,
    scope: dict[str, Any],
    topic: str,
    source: str,
    received_at: datetime,
) -> dict[str, Any]:
    attrs = attributes(record.attributes)
    time_ns, observed_ns = record.time_unix_nano, record.observed_time_unix_nano
    nanos = time_ns or observed_ns
    # PostgreSQL keeps microseconds; the nanoseconds stay in the payload.
    timestamp = intake.time_of_nanos(nanos) if nanos else received_at
    uid = _text(attrs.get("log.record.uid"))
    if not uid:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(record.SerializeToString(deterministic=True))
        digest.update(resource_key)
        uid = f"otlp-{digest.hexdigest()}"
    # A field at its default is left out, as protobuf itself leaves it out; the body is
    # always there (null when the record has none).
    payload: dict[str, Any] = {"body": value(record.body)}
    if severity := record.severity_number:
        payload["severity_number"] = severity
    if text := record.severity_text:
        payload["severity_text"] = text
    if attrs:
        payload["attributes"] = attrs
    if trace_id := record.trace_id:
        payload["trace_id"] = trace_id.hex()
    if span_id := record.span_id:
        payload["span_id"] = span_id.hex()
    if flags := record.flags:
        payload["flags"] = flags
    if name := getattr(record, "event_name", ""):
        payload["event_name"] = name
    if time_ns:
        payload["time_unix_nano"] = str(time_ns)
    if observed_ns:
        payload["observed_time_unix_nano"] = str(observed_ns)
    if resource_attrs:
        payload["resource"] = resource_attrs
    if scope:
        payload["scope"] = scope
    return {
        "topic": topic,
        "event_id": uid,
        "timestamp": timestamp,
        "source": source,
        "payload": payload,
    }
