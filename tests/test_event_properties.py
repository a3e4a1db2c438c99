"""Property tests of the validator: whatever the body, a list of events or a 4xx, and valid
events come back exactly as sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.validate import parse_events, validate
from pubsub.http import Refusal
from pubsub.settings import Settings

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = Settings(max_batch_events=50)

names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x7f", min_codepoint=32),
    min_size=1,
    max_size=255,
)
json_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=20,
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)
timestamps = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 1, 1), timezones=offsets
)
events = st.fixed_dictionaries(
    {"topic": names, "event_id": names, "source": names},
    optional={
        "timestamp": timestamps.map(lambda d: d.isoformat()),
        "payload": st.dictionaries(json_text, json_values, max_size=5),
    },
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(events, min_size=1, max_size=5))
def test_valid_events_come_back_as_sent(batch: list[dict[str, Any]]) -> None:
    body = orjson.dumps(batch)
    parsed = parse_events(body, received_at=NOW, max_events=50, max_problems=20)
    validate(body, received_at=NOW, settings=SETTINGS)
    for sent, got in zip(batch, parsed, strict=True):
        assert got["topic"] == sent["topic"] and got["event_id"] == sent["event_id"]
        assert got.get("payload") == sent.get("payload", {})
        if "timestamp" in sent:
            assert got.get("timestamp") == datetime.fromisoformat(sent["timestamp"])
        else:
            assert got.get("timestamp") == NOW


def _outcome(body: bytes) -> None:
    try:
        validate(body, received_at=NOW, settings=SETTINGS)
    except Refusal as exc:
        assert 400 <= exc.status < 500
        assert exc.message
        assert len(exc.problems) <= 20


@settings(max_examples=300, deadline=None, derandomize=True)
@given(json_values | st.lists(json_values) | st.lists(st.dictionaries(names, json_values)))
def test_any_json_is_accepted_or_refused_with_a_4xx(value: Any) -> None:
    _outcome(json.dumps(value).encode())


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_any_bytes_are_accepted_or_refused_with_a_4xx(raw: bytes) -> None:
    _outcome(raw)
