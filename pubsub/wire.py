"""The broker message format: many events per persistent message.

The broker's cost is per message, not per byte, so ingest packs up to
``Settings.message_max_events`` events into one JSON array body, joining the events of
concurrent requests. Each message carries a fresh ``message_id`` (never the event id:
duplicates are normal traffic) and an ``x-pieces`` header that says which run of events came
from which request: ``[[key, count], ...]``, ``key`` being the request's ``Idempotency-Key``
(empty when the client sent none).

The consumer records a *ledger key* per piece in the same transaction as the events: the
client's key, or the message id for pieces without one. A redelivery after a crash, or a
client's retry of a request whose first answer was lost, is then recognised and not counted
twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from pubsub.event import Event

CONTENT_TYPE = "application/json"
MESSAGE_TYPE = "pubsub.events.v1"
RECEIVED_AT = "x-received-at"  # header: when ingest accepted the request (RFC 3339)
REQUEST_ID = "x-request-id"  # header: the HTTP requests the events came in (for logs)
PIECES = "x-pieces"  # header: [[idempotency key or "", event count], ...] in body order, as JSON


@dataclass(frozen=True, slots=True)
class Piece:
    """Encoded events, the inside of a JSON array (no brackets), ready to join into a body."""

    data: bytes
    count: int
    key: str = ""


def encode(events: Sequence[Event], *, per_piece: int, key: str = "") -> list[Piece]:
    """Encode events in pieces of at most ``per_piece``; TypeError if one cannot be encoded
    (see :func:`pubsub.event.check_payloads` for which). ``key``, the request's idempotency
    key, names the pieces (``key#1``, ``key#2``... when there are several)."""
    chunks = [events[i : i + per_piece] for i in range(0, len(events), per_piece)]
    return [
        Piece(
            orjson.dumps(chunk)[1:-1],
            len(chunk),
            f"{key}#{n}" if key and len(chunks) > 1 else key,
        )
        for n, chunk in enumerate(chunks)
    ]


def pack(pieces: Iterable[bytes]) -> bytes:
    """Join pieces into one message body: a JSON array of events."""
    return b"[" + b",".join(pieces) + b"]"


def pieces_header(pieces: list[list[str | int]]) -> str:
    # A JSON string, not an AMQP array: pamqp marshals arrays in Python, ~1.5 us an entry.
    return orjson.dumps(pieces).decode()


def new_message_id() -> str:
    return uuid.uuid4().hex


# An event as the consumer stores it: its key, and a line of PostgreSQL's COPY text format
# (topic, event_id, timestamp, source, payload, received_at; tab-separated, not yet
# backslash-escaped). Lines are made once per event here, so storing a batch is a single COPY.
Row = tuple[tuple[str, str], str]


class Undecodable(ValueError):
    """A message body that can never be stored; it belongs in the dead-letter queue."""


def decode(body: bytes, received_at: str) -> list[Row]:
    """Parse a message body into rows, or raise :class:`Undecodable`."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Undecodable(f"body is not JSON: {exc}") from None
    if type(items) is not list:
        raise Undecodable("body is not a JSON array")
    rows: list[Row] = []
    append = rows.append
    dumps = orjson.dumps
    try:
        for item in items:
            topic, event_id = item["topic"], item["event_id"]
            timestamp, source, payload = item["timestamp"], item["source"], item["payload"]
            if not (
                type(topic) is str
                and type(event_id) is str
                and type(timestamp) is str
                and type(source) is str
                and type(payload) is dict
            ):
                raise Undecodable(f"event {len(rows)} has a field of the wrong type")
            text = dumps(payload).decode()
            append(
                (
                    (topic, event_id),
                    f"{topic}\t{event_id}\t{timestamp}\t{source}\t{text}\t{received_at}",
                )
            )
    except (KeyError, TypeError) as exc:
        raise Undecodable(f"event {len(rows)} lacks a field or is not an object: {exc}") from None
    # Separators inside a field would shift the columns of the COPY: refuse, cheaply, in C.
    blob = "\n".join(line for _, line in rows)
    if blob.count("\t") != 5 * len(rows) or blob.count("\n") != len(rows) - 1 or "\r" in blob:
        raise Undecodable("a field holds a tab, newline or carriage return")
    return rows


Unit = tuple[str, list[Row]]  # (ledger key, rows): counted once, whatever its deliveries


def decode_message(body: bytes, *, message_id: str, received_at: str, pieces: object) -> list[Unit]:
    """Rows of a message grouped by ledger key; raise :class:`Undecodable` if malformed."""
    rows = decode(body, received_at)
    if pieces is None:
        return [("m:" + message_id, rows)]
    if isinstance(pieces, str | bytes):
        try:
            pieces = orjson.loads(pieces)
        except orjson.JSONDecodeError:
            raise Undecodable(f"{PIECES} header is not JSON") from None
    if not isinstance(pieces, list | tuple):
        raise Undecodable(f"{PIECES} header is not a list")
    units: list[Unit] = []
    anonymous: list[Row] = []
    start = 0
    for entry in pieces:
        try:
            key, count = entry
            if isinstance(key, bytes):
                key = key.decode()
            if not isinstance(key, str) or not isinstance(count, int) or count < 0:
                raise ValueError
        except (TypeError, ValueError, UnicodeDecodeError):
            raise Undecodable(f"{PIECES} header entry {entry!r} is not [key, count]") from None
        part = rows[start : start + count]
        start += count
        if key:
            units.append(("k:" + key, part))
        else:
            anonymous.extend(part)
    if start != len(rows):
        raise Undecodable(f"{PIECES} header counts {start} events, the body holds {len(rows)}")
    if anonymous:
        units.append(("m:" + message_id, anonymous))
    return units
