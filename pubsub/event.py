"""The event schema, one definition for every service.

Ingest validates request bodies against it (:mod:`ingest.validate`), the consumer stores what
it allows, the read API returns it and the OpenAPI documents describe it.

Events are validated by pydantic-core into plain dicts (a ``TypedDict``): on this hot path
model instances would cost more than the validation itself, and dicts encode to the broker
message with a single ``orjson.dumps`` per message.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, NotRequired

from pydantic import (
    AwareDatetime,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    with_config,
)
from typing_extensions import TypedDict

# The longest topic, event id or source, in characters.
NAME_MAX = 255
# Names are user input that ends up in URLs, logs and terminals: no control characters.
_NAME_CHARACTER = r"[^\x00-\x1f\x7f]"
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_MAX, pattern=f"^{_NAME_CHARACTER}+$"),
]
# The same rule as a Python pattern, for events this code builds itself (see is_name).
_NAME = re.compile(f"{_NAME_CHARACTER}{{1,{NAME_MAX}}}")
# The bounds keep every timestamp representable after conversion to UTC, in Python and in
# PostgreSQL alike (exclusive).
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)
# Strict: an RFC 3339 string, not a number read as Unix time.
Timestamp = Annotated[AwareDatetime, Strict(), Field(gt=EARLIEST, lt=LATEST)]


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


def is_name(text: object) -> bool:
    """Whether ``text`` is a valid topic, event id or source: what :data:`Name` accepts."""
    return type(text) is str and _NAME.fullmatch(text) is not None
