"""The broker message format."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from pubsub import wire
from pubsub.event import Event

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_round_trip_fills_missing_timestamp() -> None:
    events = [
        Event(topic="t", event_id="1", source="s", payload={"a": [1, "x"]}),
        Event(topic="t", event_id="2", source="s", timestamp=NOW, payload={}),
    ]
    body = wire.pack(wire.encode_event(e, NOW) for e in events)
    rows = wire.decode(body, NOW.isoformat())
    assert [r.event_id for r in rows] == ["1", "2"]
    assert datetime.fromisoformat(rows[0].timestamp) == NOW
    assert orjson.loads(rows[0].payload) == {"a": [1, "x"]}
    assert rows[1].received_at == NOW.isoformat()


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
