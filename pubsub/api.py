"""The HTTP API of the system: every route of every service, declared once.

Ingest serves :data:`INGEST`, the read API :data:`READ`, every service :data:`HEALTH`; the
gateway serves them all on one port (:data:`GATEWAY`). Each service binds its handlers to
these declarations (``pubsub.routes.mount``); the token check, the query parsing and the
OpenAPI documents derive from them. The query and reply types here are the contract the
handlers fill in.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, WithJsonSchema
from typing_extensions import TypedDict

from pubsub import search
from pubsub.event import NAME_MAX, Event
from pubsub.routes import Header, Query, Reply, Route, UpTo, ref

HISTOGRAM_MAX_BUCKETS = 1000
HISTOGRAM_MAX_INTERVAL = 3660 * 86400  # ten years and more: wider is no histogram
DEAD_LETTERS_MAX = 1000  # messages listed or replayed by one request

# --- query parameters ------------------------------------------------------------------------


def _name_filter(value: Any, info: ValidationInfo) -> Any:
    if value == "":
        return None
    if isinstance(value, str) and (len(value) > NAME_MAX or "\x00" in value):
        raise ValueError(f"{info.field_name} must be at most {NAME_MAX} characters without NUL")
    return value


def _rfc3339(value: Any, info: ValidationInfo) -> Any:
    if value == "" or not isinstance(value, str):
        return None if value == "" else value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{info.field_name} must be an RFC 3339 time, e.g. 2025-10-21T10:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(f"{info.field_name} must include a UTC offset, e.g. 2025-10-21T10:00:00Z")
    return parsed


def _integer(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{info.field_name} must be an integer") from None
    return value


def _opaque(value: Any) -> Any:
    return value or None


def _order(value: Any) -> Any:
    if value in ("", None):
        return "asc"
    if value not in ("asc", "desc"):
        raise ValueError("order must be asc or desc")
    return value


def _search(value: Any) -> Any:
    if value in ("", None):
        return None
    if isinstance(value, str):
        try:
            if not search.words(value):
                return None
        except search.BadQuery as exc:
            raise ValueError(str(exc)) from None
    return value


def _interval(value: Any) -> Any:
    if value in ("", None):
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"(\d{1,9})([smhd]?)", value.strip())
        if match is None:
            raise ValueError("interval must be a number of seconds or a duration, e.g. 5m")
        value = int(match[1]) * _INTERVAL_UNITS[match[2]]
    if isinstance(value, int) and not 1 <= value <= HISTOGRAM_MAX_INTERVAL:
        raise ValueError(
            f"interval must be between 1 second and {HISTOGRAM_MAX_INTERVAL // 86400} days"
        )
    return value


_INTERVAL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

NameFilter = Annotated[
    Annotated[str, Field(max_length=NAME_MAX)] | None, BeforeValidator(_name_filter)
]
Time = Annotated[datetime | None, BeforeValidator(_rfc3339)]
Opaque = Annotated[str | None, BeforeValidator(_opaque)]


class Filters(Query):
    """Exact matches, on ``/events`` and on the stream alike; empty means any."""

    topic: NameFilter = Field(None, description="Only this topic.")
    source: NameFilter = Field(None, description="Only this source.")
    event_id: NameFilter = Field(
        None, description="Only this event id (found in every topic when no topic is given)."
    )
    q: Annotated[str | None, BeforeValidator(_search)] = Field(
        None,
        description='Search: words (or "quoted phrases"), each of which must occur, '
        "ignoring case, in the topic, the source or the payload's JSON text. At most "
        f"{search.MAX_WORDS} words and {search.MAX_CHARS} characters.",
    )


class EventsQuery(Filters):
    limit: Annotated[int | None, BeforeValidator(_integer), UpTo("events_max_limit")] = Field(
        None, description="Events per page; `PUBSUB_EVENTS_DEFAULT_LIMIT` when not given."
    )
    cursor: Opaque = Field(
        None, description='Where the page starts: from the `Link: <...>; rel="next"` header.'
    )
    since: Time = Field(None, description="Only events whose timestamp is at or after this.")
    until: Time = Field(None, description="Only events whose timestamp is before this.")
    order: Annotated[Literal["asc", "desc"], BeforeValidator(_order)] = Field(
        "asc",
        description="`asc`: oldest first (by timestamp, then topic and event id); `desc`: "
        "newest first. A cursor pages on in the order of the page it came from.",
    )


class HistogramQuery(Filters):
    since: Time = Field(
        None, description="Start of the range; the earliest stored event's minute if not given."
    )
    until: Time = Field(
        None, description="End of the range; just after the latest stored event if not given."
    )
    interval: Annotated[
        int | None,
        BeforeValidator(_interval),
        WithJsonSchema(
            {
                "oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": HISTOGRAM_MAX_INTERVAL},
                    {"type": "string", "pattern": r"^\d{1,9}[smhd]?$"},
                ]
            }
        ),
    ] = Field(
        None,
        description="Width of a bucket: seconds, or a number with a unit (`s`, `m`, `h`, `d`), "
        "e.g. `5m`. If not given, the first round width that cuts the range into at most 120 "
        f"buckets. At most {HISTOGRAM_MAX_BUCKETS} buckets.",
    )


class StreamQuery(Filters):
    since: Time = Field(None, description="Start with the events received at or after this time.")
    last_event_id: Opaque = Field(
        None, description="Resume after this event, for clients that cannot set headers."
    )


class DeadLettersQuery(Query):
    limit: Annotated[int, Field(ge=1, le=DEAD_LETTERS_MAX)] = Field(
        100, description=f"Most messages to list or replay (at most {DEAD_LETTERS_MAX})."
    )


# --- replies ---------------------------------------------------------------------------------


class Accepted(TypedDict):
    accepted: int
    request_id: str


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


class Bucket(TypedDict):
    start: str
    count: int


class DeadLetterEntry(TypedDict):
    """A message of the dead-letter queue: why it is there, how often it was delivered, its
    size and the start of its body, and the tenant whose events it holds."""

    message_id: str
    reason: str
    deliveries: int
    size: int
    preview: str
    tenant: str


class Replayed(TypedDict):
    moved: int


class TenantLimits(TypedDict):
    """A tenant's limits as its tenants file declares them; ``null``: none."""

    events_per_second: float | None
    bytes_per_second: float | None
    burst_seconds: float
    streams: int | None
    retention_seconds: float | None


class TenantEntry(TypedDict):
    """One tenant: its id, its limits, how many tokens may act as it (by scope, never the
    tokens), and what it has stored now."""

    id: str
    limits: TenantLimits
    tokens: dict[str, int]
    stored: int


class Histogram(TypedDict):
    """Events per bucket of ``interval`` seconds, every bucket from ``since`` to ``until``
    (aligned to multiples of the interval since the Unix epoch) with zero where none."""

    since: str
    until: str
    interval: int
    total: int
    buckets: list[Bucket]


# --- the routes ------------------------------------------------------------------------------

PUBLISH = Route(
    method="POST",
    path="/publish",
    auth="publish",
    summary="Publish one event or a batch of events.",
    description=(
        "Answers 202 only after the broker confirmed every event. A batch is accepted "
        "or refused as a whole. Send `Idempotency-Key` to make retries safe."
    ),
    headers=(
        Header(
            "Idempotency-Key",
            "The same key with the same body again is counted once.",
            {"type": "string", "minLength": 1, "maxLength": 200},
        ),
    ),
    body={
        "application/json": {
            "oneOf": [ref("Event"), {"type": "array", "items": ref("Event"), "minItems": 1}]
        },
        "application/x-ndjson": {
            "type": "string",
            "description": "One Event object per line (Vector, Fluent Bit).",
        },
    },
    uses=(Event,),
    replies={202: Reply("Accepted: confirmed by the broker.", Accepted)},
    errors=(400, 401, 408, 413, 415, 422, 429, 503),
)

OTLP_LOGS = Route(
    method="POST",
    path="/v1/logs",
    auth="publish",
    summary="OpenTelemetry logs over OTLP/HTTP: each log record is stored as an event.",
    description=(
        "An `ExportLogsServiceRequest` in protobuf or OTLP JSON, gzip or not: point an "
        "OpenTelemetry SDK's or the Collector's OTLP/HTTP log exporter here. Answers 200 with "
        "an `ExportLogsServiceResponse` in the request's encoding only after the broker "
        "confirmed every stored record; `partial_success` counts the records that cannot be "
        "events. The mapping is in docs/api.md."
    ),
    headers=(
        Header("X-Pubsub-Topic", "Topic of every record of the request (else `service.name`)."),
    ),
    body={
        "application/x-protobuf": {"type": "string", "format": "binary"},
        "application/json": {"type": "object", "description": "OTLP JSON encoding."},
    },
    replies={
        200: Reply(
            "Stored (confirmed by the broker): an `ExportLogsServiceResponse`, in the "
            "request's encoding.",
            {"type": "object"},
            media=("application/x-protobuf", "application/json"),
        )
    },
    errors=(400, 401, 408, 413, 415, 429, 503),
)

LOKI_PUSH = Route(
    method="POST",
    path="/loki/api/v1/push",
    auth="publish",
    summary="The Loki push API: each entry of each stream is stored as an event.",
    description=(
        'JSON (`{"streams": [{"stream": {labels}, "values": [["<unix ns>", '
        '"<line>"]]}]}`, gzip or not) or protobuf compressed with snappy (block format), '
        "as Promtail, Alloy, Vector, Fluent Bit and Loki handlers send. Answers 204 only after "
        "the broker confirmed every entry; errors are plain text, as Loki answers them. The "
        "mapping is in docs/api.md."
    ),
    body={
        "application/json": {"type": "object", "description": "Loki's JSON push."},
        "application/x-protobuf": {"type": "string", "format": "binary"},
    },
    replies={204: Reply("Stored: confirmed by the broker.")},
    errors=(400, 401, 408, 413, 415, 422, 429, 503),
    error_media=("text/plain", "application/json"),
)

BULK = Route(
    method="POST",
    path="/_bulk",
    auth="publish",
    summary="The Elasticsearch bulk API: each `create` or `index` document is stored as an event.",
    description=(
        "NDJSON, gzip or not, as Fluent Bit's `es` output, Vector's `elasticsearch` sink and "
        "the OpenSearch clients send it. The topic is each action's `_index`; the mapping is "
        "in docs/api.md. A busy ingest or an unreachable broker answers 429 with "
        "`Retry-After`; query parameters are ignored."
    ),
    body={
        "application/x-ndjson": {
            "type": "string",
            "description": "Action lines (`create`, `index`; `update` and `delete` get an error "
            "item) each followed by its document's line.",
        }
    },
    replies={
        200: Reply(
            "Elasticsearch's bulk reply (`took`, `errors`, `items`, one per action, in order), "
            "sent after the broker confirmed every stored document.",
            {
                "type": "object",
                "properties": {
                    "took": {"type": "integer"},
                    "errors": {"type": "boolean"},
                    "items": {"type": "array", "items": {"type": "object"}},
                },
            },
        )
    },
    errors=(400, 401, 408, 413, 415, 429),
)

# The same route with a default index in the path.
INDEX_BULK = replace(
    BULK,
    path="/{index}/_bulk",
    summary="The Elasticsearch bulk API with a default index: the topic of actions without one.",
)

# Elasticsearch takes the bulk API by PUT as well, and some clients (elasticsearch-py 9) send it.
PUT_BULK = replace(BULK, method="PUT")
PUT_INDEX_BULK = replace(INDEX_BULK, method="PUT")

EVENTS = Route(
    method="GET",
    path="/events",
    auth="read",
    summary="Stored events, ordered by timestamp (oldest or newest first), keyset-paginated.",
    description='The next page is in the `Link: <...>; rel="next"` header.',
    query=EventsQuery,
    replies={200: Reply("A page of events.", list[Event])},
    errors=(400, 401, 503),
)

HISTOGRAM = Route(
    method="GET",
    path="/events/histogram",
    auth="read",
    summary="How many events per time bucket, for the filters of `/events`.",
    description=(
        "Counted by event timestamp. Without `q`, `source` and `event_id`, and with an "
        "interval of whole minutes, the counts come from a per-minute rollup the consumers "
        "keep exact (fast over any range); otherwise from the events themselves."
    ),
    query=HistogramQuery,
    replies={200: Reply("The buckets.", Histogram)},
    errors=(400, 401, 503),
)

STREAM = Route(
    method="GET",
    path="/events/stream",
    auth="read",
    summary="Live tail: stored events as Server-Sent Events, as they are stored.",
    description=(
        "One SSE event per stored event, its data in the shape of `/events`, its `id` a "
        "cursor: reconnect with `Last-Event-ID` to resume with no gap and no repeat. "
        "Without `since` or `Last-Event-ID` the stream starts with what is stored from "
        "now on. Heartbeats are SSE comments. The stream ends with `event: error` when "
        "the client reads more slowly than events arrive, and with `event: end` when the "
        'service shuts down; both carry `{"error": "..."}` saying why.'
    ),
    query=StreamQuery,
    headers=(Header("Last-Event-ID", "Resume after this event (the `id` of an SSE event)."),),
    replies={200: Reply("The stream.", {"type": "string"}, media="text/event-stream")},
    errors=(400, 401, 429, 503),
)

STATS = Route(
    method="GET",
    path="/stats",
    auth="read",
    summary="Counters (durable, shared by all consumers), topics, queue depths.",
    replies={200: Reply("Statistics.", Stats)},
    errors=(401, 503),
)

TENANTS = Route(
    method="GET",
    path="/tenants",
    auth="admin",
    summary="The tenants, their limits and what each has stored (an admin token's).",
    description="Only a token of scope `admin` from the tenants file may ask; the tokens "
    "themselves are never shown, only how many of each scope may act as each tenant.",
    replies={200: Reply("The tenants, in order.", list[TenantEntry])},
    errors=(401, 403, 503),
)

DEAD_LETTERS = Route(
    method="GET",
    path="/dead-letters",
    auth="admin",
    summary="The messages of the dead-letter queue, left in place (an admin token's).",
    query=DeadLettersQuery,
    replies={200: Reply("The dead letters, oldest first.", list[DeadLetterEntry])},
    errors=(400, 401, 403, 503),
)
REPLAY_DEAD_LETTERS = Route(
    method="POST",
    path="/dead-letters/replay",
    auth="admin",
    summary="Move dead letters back to the events queue (an admin token's).",
    description="Once the cause is fixed: each is published with confirms before it leaves "
    "the dead-letter queue, so none is lost on the way; only those there when the replay "
    "began are moved.",
    query=DeadLettersQuery,
    replies={200: Reply("How many were moved.", Replayed)},
    errors=(400, 401, 403, 503),
)

HEALTHZ = Route(
    method="GET",
    path="/healthz",
    summary="The process answers.",
    replies={200: Reply("alive")},
)
READYZ = Route(
    method="GET",
    path="/readyz",
    summary="Broker and database connections are up.",
    replies={200: Reply("ready"), 503: Reply("not ready")},
)
METRICS = Route(
    method="GET",
    path="/metrics",
    summary="Prometheus metrics.",
    replies={200: Reply("text exposition format")},
)

INGEST = (PUBLISH, OTLP_LOGS, LOKI_PUSH, BULK, INDEX_BULK, PUT_BULK, PUT_INDEX_BULK,
          DEAD_LETTERS, REPLAY_DEAD_LETTERS)  # fmt: skip
READ = (EVENTS, HISTOGRAM, STREAM, STATS, TENANTS)
HEALTH = (HEALTHZ, READYZ, METRICS)
# One port for everything (deploy/nginx/nginx.conf): the ingest routes go to ingest, the
# rest to the read API.
GATEWAY = (*INGEST, *READ, *HEALTH)
