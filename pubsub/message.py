"""The broker message: many events per persistent message, encoded and decoded here only.

The broker's cost is per message, not per byte, so ingest packs up to
``Settings.message_max_events`` events into one JSON array body, joining the events of
concurrent requests. Each message carries a fresh ``message_id`` (never the event id:
duplicates are normal traffic) and an ``x-pieces`` header that says which run of events came
from which request: ``[[key, count, fingerprint, part], ...]``, ``key`` being the request's
``Idempotency-Key`` (empty when the client sent none, and then only ``[key, count]``),
``fingerprint`` a hash of the request's body and ``part`` the piece's index in the request.
With ``PUBSUB_MESSAGE_COMPRESSION=deflate`` the body is zlib-compressed and the message's
``content_encoding`` says ``deflate``; plain bodies (no encoding) are read as well.

The consumer records a *ledger key* per piece in the same transaction as the events: the
client's key with the body's fingerprint and the part (``k:<fingerprint>:<part>:<key>``), or
the message id for pieces without a key. A redelivery after a crash, or a client's retry of a
request whose first answer was lost (same key, same body), is then recognised and not counted
twice; the same key with another body is another request, stored and counted as such. The
first part of a keyed request also *claims* its key (``q:<key>``, with the fingerprint), so a
key reused with another body is noticed and counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractMessage

from pubsub.event import Event
from pubsub.tenants import DEFAULT as DEFAULT_TENANT
from pubsub.tenants import ID as TENANT_ID

CONTENT_TYPE = "application/json"
MESSAGE_TYPE = "pubsub.events.v1"
RECEIVED_AT = "x-received-at"  # header: when ingest accepted the request (RFC 3339)
REQUEST_ID = "x-request-id"  # header: the HTTP requests the events came in (for logs)
PIECES = "x-pieces"  # header: [[idempotency key or "", event count], ...] in body order, as JSON
TENANT = "x-tenant"  # header: the tenant the events belong to; absent: default
DEFLATE = "deflate"  # content encoding: the body compressed by zlib
# A compressed body that inflates past this many times PUBSUB_MESSAGE_MAX_BYTES was not made by
# ingest (which packs at most that much): a bomb, refused before it fills the consumer's memory.
_INFLATE_FACTOR = 2


@dataclass(frozen=True, slots=True)
class Piece:
    """Encoded events, the inside of a JSON array (no brackets), ready to join into a body."""

    data: bytes
    count: int
    key: str = ""  # the request's Idempotency-Key
    fingerprint: str = ""  # of the request's body, with a key
    part: int = 0  # the piece's index within its request

    def entry(self) -> list[str | int]:
        """The piece's entry in the ``x-pieces`` header."""
        return [self.key, self.count, self.fingerprint, self.part]


def fingerprint(body: bytes) -> str:
    """What tells two requests under one key apart: a hash of the body as the client sent it
    (after any Content-Encoding is undone, so the same events gzipped or not are the same)."""
    return hashlib.blake2b(body, digest_size=12).hexdigest()


def encode_events(
    events: Sequence[Event],
    *,
    per_piece: int,
    max_bytes: int = 1 << 62,
    key: str = "",
    fingerprint: str = "",
) -> list[Piece]:
    """Encode events in pieces of at most ``per_piece`` events and, where more than one event,
    ``max_bytes``; TypeError if one cannot be encoded (see
    :func:`ingest.validate.check_payloads` for which). ``key``, the request's idempotency key,
    and the body's ``fingerprint`` name the pieces, with each one's index."""
    encoded: list[tuple[bytes, int]] = []
    pending = [events[i : i + per_piece] for i in range(0, len(events), per_piece)]
    pending.reverse()
    while pending:
        chunk = pending.pop()
        data = orjson.dumps(chunk)[1:-1]
        if len(data) + 2 > max_bytes and len(chunk) > 1:  # with its brackets
            # Rare (large events): halve until each half fits, keeping the events' order.
            half = len(chunk) // 2
            pending += [chunk[half:], chunk[:half]]
            continue
        encoded.append((data, len(chunk)))
    return [
        Piece(data, count, key, fingerprint if key else "", n)
        for n, (data, count) in enumerate(encoded)
    ]


# Bytes of events from which a message is deflated (see encode).
COMPRESS_FROM = 2048


def encode(
    pieces: Iterable[bytes],
    *,
    keys: Sequence[Sequence[str | int]],
    received_at: str,
    request_ids: Sequence[str],
    compress: bool = False,
    tenant: str = DEFAULT_TENANT,
) -> aio_pika.Message:
    """One persistent message holding ``pieces`` of ``tenant``; ``keys`` is ``[[key, count],
    ...]``. With ``compress``, a body of ``COMPRESS_FROM`` bytes or more is deflated
    (``content_encoding``: ``deflate``)."""
    body = b"[" + b",".join(pieces) + b"]"
    # Level 1: JSON events shrink several times over at a fraction of a microsecond each; the
    # broker writes, replicates and holds every byte, higher levels save little more. A small
    # message goes as it is: the broker's cost is then per message, not per byte, and
    # deflating and inflating it would cost ingest and the consumer more than it saves.
    compress = compress and len(body) >= COMPRESS_FROM
    headers: dict[str, Any] = {
        RECEIVED_AT: received_at,
        REQUEST_ID: ",".join(request_ids),
        # A JSON string, not an AMQP array: pamqp marshals arrays in Python, ~1.5 us an entry.
        PIECES: orjson.dumps(keys).decode(),
    }
    if tenant != DEFAULT_TENANT:  # default's messages stay as they were before tenants
        headers[TENANT] = tenant
    return aio_pika.Message(
        zlib.compress(body, 1) if compress else body,
        content_encoding=DEFLATE if compress else None,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=uuid.uuid4().hex,
        type=MESSAGE_TYPE,
        headers=headers,
    )


class Undecodable(ValueError):
    """A message that can never be stored; it belongs in the dead-letter queue."""


Unit = tuple[str, list[dict[str, Any]]]  # (ledger key, events): counted once, however delivered
Claim = tuple[str, str]  # (ledger key of an Idempotency-Key, the fingerprint of its first body)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A message's events grouped by ledger key, and where they came from."""

    message_id: str
    received_at: str  # RFC 3339, as ingest wrote it
    units: list[Unit]
    request_ids: list[str]
    claims: list[Claim]
    tenant: str = DEFAULT_TENANT

    @property
    def events(self) -> int:
        return sum(len(events) for _, events in self.units)

    def received_time(self) -> datetime:
        """``received_at`` as a time; now if unreadable (the lag metric is all it serves)."""
        try:
            accepted = datetime.fromisoformat(self.received_at)
        except ValueError:
            return datetime.now(UTC)
        return accepted if accepted.tzinfo else accepted.replace(tzinfo=UTC)


def decode(message: AbstractMessage, *, max_bytes: int) -> Decoded:
    """The events of a message made by :func:`encode`; raise :class:`Undecodable` if it is
    malformed: every event has each field with its type, and the pieces add up. ``max_bytes``
    is ``PUBSUB_MESSAGE_MAX_BYTES``: a compressed body is inflated only so far."""
    headers = message.headers or {}
    received_at = headers.get(RECEIVED_AT)
    if not message.message_id or not isinstance(received_at, str):
        raise Undecodable("message lacks message_id or received-at header")
    tenant = headers.get(TENANT, DEFAULT_TENANT)
    if not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant):
        raise Undecodable(f"{TENANT} header is not a tenant id")
    events = _events(body(message, limit=_INFLATE_FACTOR * max_bytes))
    units, claims = _units(events, message.message_id, headers.get(PIECES))
    if tenant != DEFAULT_TENANT:
        # Ledger keys are per tenant: two tenants may send the same Idempotency-Key. A tenant
        # id holds no "/", and default's keys start with a letter and ":".
        units = [(f"{tenant}/{key}", events) for key, events in units]
        claims = [(f"{tenant}/{key}", body) for key, body in claims]
    return Decoded(message.message_id, received_at, units, request_ids(headers), claims, tenant)


def body(message: AbstractMessage, *, limit: int) -> bytes:
    """The message's body as :func:`encode` wrote it, inflated if it was compressed, of at
    most ``limit`` bytes; :class:`Undecodable` if it is not."""
    encoding = message.content_encoding
    if not encoding:
        return message.body
    if encoding != DEFLATE:
        raise Undecodable(f"unknown content encoding {encoding[:40]!r}")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(message.body, limit)
    except zlib.error as exc:
        raise Undecodable(f"the body does not inflate: {exc}") from None
    if inflater.unconsumed_tail:
        raise Undecodable(f"the body inflates past {limit} bytes")
    if not inflater.eof or inflater.unused_data:
        raise Undecodable("the body is not one whole deflate stream")
    return out


def preview(message: AbstractMessage, size: int = 80) -> str:
    """The first ``size`` bytes of the message's body as text, inflated if it was compressed
    (as it arrived when it does not inflate): what a dead letter held."""
    raw = message.body
    if message.content_encoding == DEFLATE:
        with contextlib.suppress(zlib.error):
            raw = zlib.decompressobj().decompress(raw, size)
    return raw[:size].decode(errors="replace")


def request_ids(headers: Mapping[str, Any] | None) -> list[str]:
    """The HTTP request ids a message's events came in (for logs), from its headers."""
    ids = (headers or {}).get(REQUEST_ID)
    if isinstance(ids, bytes):
        ids = ids.decode(errors="replace")
    return ids.split(",") if isinstance(ids, str) and ids else []


def _events(body: bytes) -> list[dict[str, Any]]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Undecodable(f"body is not JSON: {exc}") from None
    if type(items) is not list:
        raise Undecodable("body is not a JSON array")
    item: Any = None
    try:
        for item in items:
            if not (
                type(item["topic"]) is str
                and type(item["event_id"]) is str
                and type(item["timestamp"]) is str  # RFC 3339 text on the wire
                and type(item["source"]) is str
                and type(item["payload"]) is dict
            ):
                raise Undecodable(f"event {items.index(item)} has a field of the wrong type")
    except (KeyError, TypeError) as exc:
        raise Undecodable(
            f"event {items.index(item)} lacks a field or is not an object: {exc}"
        ) from None
    return items


def _units(
    events: list[dict[str, Any]], message_id: str, pieces: object
) -> tuple[list[Unit], list[Claim]]:
    if pieces is None:
        return [("m:" + message_id, events)], []
    if isinstance(pieces, str | bytes):
        try:
            pieces = orjson.loads(pieces)
        except orjson.JSONDecodeError:
            raise Undecodable(f"{PIECES} header is not JSON") from None
    if not isinstance(pieces, list | tuple):
        raise Undecodable(f"{PIECES} header is not a list")
    units: list[Unit] = []
    claims: list[Claim] = []
    anonymous: list[dict[str, Any]] = []
    start = 0
    for entry in pieces:
        key, count, body, index = _entry(entry)
        part = events[start : start + count]
        start += count
        if key and body:
            units.append((f"k:{body}:{index}:{key}", part))
            if index == 0:
                claims.append(("q:" + key, body))
        elif key:  # a message of the version before fingerprints, still in the queue
            units.append(("k:" + key, part))
        else:
            anonymous.extend(part)
    if start != len(events):
        raise Undecodable(f"{PIECES} header counts {start} events, the body holds {len(events)}")
    if anonymous:
        units.append(("m:" + message_id, anonymous))
    return units, claims


def _entry(entry: object) -> tuple[str, int, str, int]:
    """``[key, count]`` or ``[key, count, fingerprint, part]``; Undecodable otherwise."""
    fields: list[Any] = list(entry) if isinstance(entry, list | tuple) else []
    if len(fields) == 2:
        fields += ["", 0]
    if len(fields) == 4 and isinstance(fields[0], bytes):
        try:
            fields[0] = fields[0].decode()
        except UnicodeDecodeError:
            raise Undecodable(f"{PIECES} header entry {entry!r} has a key not in UTF-8") from None
    if len(fields) != 4 or not (
        isinstance(fields[0], str) and isinstance(fields[2], str)
        and type(fields[1]) is int and fields[1] >= 0
        and type(fields[3]) is int and fields[3] >= 0
    ):  # fmt: skip
        raise Undecodable(f"{PIECES} header entry {entry!r} is not [key, count, ...]")
    return fields[0], fields[1], fields[2], fields[3]
