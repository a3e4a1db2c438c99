"""The broker message format."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from pubsub import wire
from pubsub.event import Event

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_round_trip_in_pieces() -> None:
    events: list[Event] = [
        {"topic": "t", "event_id": str(i), "source": "s", "timestamp": NOW, "payload": {"a": [i]}}
        for i in range(5)
    ]
    pieces = wire.encode(events, per_piece=2)
    assert [p.count for p in pieces] == [2, 2, 1]
    rows = wire.decode(wire.pack(p.data for p in pieces), "received")
    assert [key for key, _ in rows] == [("t", str(i)) for i in range(5)]
    topic, event_id, ts, source, payload, received = rows[3][1].split("\t")
    assert (topic, event_id, source, received) == ("t", "3", "s", "received")
    assert datetime.fromisoformat(ts) == NOW
    assert orjson.loads(payload) == {"a": [3]}


def test_unencodable_payload_raises() -> None:
    event: Event = {"topic": "t", "event_id": "e", "source": "s", "payload": {"n": 2**70}}
    with pytest.raises(TypeError):
        wire.encode([event], per_piece=10)


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
    with pytest.raises(wire.Undecodable):
        wire.decode(body, "now")
