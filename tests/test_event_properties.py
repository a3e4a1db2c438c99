"""Property tests of the validator: whatever the body, a list of events or a 4xx, and valid
events come back exactly as sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ingest.validate import EVENT, _built_right, parse_events, validate
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


# What a mapper might build: names valid or not (control characters, empty, too long), times
# aware or naive, in range or not, payloads that are dicts or not, a field missing or extra.
any_names = names | st.sampled_from(["", "a\x00b", "tab\there", "x" * 256, "\x7f"]) | st.none()
any_times = (
    timestamps
    | st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=offsets)
    | st.datetimes()
    | timestamps.map(lambda d: d.isoformat())
)
mapped = st.fixed_dictionaries(
    {"topic": any_names, "event_id": any_names, "source": any_names, "timestamp": any_times,
     "payload": st.dictionaries(json_text, json_values, max_size=3) | st.lists(json_values)},
    optional={"extra": st.just(1)},
)  # fmt: skip


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.lists(mapped | st.fixed_dictionaries({"topic": names}), min_size=1, max_size=4))
def test_the_mapped_events_shortcut_never_passes_what_the_schema_refuses(
    batch: list[dict[str, Any]],
) -> None:
    """``_built_right`` skips pydantic for events the protocol mappers built: it may send a
    good batch to pydantic, never let a bad one by."""
    valid = True
    for event in batch:
        try:
            EVENT.validate_python(event)
        except ValidationError:
            valid = False
    if _built_right(batch):
        assert valid


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(events, min_size=1, max_size=4))
def test_the_mapped_events_shortcut_takes_what_the_mappers_build(
    batch: list[dict[str, Any]],
) -> None:
    built = [
        {"topic": e["topic"], "event_id": e["event_id"], "source": e["source"],
         "timestamp": datetime.fromisoformat(e.get("timestamp", NOW.isoformat())),
         "payload": e.get("payload", {})}
        for e in batch
    ]  # fmt: skip
    assert _built_right(built)
