"""``POST /loki/api/v1/push``: the Loki push API, stored as events.

Promtail and Alloy, Vector, Fluent Bit and the Loki logging handlers of most languages push
this way; pointing their URL at ingest is all it takes. A push (JSON, gzip or not, or
protobuf compressed with snappy's block format) goes through the same memory budget,
validation, broker confirms and metrics as ``POST /publish``, and ``204`` comes only once the
broker confirmed its events. Errors are plain text, as Loki answers them.

Each entry (a line of a stream) becomes one event:

- ``topic``: the first of the stream's labels ``PUBSUB_LOKI_TOPIC_LABELS`` (``service_name``,
  ``job``, ``app``) that is set, else ``loki``;
- ``source``: the first of ``PUBSUB_LOKI_SOURCE_LABELS`` (``host``, ``hostname``,
  ``instance``) that is set, else ``loki``;
- ``timestamp``: the entry's time;
- ``event_id``: a hash of the stream's labels, the time and the line: the identity Loki itself
  uses to drop exact duplicates;
- ``payload``: ``line`` (the text as sent: a JSON line stays text), ``labels``,
  ``structured_metadata`` and ``time_unix_nano`` (a string).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import cramjam
import orjson
from aiohttp import web
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import DecodeError

from ingest import intake, metrics
from ingest.validate import validate_mapped
from pubsub.http import Refusal
from pubsub.settings import Settings

log = logging.getLogger("pubsub.ingest.loki")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def _push_request_class() -> Any:
    """Loki's ``logproto.PushRequest`` (grafana/loki ``pkg/push/push.proto``), declared as a
    protobuf schema for the protobuf runtime, which then does all the decoding."""
    f = descriptor_pb2.FileDescriptorProto(
        name="pubsub/loki_push.proto",
        package="logproto",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    t = descriptor_pb2.FieldDescriptorProto

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = f.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            added = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name

    one, many = t.LABEL_OPTIONAL, t.LABEL_REPEATED
    message("PushRequest", ("streams", 1, t.TYPE_MESSAGE, many, ".logproto.StreamAdapter"))
    message(
        "StreamAdapter",
        ("labels", 1, t.TYPE_STRING, one, ""),
        ("entries", 2, t.TYPE_MESSAGE, many, ".logproto.EntryAdapter"),
        ("hash", 3, t.TYPE_UINT64, one, ""),
    )
    message(
        "EntryAdapter",
        ("timestamp", 1, t.TYPE_MESSAGE, one, ".google.protobuf.Timestamp"),
        ("line", 2, t.TYPE_STRING, one, ""),
        ("structuredMetadata", 3, t.TYPE_MESSAGE, many, ".logproto.LabelPairAdapter"),
    )
    message(
        "LabelPairAdapter",
        ("name", 1, t.TYPE_STRING, one, ""),
        ("value", 2, t.TYPE_STRING, one, ""),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("logproto.PushRequest"))


PushRequest = _push_request_class()

# One label of Prometheus' syntax: name="value", the value with \\, \" and \n escaped.
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def parse_labels(text: str) -> dict[str, str]:
    """``{app="x", env="y"}`` as a dict; :class:`Refusal` 400 if it is not in that syntax."""
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        raise Refusal(400, f'labels {text[:80]!r} are not of the form {{name="value", ...}}')
    inner, labels, at = inner[1:-1], {}, 0
    while at < len(inner.strip()) and inner[at:].strip():
        match = _LABEL.match(inner, at)
        if match is None:
            raise Refusal(400, f"labels {text[:80]!r}: cannot read from {inner[at : at + 20]!r}")
        labels[match[1]] = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], match[2])
        at = match.end()
    return labels


async def push(request: web.Request) -> web.Response:
    """Store a push's entries; ``204`` once the broker confirmed them."""
    request_id = intake.request_id(request)
    try:
        count = await _push(request, request_id)
    except Refusal as exc:
        intake.note_refusal(log, exc, request_id)
        # Plain text, as Loki answers: its clients log the body as it is.
        return web.Response(
            status=exc.status,
            text=exc.message + "\n",
            headers={**dict(exc.headers), "X-Request-Id": request_id},
        )
    metrics.REQUESTS.labels("204").inc()
    metrics.EVENTS_ACCEPTED.inc(count)
    return web.Response(status=204, headers={"X-Request-Id": request_id})


async def _push(request: web.Request, request_id: str) -> int:
    app, received_at = request.app, datetime.now(UTC)
    settings = app[intake.SETTINGS]
    kind = request.content_type
    if kind not in (PROTOBUF, JSON):
        raise Refusal(415, f"unsupported content type {kind!r}: send {PROTOBUF} or {JSON}")
    with intake.holding(request) as held:
        body = await intake.read_body(request, held, settings)
        if kind == PROTOBUF:
            streams = _from_protobuf(body, settings, lambda n: intake.hold_more(request, held, n))
        else:
            streams = _from_json(body)
        events = to_events(streams, settings=settings)
        if not events:
            return 0
        pieces = validate_mapped(events, settings=settings)
        intake.hold_more(request, held, sum(len(piece.data) for piece in pieces))
        await app[intake.BROKER].publish(pieces, received_at=received_at, request_id=request_id)
    return len(events)


# A stream: its labels, and its entries as (time in ns, line, structured metadata).
Stream = tuple[dict[str, str], list[tuple[int, str, dict[str, str]]]]


def _from_protobuf(body: bytes, settings: Settings, hold: Callable[[int], None]) -> list[Stream]:
    """The streams of a snappy-compressed ``PushRequest``; its inflated size (which snappy's
    block format declares up front) is checked against the body limit and held in the budget
    (``hold``) before a byte is inflated."""
    try:
        size = cramjam.snappy.decompress_raw_len(body)
        if size > settings.max_body_bytes:
            raise Refusal(
                413, f"body inflates to {size} bytes, over the limit of {settings.max_body_bytes}"
            )
        hold(size)
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise Refusal(400, f"the body is not snappy-compressed (block format): {exc}") from None
    message = PushRequest()
    try:
        message.ParseFromString(raw)
    except DecodeError as exc:
        raise Refusal(400, f"not a Loki PushRequest: {exc}") from None
    streams: list[Stream] = []
    for stream in message.streams:
        entries = [
            (e.timestamp.seconds * 10**9 + e.timestamp.nanos, e.line,
             {p.name: p.value for p in e.structuredMetadata})
            for e in stream.entries
        ]  # fmt: skip
        streams.append((parse_labels(stream.labels), entries))
    return streams


def _from_json(body: bytes) -> list[Stream]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refusal(400, f"malformed JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("streams"), list):
        raise Refusal(400, 'the body must be {"streams": [{"stream": {...}, "values": [...]}]}')
    streams: list[Stream] = []
    for n, stream in enumerate(document["streams"]):
        labels = stream.get("stream") if isinstance(stream, dict) else None
        values = stream.get("values") if isinstance(stream, dict) else None
        if not isinstance(labels, dict) or not isinstance(values, list):
            raise Refusal(400, f'streams[{n}] needs a "stream" object and a "values" array')
        if not all(isinstance(v, str) for v in labels.values()):
            raise Refusal(400, f"streams[{n}].stream: label values must be strings")
        entries = []
        for m, value in enumerate(values):
            entries.append(_json_entry(value, f"streams[{n}].values[{m}]"))
        streams.append((labels, entries))
    return streams


def _json_entry(value: Any, where: str) -> tuple[int, str, dict[str, str]]:
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise Refusal(400, f'{where} must be ["<unix ns>", "<line>"] or with metadata')
    ns, line, *rest = value
    meta = rest[0] if rest else {}
    if not (isinstance(ns, str) and ns.isascii() and ns.isdigit() and len(ns) <= 19):
        raise Refusal(400, f"{where}: the time must be a string of Unix nanoseconds")
    if not isinstance(line, str) or not isinstance(meta, dict):
        raise Refusal(400, f"{where}: the line must be a string, metadata an object")
    return int(ns), line, {str(k): str(v) for k, v in meta.items()}


def to_events(streams: list[Stream], *, settings: Settings) -> list[dict[str, Any]]:
    count = sum(len(entries) for _, entries in streams)
    if count > settings.max_batch_events:
        raise Refusal(
            413, f"{count} entries in one push, over PUBSUB_MAX_BATCH_EVENTS "
            f"({settings.max_batch_events})",
        )  # fmt: skip
    topics = [k.strip() for k in settings.loki_topic_labels.split(",") if k.strip()]
    sources = [k.strip() for k in settings.loki_source_labels.split(",") if k.strip()]
    events: list[dict[str, Any]] = []
    for labels, entries in streams:
        topic = next((labels[k] for k in topics if labels.get(k)), "loki")
        source = next((labels[k] for k in sources if labels.get(k)), "loki")
        identity = orjson.dumps(sorted(labels.items()))
        for ns, line, meta in entries:
            digest = hashlib.blake2b(identity, digest_size=16)
            digest.update(ns.to_bytes(8, "big"))
            digest.update(line.encode())
            events.append({
                "topic": topic,
                "event_id": f"loki-{digest.hexdigest()}",
                "timestamp": intake.time_of_nanos(ns),
                "source": source,
                "payload": {
                    "line": line,
                    "labels": labels,
                    "structured_metadata": meta,
                    "time_unix_nano": str(ns),
                },
            })  # fmt: skip
    return events
