"""The event schema and the parsing of ``POST /publish`` bodies.

Every service imports :class:`Event` from here; what ingest accepts is exactly what the consumer
can store, so the validator also refuses what PostgreSQL would refuse later (NUL characters,
non-finite numbers) and what the wire encoder cannot carry (integers beyond 64 bits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

MAX_PAYLOAD_DEPTH = 32
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1

# Names are user input that ends up in URLs, logs and terminals: no control characters.
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$"),
]


class Event(BaseModel):
    """One event as publishers send it and as ``GET /events`` returns it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    topic: Name = Field(description="Stream the event belongs to; case-sensitive.")
    event_id: Name = Field(description="Unique within its topic; the deduplication key.")
    timestamp: AwareDatetime | None = Field(
        default=None,
        description="RFC 3339 time with offset; the receive time when absent.",
    )
    source: Name = Field(description="Who produced the event.")
    payload: dict[str, Any] = Field(default_factory=dict, description="Any JSON object.")

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp_is_text(cls, value: Any) -> Any:
        # Lax mode would read a bare number as Unix time; ask for what the docs promise.
        if value is not None and not isinstance(value, str | datetime):
            raise ValueError("timestamp must be an RFC 3339 string")
        return value

    @field_validator("timestamp")
    @classmethod
    def _timestamp_in_range(cls, value: datetime | None) -> datetime | None:
        if value is not None and not 1 <= value.year <= 9998:
            raise ValueError("timestamp year must be between 1 and 9998")
        return value

    @field_validator("payload")
    @classmethod
    def _payload_storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json(value, 0)
        return value


def _check_json(value: Any, depth: int) -> None:
    if depth > MAX_PAYLOAD_DEPTH:
        raise ValueError(f"payload nests deeper than {MAX_PAYLOAD_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("payload strings must not contain the NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise ValueError("payload keys must not contain the NUL character")
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("payload numbers must be finite")
    elif isinstance(value, int) and not _INT64_MIN <= value <= _UINT64_MAX:
        raise ValueError("payload integers must fit in 64 bits")


_ONE = TypeAdapter(Event)
_MANY = TypeAdapter(list[Event])


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


def parse_events(body: bytes, *, max_events: int, max_problems: int = 20) -> list[Event]:
    """Validate a JSON object or array of events; raise :class:`BadInput` on any problem.

    The batch is all or nothing: one bad item rejects the request, and the reply names the
    index and field of each problem, at most ``max_problems`` of them.
    """
    first = body.lstrip()[:1]
    if first == b"{":
        adapter: TypeAdapter[Any] = _ONE
    elif first == b"[":
        adapter = _MANY
    elif not first:
        raise BadInput(400, "empty body: send a JSON object or an array of objects")
    else:
        raise BadInput(400, "malformed JSON: the body must be a JSON object or array")
    try:
        parsed = adapter.validate_json(body)
    except ValidationError as exc:
        raise _bad_input(exc, max_problems) from None
    events: list[Event] = [parsed] if isinstance(parsed, Event) else parsed
    if not events:
        raise BadInput(422, "empty batch: the array holds no events")
    if len(events) > max_events:
        raise BadInput(413, f"batch of {len(events)} events exceeds the limit of {max_events}")
    return events


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
