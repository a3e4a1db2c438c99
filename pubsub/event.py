"""The event schema and the parsing of ``POST /publish`` bodies.

Every service imports :data:`Event` from here; what ingest accepts is exactly what the consumer
can store, so the validator also refuses what PostgreSQL would refuse later (NUL characters,
non-finite numbers) and what the message encoder cannot carry (integers beyond 64 bits).

Events are validated by pydantic-core into plain dicts (a ``TypedDict``): on this hot path
model instances would cost more than the validation itself, and dicts encode to the broker
message with a single ``orjson.dumps`` per message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, NotRequired

import jiter
from pydantic import (
    AwareDatetime,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1

# Names are user input that ends up in URLs, logs and terminals: no control characters.
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$"),
]
# Strict: an RFC 3339 string, not a number read as Unix time. The bounds keep every timestamp
# representable after conversion to UTC, in Python and in PostgreSQL alike.
Timestamp = Annotated[
    AwareDatetime,
    Strict(),
    Field(gt=datetime(1, 1, 2, tzinfo=UTC), lt=datetime(9999, 12, 31, tzinfo=UTC)),
]


@with_config(ConfigDict(extra="forbid", allow_inf_nan=False))
class Event(TypedDict):
    """One event as publishers send it and as ``GET /events`` returns it."""

    topic: Annotated[Name, Field(description="Stream the event belongs to; case-sensitive.")]
    event_id: Annotated[Name, Field(description="Unique within its topic: the deduplication key.")]
    timestamp: NotRequired[
        Annotated[
            Timestamp | None,
            Field(description="RFC 3339 time with offset; the receive time when absent."),
        ]
    ]
    source: Annotated[Name, Field(description="Who produced the event.")]
    payload: NotRequired[Annotated[dict[str, Any], Field(description="Any JSON object.")]]


EVENT = TypeAdapter(Event)
EVENTS = TypeAdapter(list[Event])


@dataclass(frozen=True)
class BadInput(Exception):
    """A request body that is refused as a whole; ``status`` is the HTTP code to answer."""

    status: int
    message: str
    problems: tuple[dict[str, Any], ...] = ()
    problem_count: int = 0

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.problems:
            out["problems"] = list(self.problems)
            out["problem_count"] = self.problem_count
        return out


def parse_events(
    body: bytes,
    *,
    received_at: datetime,
    max_events: int,
    max_problems: int = 20,
) -> list[Event]:
    """Validate a JSON object or array of events; raise :class:`BadInput` on any problem.

    The batch is all or nothing: one bad item rejects the request, and the reply names the
    index and field of each problem, at most ``max_problems`` of them. The events come back
    complete: ``timestamp`` defaults to ``received_at`` and ``payload`` to ``{}``.

    Numbers that overflow to infinity pass this parser; :func:`check_encoded` catches them.
    """
    first = body.lstrip()[:1]
    if first == b"{":
        adapter: TypeAdapter[Any] = EVENT
    elif first == b"[":
        adapter = EVENTS
    elif not first:
        raise BadInput(400, "empty body: send a JSON object or an array of objects")
    else:
        raise BadInput(400, "malformed JSON: the body must be a JSON object or array")
    # NUL can only arrive escaped; the exact (slow) check runs only when the escape shows up.
    suspect = b"\\u0000" in body
    try:
        parsed = adapter.validate_json(body)
    except ValidationError as exc:
        raise _bad_input(exc, max_problems) from None
    events: list[Event] = [parsed] if first == b"{" else parsed
    if not events:
        raise BadInput(422, "empty batch: the array holds no events")
    if len(events) > max_events:
        raise BadInput(413, f"batch of {len(events)} events exceeds the limit of {max_events}")
    for event in events:
        if event.get("timestamp") is None:
            event["timestamp"] = received_at
        if "payload" not in event:
            event["payload"] = {}
    if suspect:
        check_payloads(events)
    _refuse_duplicate_keys(body)
    return events


def _refuse_duplicate_keys(body: bytes) -> None:
    # JSON leaves duplicate names undefined and parsers differ on which one wins: refuse them
    # rather than guess. pydantic-core keeps the last one silently; jiter (pydantic's parser,
    # as a library) can report them, at the cost of one more fast parse of valid bodies.
    try:
        jiter.from_json(body, catch_duplicate_keys=True, cache_mode="keys")
    except ValueError as exc:
        raise BadInput(422, str(exc)[:200]) from None


def check_encoded(body: bytes, events: list[Event], encoded: Sequence[bytes]) -> None:
    """Raise :class:`BadInput` if encoding changed a payload.

    orjson writes a non-finite float as ``null``: more nulls out than came in means the body
    held a number too large for a double. Counting bytes is cheap; the walk runs only then.
    """
    if sum(piece.count(b"null") for piece in encoded) > body.count(b"null"):
        check_payloads(events)


def check_payloads(events: list[Event]) -> None:
    """Raise :class:`BadInput` naming each event whose payload cannot be stored."""
    problems = []
    for index, event in enumerate(events):
        problem = _json_problem(event.get("payload", {}))
        if problem is not None:
            problems.append({"index": index, "field": "payload", "problem": problem})
    if problems:
        raise BadInput(
            422,
            f"{len(problems)} validation problem(s); nothing was accepted",
            tuple(problems[:20]),
            len(problems),
        )


def _json_problem(value: Any) -> str | None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "strings must not contain the NUL character"
        elif isinstance(item, dict):
            for key in item:
                if "\x00" in key:
                    return "keys must not contain the NUL character"
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "numbers must be finite"
        elif isinstance(item, int) and not _INT64_MIN <= item <= _UINT64_MAX:
            return "integers must fit in 64 bits"
    return None


def _bad_input(exc: ValidationError, max_problems: int) -> BadInput:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if errors and errors[0]["type"] == "json_invalid":
        return BadInput(400, f"malformed JSON: {errors[0]['msg']}")
    problems = []
    for err in errors[:max_problems]:
        loc = list(err["loc"])
        item: dict[str, Any] = {}
        if loc and isinstance(loc[0], int):
            item["index"] = loc.pop(0)
        item["field"] = ".".join(str(part) for part in loc) or None
        item["problem"] = err["msg"]
        problems.append(item)
    return BadInput(
        422,
        f"{len(errors)} validation problem(s); nothing was accepted",
        tuple(problems),
        len(errors),
    )
