"""Request body -> validated events -> encoded pieces for the broker, or BadInput."""

from __future__ import annotations

from datetime import datetime

from pubsub import wire
from pubsub.event import BadInput, check_encoded, check_payloads, parse_events
from pubsub.settings import Settings


def validate(
    body: bytes,
    *,
    received_at: datetime,
    settings: Settings,
    key: str = "",
    ndjson: bool = False,
) -> list[wire.Piece]:
    """Everything a ``POST /publish`` body must pass before a byte goes to the broker.

    With ``ndjson`` the body holds one event object per line (blank lines are ignored), as log
    shippers send them; problems then name the line by its index from 0.
    Raises :class:`BadInput` with the HTTP status and a message for the client.
    """
    lines = 0
    if ndjson:
        body, lines = _ndjson_to_array(body)
    events = parse_events(
        body,
        received_at=received_at,
        max_events=settings.max_batch_events,
        max_problems=settings.max_errors_reported,
    )
    try:
        pieces = wire.encode(events, per_piece=settings.message_max_events, key=key)
    except TypeError:  # an integer beyond 64 bits
        check_payloads(events)  # raises BadInput naming the event
        raise BadInput(422, "an event cannot be encoded; nothing was accepted") from None
    check_encoded(body, events, [piece.data for piece in pieces])
    if ndjson and len(events) != lines:
        # '{..},{..}' on one line would otherwise pass as two events.
        raise BadInput(400, "each line must hold exactly one JSON object")
    return pieces


def _ndjson_to_array(body: bytes) -> tuple[bytes, int]:
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        raise BadInput(400, "empty body: send one JSON object per line")
    for number, line in enumerate(lines):
        if not line.lstrip().startswith(b"{"):
            raise BadInput(400, f"line {number} (non-blank lines, from 0) is not a JSON object")
    return b"[" + b",".join(lines) + b"]", len(lines)
