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
from typing import Any

import cramjam
import orjson
from aiohttp import web
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import DecodeError

from ingest import intake, jsonsize, protowire
from ingest.receiver import Batch, Intake, Receiver, Tally, content_type
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

# One label of Prometheus' syntax: name="value", the value with \\, \" and \n escaped (no
# other escape), then a comma or the end. Matched from a position, never on a slice.
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\[\\"n])*)"\s*(,|$)')
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BLANK = re.compile(r"\s*")
_ESCAPE = re.compile(r"\\(.)")


def parse_labels(text: str) -> dict[str, str]:
    """``{app="x", env="y"}`` as a dict; :class:`Refusal` 400 if it is not in that syntax,
    or names a label twice. Linear in the text's length."""
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        raise Refusal(400, f'labels {text[:80]!r} are not of the form {{name="value", ...}}')
    end = len(inner) - 1
    at = _BLANK.match(inner, 1, end).end()  # type: ignore[union-attr]
    labels: dict[str, str] = {}
    while at < end:
        match = _LABEL.match(inner, at, end)
        if match is None:
            raise Refusal(400, f"labels {text[:80]!r}: cannot read from {inner[at : at + 20]!r}")
        name, value = match[1], match[2]
        if name in labels:
            raise Refusal(400, f"labels {text[:80]!r}: the label {name!r} is given twice")
        labels[name] = _ESCAPE.sub(_unescape, value) if "\\" in value else value
        at = match.end()
        if not match[3] and at < end:
            raise Refusal(400, f"labels {text[:80]!r}: cannot read from {inner[at : at + 20]!r}")
    return labels


def _unescape(match: re.Match[str]) -> str:
    return "\n" if match[1] == "n" else match[1]


class Push(Receiver):
    """``POST /loki/api/v1/push`` on :mod:`ingest.receiver`'s path; ``204`` once the broker
    confirmed the push's events, errors in plain text as Loki answers them."""

    name = "loki"

    def accept(self, request: web.Request) -> str:
        return content_type(request, PROTOBUF, JSON)

    def decode(self, intake: Intake) -> Batch:
        settings = intake.settings
        if intake.kind == PROTOBUF:
            streams = _from_protobuf(intake.body, settings, intake.hold)
        else:
            streams = _from_json(intake.body, settings, intake.hold)
        shared = Tally(intake.hold)
        events = to_events(streams, settings=settings, hold=shared)
        del streams
        if not events:
            return Batch([], 0)
        pieces = validate_mapped(events, settings=settings)
        # The encoding was held already, in part: each entry's copy of its stream's labels.
        intake.hold(max(0, sum(len(piece.data) for piece in pieces) - shared.total))
        return Batch(pieces, len(events))

    def reply(self, batch: Batch, intake: Intake) -> web.Response:
        return web.Response(status=204)

    def refuse(self, exc: Refusal, request_id: str) -> web.StreamResponse:
        # Plain text, as Loki answers: its clients log the body as it is. Each problem named
        # gets a line: entry (by its index across the push's streams), field, what is wrong.
        lines = [exc.message] + [
            f"entry {p.get('index', '?')}: {p.get('field') or 'event'}: {p['problem']}"
            for p in exc.problems
        ]
        return web.Response(
            status=exc.status,
            text="\n".join(lines) + "\n",
            headers={**dict(exc.headers), "X-Request-Id": request_id},
        )


# A stream: its labels, and its entries as (time in ns, line, structured metadata).
Stream = tuple[dict[str, str], list[tuple[int, str, dict[str, str]]]]

# Memory a parsed entry takes beyond its bytes (the protobuf message, the tuple, the dict).
_PARSED_PER_ENTRY = 400
_PARSED_PER_LABEL = 256
# Times an entry may carry: Unix nanoseconds in 64 bits, as Loki keeps them (the years 1677
# to 2262), each of which is an event's time and part of its id.
_EARLIEST_NS, _LATEST_NS = -(2**63), 2**63


def _from_protobuf(body: bytes, settings: Settings, hold: Callable[[int], None]) -> list[Stream]:
    """The streams of a snappy-compressed ``PushRequest``; its inflated size (which snappy's
    block format declares up front) is checked against the body limit and held in the budget
    (``hold``) before a byte is inflated, its entries counted before they are parsed."""
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
    entries = protowire.count(
        raw, (1, 2), limit=settings.max_batch_events, what="a Loki PushRequest"
    )
    _check_count(entries, settings.max_batch_events)
    # A label of a few bytes becomes two strings and a dict entry, and again when sorted for
    # the entries' ids: counted by its '="', before the labels are read.
    labels = raw.count(b'="')
    hold(2 * len(raw) + _PARSED_PER_ENTRY * entries + _PARSED_PER_LABEL * labels)
    message = PushRequest()
    try:
        message.ParseFromString(raw)
    except DecodeError as exc:
        raise Refusal(400, f"not a Loki PushRequest: {exc}") from None
    del raw
    streams: list[Stream] = []
    for n, stream in enumerate(message.streams):
        entries_of = []
        for m, e in enumerate(stream.entries):
            ns = e.timestamp.seconds * 10**9 + e.timestamp.nanos
            if not _EARLIEST_NS <= ns < _LATEST_NS:
                raise Refusal(400, f"streams[{n}].entries[{m}]: the timestamp is out of range")
            entries_of.append((ns, e.line, {p.name: p.value for p in e.structuredMetadata}))
        if len(stream.labels) > settings.max_event_bytes:
            # Every entry's event carries the labels: none of them could be stored.
            raise Refusal(
                413, f"streams[{n}]: labels of {len(stream.labels)} bytes, more than an event "
                f"may hold (PUBSUB_MAX_EVENT_BYTES, {settings.max_event_bytes})",
            )  # fmt: skip
        streams.append((parse_labels(stream.labels), entries_of))
    return streams


def _from_json(body: bytes, settings: Settings, hold: Callable[[int], None]) -> list[Stream]:
    hold(jsonsize.parsed_size(body))
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refusal(400, f"malformed JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("streams"), list):
        raise Refusal(400, 'the body must be {"streams": [{"stream": {...}, "values": [...]}]}')
    count = sum(
        len(values) for stream in document["streams"]
        if isinstance(stream, dict) and isinstance(values := stream.get("values"), list)
    )  # fmt: skip
    _check_count(count, settings.max_batch_events)
    streams: list[Stream] = []
    for n, stream in enumerate(document["streams"]):
        labels = stream.get("stream") if isinstance(stream, dict) else None
        values = stream.get("values") if isinstance(stream, dict) else None
        if not isinstance(labels, dict) or not isinstance(values, list):
            raise Refusal(400, f'streams[{n}] needs a "stream" object and a "values" array')
        for name, value in labels.items():
            if not _LABEL_NAME.fullmatch(name):
                raise Refusal(
                    400, f"streams[{n}].stream: {name[:40]!r} is not a label name "
                    "([A-Za-z_][A-Za-z0-9_]*)",
                )  # fmt: skip
            if not isinstance(value, str):
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
    if not int(ns) < _LATEST_NS:
        raise Refusal(400, f"{where}: the time is out of range")
    if not isinstance(line, str) or not isinstance(meta, dict):
        raise Refusal(400, f"{where}: the line must be a string, metadata an object")
    if not all(isinstance(v, str) for v in meta.values()):
        # Loki's structured metadata are labels: a name and a string.
        raise Refusal(400, f"{where}: structured metadata values must be strings")
    return int(ns), line, meta


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise Refusal(413, f"{count} entries in one push, over PUBSUB_MAX_BATCH_EVENTS ({limit})")


def to_events(
    streams: list[Stream], *, settings: Settings, hold: Callable[[int], None] = lambda _: None
) -> list[dict[str, Any]]:
    """An event for each entry. Every event carries its stream's labels: shared in memory,
    written out once per event when encoded, so ``hold`` is told that size for each stream's
    entries before they are mapped."""
    count = sum(len(entries) for _, entries in streams)
    _check_count(count, settings.max_batch_events)
    topics = [k.strip() for k in settings.loki_topic_labels.split(",") if k.strip()]
    sources = [k.strip() for k in settings.loki_source_labels.split(",") if k.strip()]
    events: list[dict[str, Any]] = []
    for labels, entries in streams:
        topic = next((labels[k] for k in topics if labels.get(k)), "loki")
        source = next((labels[k] for k in sources if labels.get(k)), "loki")
        identity = orjson.dumps(sorted(labels.items()))
        hold(len(identity) * len(entries))
        for ns, line, meta in entries:
            digest = hashlib.blake2b(identity, digest_size=16)
            digest.update(ns.to_bytes(8, "big", signed=True))  # as unsigned, for times after 1970
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
