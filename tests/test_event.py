"""The event schema and body parsing, without any server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pubsub.event import BadInput, Event, parse_events


def ev(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "topic": "demo.logs",
        "event_id": "evt001",
        "timestamp": "2025-10-21T10:00:00Z",
        "source": "demo_client",
        "payload": {"msg": "event pertama"},
    }
    base.update(over)
    return base


def parse(body: Any, max_events: int = 100) -> list[Event]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_events(raw, max_events=max_events)


def refused(body: Any, max_events: int = 100) -> BadInput:
    with pytest.raises(BadInput) as info:
        parse(body, max_events)
    return info.value


def test_single_object_and_array_are_accepted() -> None:
    assert [e.event_id for e in parse(ev())] == ["evt001"]
    batch = parse([ev(event_id="a"), ev(event_id="b")])
    assert [e.event_id for e in batch] == ["a", "b"]
    assert batch[0].timestamp is not None and batch[0].timestamp.utcoffset() is not None


def test_timestamp_is_optional_and_payload_defaults_to_empty() -> None:
    body = ev()
    del body["timestamp"], body["payload"]
    (event,) = parse(body)
    assert event.timestamp is None
    assert event.payload == {}


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"timestamp": "2025-10-21T10:00:00"}, "timestamp"),  # no offset
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1700000000}, "timestamp"),
        ({"event_id": 123}, "event_id"),
        ({"event_id": ""}, "event_id"),
        ({"topic": "x" * 256}, "topic"),
        ({"topic": "bad\ntopic"}, "topic"),
        ({"payload": [1, 2]}, "payload"),
        ({"payload": {"s": "nul\x00inside"}}, "payload"),
        ({"payload": {"k\x00": 1}}, "payload"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_schema_violations_name_index_and_field(over: dict[str, Any], field: str) -> None:
    err = refused([ev(event_id="ok"), ev(**over)])
    assert err.status == 422
    assert err.problems[0]["index"] == 1
    assert err.problems[0]["field"].split(".")[0] == field


def test_missing_required_field() -> None:
    body = ev()
    del body["source"]
    err = refused(body)
    assert err.status == 422
    assert err.problems[0] == {"field": "source", "problem": "Field required"}


def test_infinite_numbers_and_deep_nesting_are_refused() -> None:
    err = refused(b'{"topic":"t","event_id":"e","source":"s","payload":{"x":1e400}}')
    assert err.status == 422 and err.problems[0]["field"] == "payload"
    err = refused(b'{"topic":"t","event_id":"e","source":"s","payload":{"x":%d}}' % 2**70)
    assert err.status == 422 and err.problems[0]["field"] == "payload"
    deep: Any = {}
    for _ in range(40):
        deep = {"d": deep}
    assert refused(ev(payload=deep)).status == 422


@pytest.mark.parametrize(
    "body", [b"", b"   ", b"{not json", b"[1,", b"nope", b"\xff\xfe{}", b'{"topic": "\\ud800"}']
)
def test_malformed_json_is_400(body: bytes) -> None:
    err = refused(body)
    assert err.status == 400
    assert err.message


def test_empty_and_oversized_batches() -> None:
    assert refused([]).status == 422
    assert refused([ev(event_id=str(i)) for i in range(11)], max_events=10).status == 413


def test_problem_list_is_bounded() -> None:
    err = refused([{"topic": 1}] * 5000, max_events=10_000)
    assert err.status == 422
    assert len(err.problems) == 20
    assert err.problem_count > 5000
    assert len(orjson.dumps(err.body())) < 5000


def test_topics_are_case_sensitive() -> None:
    a, b = parse([ev(topic="hai"), ev(topic="Hai")])
    assert a.topic != b.topic
