"""The broker message format: many events per persistent message.

The broker's cost is per message, not per byte, so ingest packs up to
``Settings.message_max_events`` events into one JSON array body. Each message carries a fresh
``message_id`` (never the event id: duplicates are normal traffic) that the consumer records
in the same transaction as the events, so a redelivery after a crash is not counted twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import orjson

from pubsub.event import Event

CONTENT_TYPE = "application/json"
MESSAGE_TYPE = "pubsub.events.v1"
RECEIVED_AT = "x-received-at"  # header: when ingest accepted the request (RFC 3339)
REQUEST_ID = "x-request-id"  # header: the HTTP request the events came in


@dataclass(frozen=True, slots=True)
class Piece:
    """Encoded events, the inside of a JSON array (no brackets), ready to join into a body."""

    data: bytes
    count: int


def encode(events: Sequence[Event], *, per_piece: int) -> list[Piece]:
    """Encode events in pieces of at most ``per_piece``; TypeError if one cannot be encoded
    (see :func:`pubsub.event.check_payloads` for which)."""
    return [
        Piece(orjson.dumps(events[i : i + per_piece])[1:-1], len(events[i : i + per_piece]))
        for i in range(0, len(events), per_piece)
    ]


def pack(pieces: Iterable[bytes]) -> bytes:
    """Join pieces into one message body: a JSON array of events."""
    return b"[" + b",".join(pieces) + b"]"


def new_message_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Row:
    """An event as the consumer copies it into PostgreSQL (timestamp and payload as text)."""

    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: str
    received_at: str


class Undecodable(ValueError):
    """A message body that can never be stored; it belongs in the dead-letter queue."""


def decode(body: bytes, received_at: str) -> list[Row]:
    """Parse a message body into rows, or raise :class:`Undecodable`."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Undecodable(f"body is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise Undecodable("body is not a JSON array")
    return list(_rows(items, received_at))


def _rows(items: list[object], received_at: str) -> Iterator[Row]:
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise Undecodable(f"item {index} is not an object")
        try:
            topic, event_id = item["topic"], item["event_id"]
            timestamp, source, payload = item["timestamp"], item["source"], item["payload"]
        except KeyError as exc:
            raise Undecodable(f"item {index} lacks {exc.args[0]!r}") from None
        if not all(isinstance(v, str) for v in (topic, event_id, timestamp, source)):
            raise Undecodable(f"item {index} has a non-string key field")
        if not isinstance(payload, dict):
            raise Undecodable(f"item {index} has a non-object payload")
        yield Row(topic, event_id, timestamp, source, orjson.dumps(payload).decode(), received_at)
