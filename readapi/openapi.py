"""The OpenAPI documents of the read API: its own, and the whole system's as the gateway
serves it."""

from __future__ import annotations

from typing import Any

from typing_extensions import TypedDict

from pubsub import openapi
from pubsub.event import Event
from pubsub.openapi import ErrorReply


class Stats(TypedDict):
    """Lifetime counters (``received = unique_processed + duplicate_dropped``), what is stored
    now (``stored = unique_processed - expired``, ``expired`` being the events the retention
    removed), and the topics that have stored events (at most ``PUBSUB_STATS_MAX_TOPICS``
    names, in order; ``topic_count`` counts them all)."""

    received: int
    unique_processed: int
    duplicate_dropped: int
    stored: int
    expired: int
    topics: list[str]
    topics_truncated: bool
    topic_count: int
    uptime: float
    queued_messages: int | None
    dead_letter_messages: int | None


_TEXT = {"type": "string", "maxLength": 255}
_FILTERS = [
    {"name": "topic", "in": "query", "schema": _TEXT, "description": "Only this topic."},
    {"name": "source", "in": "query", "schema": _TEXT, "description": "Only this source."},
    {
        "name": "event_id",
        "in": "query",
        "schema": _TEXT,
        "description": "Only this event id (found in every topic when no topic is given).",
    },
]


def document(*, max_limit: int) -> dict[str, Any]:
    time_param = {"type": "string", "format": "date-time"}
    events = {
        "get": {
            "summary": "Stored events, ordered by timestamp, keyset-paginated.",
            "security": openapi.OPTIONAL_BEARER,
            "description": 'The next page is in the `Link: <...>; rel="next"` header.',
            "parameters": [
                *_FILTERS,
                {"name": "since", "in": "query", "schema": time_param},
                {"name": "until", "in": "query", "schema": time_param},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": max_limit},
                },
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": openapi.json_body(
                    {"type": "array", "items": openapi.ref("Event")}, "A page of events."
                ),
                **openapi.errors(400, 401, 503),
            },
        }
    }
    stream = {
        "get": {
            "summary": "Live tail: stored events as Server-Sent Events, as they are stored.",
            "security": openapi.OPTIONAL_BEARER,
            "description": (
                "One SSE event per stored event, its data in the shape of `/events`, its `id` a "
                "cursor: reconnect with `Last-Event-ID` to resume with no gap and no repeat. "
                "Without `since` or `Last-Event-ID` the stream starts with what is stored from "
                "now on. Heartbeats are SSE comments. The stream ends with `event: error` when "
                "the client reads more slowly than events arrive, and with `event: end` when the "
                'service shuts down; both carry `{"error": "..."}` saying why.'
            ),
            "parameters": [
                *_FILTERS,
                {
                    "name": "since",
                    "in": "query",
                    "schema": time_param,
                    "description": "Start with the events received at or after this time.",
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "string"},
                    "description": "Resume after this event (the `id` of an SSE event).",
                },
                {
                    "name": "last_event_id",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "The same, for clients that cannot set headers.",
                },
            ],
            "responses": {
                "200": {
                    "description": "The stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **openapi.errors(400, 401, 503),
            },
        }
    }
    stats = {
        "get": {
            "summary": "Counters (durable, shared by all consumers), topics, queue depths.",
            "security": openapi.OPTIONAL_BEARER,
            "responses": {
                "200": openapi.json_body(openapi.ref("Stats"), "Statistics."),
                **openapi.errors(401, 503),
            },
        }
    }
    return openapi.document(
        "pubsub read API",
        {"/events": events, "/events/stream": stream, "/stats": stats, **openapi.HEALTH},
        openapi.schemas(Event, Stats, ErrorReply),
    )


def gateway_document(*, max_limit: int) -> dict[str, Any]:
    """The whole system as the gateway serves it on one port: ``/publish`` goes to ingest,
    everything else to the read API (see ``deploy/nginx/nginx.conf``)."""
    read = document(max_limit=max_limit)
    return openapi.document(
        "pubsub-aggregator",
        {"/publish": openapi.publish_path(), **read["paths"]},
        {**read["components"]["schemas"], **openapi.schemas(*openapi.PUBLISH_SCHEMAS)},
    )
