"""The event schema and body parsing, without any server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ingest.validate import parse_events, validate
from pubsub.event import Event
from pubsub.http import Refusal
from pubsub.settings import Settings

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


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
    events = parse_events(raw, received_at=NOW, max_events=max_events, max_problems=20)
    # What ingest runs next: encoding, with its own checks.
    validate(raw, received_at=NOW, settings=Settings(max_batch_events=max_events))
    return events


def refused(body: Any, max_events: int = 100) -> Refusal:
    with pytest.raises(Refusal) as info:
        parse(body, max_events)
    return info.value


def test_single_object_and_array_are_accepted() -> None:
    assert [e["event_id"] for e in parse(ev())] == ["evt001"]
    batch = parse([ev(event_id="a"), ev(event_id="b", timestamp="2025-10-21T17:00:00+07:00")])
    assert [e["event_id"] for e in batch] == ["a", "b"]
    assert batch[0].get("timestamp") == batch[1].get("timestamp")


def test_timestamp_defaults_to_receive_time_and_payload_to_empty() -> None:
    body = ev()
    del body["timestamp"], body["payload"]
    (event,) = parse(body)
    assert event.get("timestamp") == NOW
    assert event.get("payload") == {}
    (event,) = parse(ev(timestamp=None))
    assert event.get("timestamp") == NOW


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"timestamp": "2025-10-21T10:00:00"}, "timestamp"),  # no offset
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1700000000}, "timestamp"),
        ({"timestamp": "0001-01-01T00:00:00Z"}, "timestamp"),
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
    deep = (
        b'{"topic":"t","event_id":"e","source":"s","payload":' + b'{"d":' * 300 + b"1" + b"}" * 301
    )
    err = refused(deep)
    assert err.status == 400 and "recursion" in err.message


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
    assert a["topic"] != b["topic"]


def test_integers_beyond_64_bits_are_named_by_the_payload_check() -> None:
    raw = (
        b'[{"topic":"t","event_id":"a","source":"s"},{"topic":"t","event_id":"e","source":"s","payload":{"x":[%d]}}]'
        % 2**70
    )
    with pytest.raises(Refusal) as info:
        parse(raw)
    assert info.value.status == 422
    assert info.value.problems == (
        {"index": 1, "field": "payload", "problem": "integers must fit in 64 bits"},
    )


def test_infinity_is_found_among_real_nulls() -> None:
    ok = b'[{"topic":"t","event_id":"a","source":"s","timestamp":null,"payload":{"n":null}}]'
    assert len(parse(ok)) == 1
    bad = (
        b'[{"topic":"t","event_id":"a","source":"s","payload":{"n":null,"s":"null"}},'
        b'{"topic":"t","event_id":"b","source":"s","payload":{"x":[null,-1e999]}}]'
    )
    err = refused(bad)
    assert (err.status, err.problems[0]["index"]) == (422, 1)


def test_ndjson_bodies() -> None:
    lines = b"\n".join(orjson.dumps(ev(event_id=str(i))) for i in range(3)) + b"\n\n"
    pieces = validate(lines, received_at=NOW, settings=Settings(), ndjson=True)
    assert sum(p.count for p in pieces) == 3
    for bad, status in [
        (b"", 400),
        (b"[1]\n", 400),
        (orjson.dumps(ev()) + b"," + orjson.dumps(ev()) + b"\n", 400),
        (orjson.dumps(ev()) + b"\n" + orjson.dumps(ev(timestamp="nope")) + b"\n", 422),
    ]:
        with pytest.raises(Refusal) as info:
            validate(bad, received_at=NOW, settings=Settings(), ndjson=True)
        assert info.value.status == status, bad


def test_an_event_over_the_size_limit_is_refused_naming_it_and_the_setting() -> None:
    small = {"topic": "t", "event_id": "s", "source": "s", "payload": {"m": "x"}}
    large = {"topic": "t", "event_id": "l", "source": "s", "payload": {"m": "x" * 2000}}
    settings = Settings(max_event_bytes=1000, message_max_bytes=4000)
    with pytest.raises(Refusal) as refused:
        validate(orjson.dumps([small, large, small]), received_at=NOW, settings=settings)
    assert refused.value.status == 413
    assert "PUBSUB_MAX_EVENT_BYTES" in refused.value.message
    assert [p["index"] for p in refused.value.problems] == [1]


def test_pieces_are_bounded_by_bytes_as_well_as_by_count() -> None:
    events = [
        {"topic": "t", "event_id": str(i), "source": "s", "payload": {"m": "x" * 900}}
        for i in range(10)
    ]
    settings = Settings(max_event_bytes=1000, message_max_bytes=2500, message_max_events=1000)
    pieces = validate(orjson.dumps(events), received_at=NOW, settings=settings)
    assert all(len(p.data) <= 2500 for p in pieces)
    assert sum(p.count for p in pieces) == 10 and len(pieces) >= 4
    ids = [e["event_id"] for p in pieces for e in orjson.loads(b"[" + p.data + b"]")]
    assert ids == [str(i) for i in range(10)]  # in order
