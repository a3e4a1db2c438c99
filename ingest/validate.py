"""What a ``POST /publish`` body must pass before a byte goes to the broker.

Request body -> validated events (:data:`pubsub.event.Event`) -> encoded pieces of a broker
message, or a :class:`~pubsub.http.Refusal` that says what is wrong. What ingest accepts is
exactly what the consumer can store, so the checks also refuse what PostgreSQL would refuse
later (NUL characters, non-finite numbers) and what the message encoder cannot carry (integers
beyond 64 bits).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, cast

import jiter
import orjson
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from ingest import jsonsize
from ingest.intake import more_lines_than
from pubsub import message
from pubsub.event import EARLIEST, LATEST, Event, is_name
from pubsub.http import Refusal
from pubsub.settings import Settings

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
EVENT = TypeAdapter(Event)
_EVENTS = TypeAdapter(list[Event])


def validate(
    body: bytes,
    *,
    received_at: datetime,
    settings: Settings,
    key: str = "",
    ndjson: bool = False,
    hold: Callable[[int], None] | None = None,
) -> list[message.Piece]:
    """Everything a ``POST /publish`` body must pass before a byte goes to the broker.

    With ``ndjson`` the body holds one event object per line (blank lines are ignored), as log
    shippers send them; problems then name the line by its index from 0.
    ``hold`` is told what parsing the body will take in memory, before it is parsed.
    Raises :class:`~pubsub.http.Refusal` with the HTTP status and a message for the client.
    """
    lines = 0
    if ndjson:
        limit = settings.max_batch_events
        if body.count(b"\n") >= limit and more_lines_than(body, limit):
            raise Refusal(413, f"batch of more than {limit} events exceeds the limit of {limit}")
        body, lines = _ndjson_to_array(body)
    if hold is not None:
        hold(jsonsize.parsed_size(body))
    events = parse_events(
        body,
        received_at=received_at,
        max_events=settings.max_batch_events,
        max_problems=settings.max_errors_reported,
    )
    try:
        pieces = message.encode_events(
            events,
            per_piece=settings.message_max_events,
            max_bytes=settings.message_max_bytes,
            key=key,
            fingerprint=message.fingerprint(body) if key else "",
        )
    except TypeError:  # an integer beyond 64 bits
        check_payloads(events, max_problems=settings.max_errors_reported)  # names the event
        raise Refusal(422, "an event cannot be encoded; nothing was accepted") from None
    check_encoded(
        body, events, [piece.data for piece in pieces], max_problems=settings.max_errors_reported
    )
    check_sizes(len(body), events, pieces, settings=settings)
    if ndjson and len(events) != lines:
        # '{..},{..}' on one line would otherwise pass as two events.
        raise Refusal(400, "each line must hold exactly one JSON object")
    return pieces


def _ndjson_to_array(body: bytes) -> tuple[bytes, int]:
    # One line at a time: splitting would hold an entry for every blank line too.
    lines = [line.removesuffix(b"\n") for line in io.BytesIO(body) if not line.isspace()]
    if not lines:
        raise Refusal(400, "empty body: send one JSON object per line")
    for number, line in enumerate(lines):
        if not line.lstrip().startswith(b"{"):
            raise Refusal(400, f"line {number} (non-blank lines, from 0) is not a JSON object")
    return b"[" + b",".join(lines) + b"]", len(lines)


def parse_events(
    body: bytes,
    *,
    received_at: datetime,
    max_events: int,
    max_problems: int,
) -> list[Event]:
    """Validate a JSON object or array of events; raise :class:`Refusal` on any problem.

    The batch is all or nothing: one bad item rejects the request, and the reply names the
    index and field of each problem, at most ``max_problems`` of them. The events come back
    complete: ``timestamp`` defaults to ``received_at`` and ``payload`` to ``{}``.

    Numbers that overflow to infinity pass this parser; :func:`check_encoded` catches them.
    """
    first = body.lstrip()[:1]
    if first == b"{":
        adapter: TypeAdapter[Any] = EVENT
    elif first == b"[":
        adapter = _EVENTS
    elif not first:
        raise Refusal(400, "empty body: send a JSON object or an array of objects")
    else:
        raise Refusal(400, "malformed JSON: the body must be a JSON object or array")
    # Counted (and duplicate names refused) on the parsed structure before a single event is
    # validated: pydantic would otherwise validate, and list the problems of, every item.
    count = _count(body, max_events)
    # NUL can only arrive escaped; the exact (slow) check runs only when the escape shows up.
    suspect = b"\\u0000" in body
    try:
        parsed = adapter.validate_json(body)
    except ValidationError as exc:
        raise _bad_input(exc, max_problems, body=body if first == b"[" else None) from None
    events: list[Event] = [parsed] if first == b"{" else parsed
    if not count:
        raise Refusal(422, "empty batch: the array holds no events")
    for event in events:
        if event.get("timestamp") is None:
            event["timestamp"] = received_at
        if "payload" not in event:
            event["payload"] = {}
    if suspect:
        check_payloads(events, max_problems=max_problems)
    return events


def _count(body: bytes, max_events: int) -> int:
    """The events of a body (1 for an object), parsed but not validated; :class:`Refusal`
    413 past ``max_events``, 400 past the nesting the parser allows, 422 for a name given
    twice in one object."""
    # JSON leaves duplicate names undefined and parsers differ on which one wins: refuse them
    # rather than guess. pydantic-core keeps the last one silently; jiter (pydantic's parser,
    # as a library) reports them, in the one fast parse that also counts the events.
    try:
        parsed = jiter.from_json(body, catch_duplicate_keys=True, cache_mode="keys")
    except ValueError as exc:
        reason = str(exc)
        if "duplicate key" in reason:
            raise Refusal(422, reason[:200]) from None
        if "recursion limit" in reason:
            raise Refusal(
                400, f"the body nests deeper than {JSON_DEPTH} levels of objects and arrays "
                f"({reason[:100]})",
            ) from None  # fmt: skip
        raise Refusal(400, f"malformed JSON: {reason[:200]}") from None
    count = len(parsed) if isinstance(parsed, list) else 1
    if count > max_events:
        raise Refusal(413, f"batch of {count} events exceeds the limit of {max_events}")
    return count


# The deepest nesting of objects and arrays that the JSON parser (jiter, in pydantic) reads.
JSON_DEPTH = 200


def check_encoded(
    body: bytes, events: list[Event], encoded: Sequence[bytes], *, max_problems: int
) -> None:
    """Raise :class:`~pubsub.http.Refusal` if encoding changed a payload.

    orjson writes a non-finite float as ``null``: more nulls out than came in means the body
    held a number too large for a double. Counting bytes is cheap; the walk runs only then.
    """
    if sum(piece.count(b"null") for piece in encoded) > body.count(b"null"):
        check_payloads(events, max_problems=max_problems)


def check_sizes(
    size: int, events: list[Event], pieces: Sequence[message.Piece], *, settings: Settings
) -> None:
    """Raise :class:`~pubsub.http.Refusal` (413) naming each event larger than
    ``PUBSUB_MAX_EVENT_BYTES`` as stored. Free when the ``size`` of what was sent could not
    hold one (an event grows by at most its receive time when encoded); otherwise only pieces
    that could hold one are looked into."""
    limit = settings.max_event_bytes
    if size + 64 <= limit:
        return
    problems: list[dict[str, object]] = []
    start = 0
    for piece in pieces:
        if len(piece.data) > limit:
            for index in range(start, start + piece.count):
                size = len(orjson.dumps(events[index]))
                if size > limit:
                    problems.append({"index": index, "field": None,
                                     "problem": f"the event is {size} bytes"})  # fmt: skip
        start += piece.count
    if problems:
        raise Refusal(
            413,
            f"{len(problems)} event(s) over PUBSUB_MAX_EVENT_BYTES ({limit} bytes); nothing "
            "was accepted",
            problems=tuple(problems[: settings.max_errors_reported]),
            problem_count=len(problems),
        )


def check_payloads(events: list[Event], *, max_problems: int) -> None:
    """Raise :class:`~pubsub.http.Refusal` naming each event whose payload cannot be stored."""
    problems = []
    for index, event in enumerate(events):
        problem = _json_problem(event.get("payload", {}))
        if problem is not None:
            problems.append({"index": index, "field": "payload", "problem": problem})
    if problems:
        raise Refusal(
            422,
            f"{len(problems)} validation problem(s); nothing was accepted",
            tuple(problems[:max_problems]),
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


def _bad_input(exc: ValidationError, max_problems: int, *, body: bytes | None = None) -> Refusal:
    """The refusal naming at most ``max_problems`` of ``exc``'s problems, and how many there
    are. For a batch (its ``body`` given) only the items needed to name them are looked into
    again, so a body with a problem in every item never has all of them built."""
    total = exc.error_count()
    if body is not None and total > max_problems:
        errors = _first_problems(body, max_problems)
    else:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if errors and errors[0]["type"] == "json_invalid":
        return Refusal(400, f"malformed JSON: {errors[0]['msg']}")
    problems = []
    for err in errors[:max_problems]:
        loc = list(err["loc"])
        item: dict[str, Any] = {}
        if loc and isinstance(loc[0], int):
            item["index"] = loc.pop(0)
        item["field"] = ".".join(str(part) for part in loc) or None
        item["problem"] = err["msg"]
        problems.append(item)
    return Refusal(
        422,
        f"{total} validation problem(s); nothing was accepted",
        tuple(problems),
        total,
    )


def _first_problems(body: bytes, limit: int) -> list[ErrorDetails]:
    """The first ``limit`` problems of a batch, found item by item (each item as JSON again,
    as pydantic read it), located as in the batch's own error."""
    found: list[ErrorDetails] = []
    for index, item in enumerate(jiter.from_json(body, cache_mode="keys")):
        try:
            EVENT.validate_json(orjson.dumps(item))
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False, include_context=False):
                found.append({**err, "loc": (index, *err["loc"])})
                if len(found) >= limit:
                    return found
    return found


def validate_mapped(events: list[dict[str, Any]], *, settings: Settings) -> list[message.Piece]:
    """The pieces of events this process mapped from another protocol's records (timestamps
    as aware datetimes), with the checks of :func:`validate`, run on the objects: there is no
    JSON body to parse again. Raises :class:`~pubsub.http.Refusal` as :func:`validate` does."""
    if len(events) > settings.max_batch_events:
        raise Refusal(
            413, f"batch of {len(events)} events exceeds the limit of {settings.max_batch_events}"
        )
    if _built_right(events):
        checked = cast(list[Event], events)
    else:  # pydantic names what is wrong
        try:
            checked = _EVENTS.validate_python(events)
        except ValidationError as exc:
            raise _bad_input(exc, settings.max_errors_reported) from None
    try:
        pieces = message.encode_events(
            checked, per_piece=settings.message_max_events, max_bytes=settings.message_max_bytes
        )
    except TypeError:  # an integer beyond 64 bits
        check_payloads(checked, max_problems=settings.max_errors_reported)
        raise Refusal(422, "an event cannot be encoded; nothing was accepted") from None
    # NUL, which PostgreSQL refuses, can only show as this escape; the walk runs only then.
    if any(b"\\u0000" in piece.data for piece in pieces):
        check_payloads(checked, max_problems=settings.max_errors_reported)
    check_sizes(sum(len(p.data) for p in pieces), checked, pieces, settings=settings)
    return pieces


_UNSEEN = object()  # no value a mapper builds


def _built_right(events: list[dict[str, Any]]) -> bool:
    """Whether every mapped event certainly passes :data:`~pubsub.event.Event` as it is: the
    schema's checks, made on the values the mappers build (times with a fixed offset, plain
    dicts) at a fraction of what pydantic takes to check and copy each event. False sends the
    batch to pydantic. The payload's keys are not looked at: encoding refuses any but strings."""
    topic: object = _UNSEEN
    source: object = _UNSEEN
    try:
        for event in events:
            # A request's events mostly share their topic and source objects: checked once.
            if event["topic"] is not topic and not is_name(topic := event["topic"]):
                return False
            if event["source"] is not source and not is_name(source := event["source"]):
                return False
            ts = event["timestamp"]
            if not (
                len(event) == 5  # the five fields, each looked up: no other field
                and is_name(event["event_id"])
                and type(event["payload"]) is dict
                and type(ts) is datetime
                and type(ts.tzinfo) is timezone
                and EARLIEST < ts < LATEST
            ):
                return False
    except (KeyError, TypeError):
        return False
    return True


def validate_records(
    events: list[dict[str, Any]],
    *,
    settings: Settings,
    hold: Callable[[int], None],
) -> tuple[list[message.Piece], dict[int, str]]:
    """The pieces of the events mapped from another protocol's records that can be stored,
    and why each other one cannot (by its index): the protocols that accept a request in part
    name the records they leave out.

    The batch is validated whole first; only when that fails is each event checked on its
    own, so a request without a bad record costs one validation. ``hold`` is told the size of
    the encoded events (what they add to the request's memory)."""
    if not events:
        return [], {}
    try:
        pieces = validate_mapped(events, settings=settings)
    except Refusal as exc:
        if exc.status not in (413, 422):
            raise
        problems = {i: p for i, e in enumerate(events) if (p := event_problem(e, settings))}
        if not problems:
            raise  # not one record's fault (the batch as a whole is over a limit)
        kept = [e for i, e in enumerate(events) if i not in problems]
        pieces = validate_mapped(kept, settings=settings) if kept else []
    else:
        problems = {}
    hold(sum(len(p.data) for p in pieces))
    return pieces, problems


def event_problem(event: dict[str, Any], settings: Settings) -> str | None:
    """Why ``event``, mapped from a record of another protocol, cannot be stored, or None."""
    try:
        EVENT.validate_python(event)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        return f"the record's {where}: {error['msg']}"
    try:
        check_payloads([cast(Event, event)], max_problems=1)  # NUL, which PostgreSQL refuses
    except Refusal as exc:
        return f"the record's payload: {exc.message}"
    try:
        size = len(orjson.dumps(event))
    except orjson.JSONEncodeError as exc:  # nested past what JSON is written to
        return f"the record cannot be written as JSON: {exc}"
    if size > settings.max_event_bytes:
        return (
            f"a record of {size} bytes as an event exceeds PUBSUB_MAX_EVENT_BYTES "
            f"({settings.max_event_bytes})"
        )
    return None
