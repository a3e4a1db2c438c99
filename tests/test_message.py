"""The broker message format, and the COPY rows the consumer makes of a message's events."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

import aio_pika
import orjson
import pytest

from consumer import blocks
from consumer.store import Row, copy_rows
from pubsub import message
from pubsub.event import Event

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
LIMIT = 1 << 20  # PUBSUB_MESSAGE_MAX_BYTES


def rows_of(outgoing: aio_pika.Message) -> list[Row]:
    """What the consumer makes of a message: decode, then a COPY row per event."""
    decoded = message.decode(outgoing, max_bytes=LIMIT)
    return [row for _, events in decoded.units for row in copy_rows(events, decoded.received_at)]


def raw(body: bytes) -> aio_pika.Message:
    return aio_pika.Message(body, message_id="m1", headers={message.RECEIVED_AT: "now"})


def test_round_trip_in_pieces() -> None:
    events: list[Event] = [
        {"topic": "t", "event_id": str(i), "source": "s", "timestamp": NOW, "payload": {"a": [i]}}
        for i in range(5)
    ]
    pieces = message.encode_events(events, per_piece=2)
    assert [p.count for p in pieces] == [2, 2, 1]
    outgoing = message.encode(
        [p.data for p in pieces],
        keys=[[p.key, p.count] for p in pieces],
        received_at="received",
        request_ids=["r1"],
    )
    rows = rows_of(outgoing)
    assert [(r.tenant, r.topic, r.event_id) for r in rows] == [
        ("default", "t", str(i)) for i in range(5)
    ]
    event_id, ts, source, received, rest = rows[3].head.split("\t")
    assert (event_id, source, received, rest) == ("3", "s", "received", "")
    assert rows[3].received == "received"
    assert rows[3].key == b"\x02" + b"3"  # an id that is not a UUID keys as its text
    assert datetime.fromisoformat(ts) == NOW
    assert rows[3].at == blocks.utc(NOW)  # in UTC, without a time zone
    assert orjson.loads(rows[3].payload) == {"a": [3]}
    assert message.decode(outgoing, max_bytes=LIMIT).request_ids == ["r1"]


def test_pieces_with_keys_are_units_of_their_own() -> None:
    events: list[Event] = [
        {"topic": "t", "event_id": str(i), "source": "s", "timestamp": NOW, "payload": {}}
        for i in range(3)
    ]
    keyed = message.encode_events(events[:2], per_piece=10, key="k")
    plain = message.encode_events(events[2:], per_piece=10)
    outgoing = message.encode(
        [p.data for p in keyed + plain],
        keys=[["k", 2], ["", 1]],
        received_at="now",
        request_ids=[],
    )
    decoded = message.decode(outgoing, max_bytes=LIMIT)
    assert [(key, len(evs)) for key, evs in decoded.units] == [
        ("k:k", 2),
        ("m:" + str(outgoing.message_id), 1),
    ]


def test_unencodable_payload_raises() -> None:
    event: Event = {"topic": "t", "event_id": "e", "source": "s", "payload": {"n": 2**70}}
    with pytest.raises(TypeError):
        message.encode_events([event], per_piece=10)


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",
        b"{}",
        b"[1]",
        b'[{"topic": "t"}]',
        b'[{"topic":1,"event_id":"e","timestamp":"t","source":"s","payload":{}}]',
        b'[{"topic":"t","event_id":"e","timestamp":"t","source":"s","payload":[]}]',
        b'[{"topic":"t\\tx","event_id":"e","timestamp":"t","source":"s","payload":{}}]',
        b'[{"topic":"t","event_id":"e\\n","timestamp":"t","source":"s","payload":{}}]',
    ],
)
def test_undecodable_bodies(body: bytes) -> None:
    with pytest.raises(message.Undecodable):
        rows_of(raw(body))


def test_a_message_without_id_or_receive_time_is_undecodable() -> None:
    with pytest.raises(message.Undecodable):
        message.decode(
            aio_pika.Message(b"[]", headers={message.RECEIVED_AT: "now"}), max_bytes=LIMIT
        )
    with pytest.raises(message.Undecodable):
        message.decode(aio_pika.Message(b"[]", message_id="m"), max_bytes=LIMIT)


def test_a_compressed_message_reads_as_the_same_events_in_fewer_bytes() -> None:
    events: list[Event] = [
        {"topic": "t", "event_id": str(i), "source": "s", "timestamp": NOW,
         "payload": {"line": f"GET /items/{i} 200", "level": "info"}}
        for i in range(200)
    ]  # fmt: skip
    pieces = message.encode_events(events, per_piece=1000)
    made = {
        compress: message.encode(
            [p.data for p in pieces], keys=[["", 200]], received_at="r", request_ids=[],
            compress=compress,
        )
        for compress in (False, True)
    }  # fmt: skip
    plain, packed = made[False], made[True]
    assert (plain.content_encoding, packed.content_encoding) == (None, "deflate")
    assert len(packed.body) * 4 < len(plain.body)
    assert rows_of(packed) == rows_of(plain)
    assert message.preview(packed) == message.preview(plain) == plain.body[:80].decode()


def test_a_small_message_goes_as_it_is() -> None:
    one: list[Event] = [{"topic": "t", "event_id": "1", "source": "s", "timestamp": NOW,
                         "payload": {"line": "GET /items/1 200"}}]  # fmt: skip
    (piece,) = message.encode_events(one, per_piece=1000)
    small = message.encode(
        [piece.data], keys=[["", 1]], received_at="r", request_ids=[], compress=True
    )
    assert small.content_encoding is None and len(small.body) < message.COMPRESS_FROM
    assert rows_of(small) == rows_of(
        message.encode([piece.data], keys=[["", 1]], received_at="r", request_ids=[])
    )


def deflated(body: bytes, encoding: str = "deflate") -> aio_pika.Message:
    return aio_pika.Message(
        body, content_encoding=encoding, message_id="m1", headers={message.RECEIVED_AT: "now"}
    )


@pytest.mark.parametrize(
    ("outgoing", "says"),
    [
        # A bomb: 3 MiB of spaces in a few kB; only twice the limit is ever inflated.
        (deflated(zlib.compress(b"[" + b" " * (3 * LIMIT) + b"]", 9)), "inflates past"),
        (deflated(zlib.compress(b"[]")[:-3]), "not one whole deflate stream"),
        (deflated(zlib.compress(b"[]") + b"more"), "not one whole deflate stream"),
        (deflated(b"not deflate"), "does not inflate"),
        (deflated(b"[]", "gzip"), "unknown content encoding"),
    ],
)
def test_a_compressed_body_that_is_not_what_ingest_writes_is_undecodable(
    outgoing: aio_pika.Message, says: str
) -> None:
    with pytest.raises(message.Undecodable, match=says):
        message.decode(outgoing, max_bytes=LIMIT)


def keyed_message(pieces: list[message.Piece]) -> aio_pika.Message:
    return message.encode(
        [p.data for p in pieces],
        keys=[p.entry() for p in pieces],
        received_at="now",
        request_ids=[],
    )


def test_a_key_names_one_body_and_the_parts_of_a_split_request() -> None:
    events: list[Event] = [
        {"topic": "t", "event_id": str(i), "source": "s", "timestamp": NOW, "payload": {}}
        for i in range(3)
    ]
    body = message.fingerprint(b"[the body]")
    split = message.encode_events(events, per_piece=2, key="X", fingerprint=body)
    decoded = message.decode(keyed_message(split), max_bytes=LIMIT)
    assert [key for key, _ in decoded.units] == [f"k:{body}:0:X", f"k:{body}:1:X"]
    assert decoded.claims == [("q:X", body)]  # the first part claims the key
    # A client's own key "X#0" is another key, whatever the split of "X" is called.
    own = message.encode_events(events[:1], per_piece=2, key="X#0", fingerprint=body)
    assert [key for key, _ in message.decode(keyed_message(own), max_bytes=LIMIT).units] == [
        f"k:{body}:0:X#0"
    ]
    # The same key with another body makes other ledger keys: another request.
    other = message.fingerprint(b"[another body]")
    again = message.encode_events(events, per_piece=2, key="X", fingerprint=other)
    assert {k for k, _ in message.decode(keyed_message(again), max_bytes=LIMIT).units}.isdisjoint(
        k for k, _ in decoded.units
    )
