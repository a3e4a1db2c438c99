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
    rows = wire.decode(wire.pack(p.data for p in pieces), NOW.isoformat())
    assert [r.event_id for r in rows] == ["0", "1", "2", "3", "4"]
    assert datetime.fromisoformat(rows[0].timestamp) == NOW
    assert orjson.loads(rows[3].payload) == {"a": [3]}
    assert rows[1].received_at == NOW.isoformat()


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
    ],
)
def test_undecodable_bodies(body: bytes) -> None:
    with pytest.raises(wire.Undecodable):
        wire.decode(body, "now")
