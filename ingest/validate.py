"""Request body -> validated events -> encoded pieces for the broker, or BadInput."""

from __future__ import annotations

from datetime import datetime

from pubsub import wire
from pubsub.event import BadInput, check_encoded, check_payloads, parse_events
from pubsub.settings import Settings


def validate(
    body: bytes, *, received_at: datetime, settings: Settings, key: str = ""
) -> list[wire.Piece]:
    """Everything a ``POST /publish`` body must pass before a byte goes to the broker.

    Raises :class:`BadInput` with the HTTP status and a message for the client.
    """
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
    return pieces
