"""Prometheus metrics of an ingest process."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("pubsub_ingest_requests", "Requests to ingest's routes by answer.", ["status"])
# Bound once per status: labels() takes a lock and a dict lookup on every call. The statuses
# ingest answers are bound at start, so that their series exist (at 0) before the first request
# and a rate over them means something from the start.
_ANSWERED: dict[int, Any] = {
    status: REQUESTS.labels(str(status))
    for status in (200, 202, 204, 400, 401, 404, 405, 413, 415, 422, 500, 503)
}


def answered(status: int) -> None:
    """Count a request answered with ``status``."""
    counter = _ANSWERED.get(status)
    if counter is None:
        counter = _ANSWERED[status] = REQUESTS.labels(str(status))
    counter.inc()


EVENTS_ACCEPTED = Counter("pubsub_ingest_events_accepted", "Events confirmed by the broker.")
# Labelled by tenant: the names a tenants file declares, so the file bounds the series.
TENANT_EVENTS = Counter(
    "pubsub_ingest_tenant_events_accepted", "Events confirmed by the broker, by tenant.", ["tenant"]
)
TENANT_BYTES = Counter(
    "pubsub_ingest_tenant_bytes", "Bytes of bodies taken to publish (inflated), by tenant.",
    ["tenant"],
)  # fmt: skip
TENANT_REFUSED = Counter(
    "pubsub_ingest_tenant_requests_refused",
    "Requests of a tenant's token refused by ingest, by tenant and answer (429: its rate).",
    ["tenant", "status"],
)
PUBLISH_FAILURES = Counter(
    "pubsub_ingest_publish_failures", "Broker messages that were not confirmed."
)
CONFIRM_SECONDS = Histogram(
    "pubsub_ingest_confirm_seconds",
    "Time from publishing a message to the broker's confirm.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
MESSAGE_EVENTS = Histogram(
    "pubsub_ingest_message_events",
    "Events packed into one broker message.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
BYTES_IN_FLIGHT = Gauge(
    "pubsub_ingest_bytes_in_flight", "Request body bytes reserved by the requests in flight."
)
OVER_BUDGET = Counter(
    "pubsub_ingest_over_budget", "Requests refused because the memory budget was spent."
)
OTLP_RECORDS_REJECTED = Counter(
    "pubsub_ingest_otlp_records_rejected",
    "OTLP log records left out of an export because they cannot be events (partial_success).",
)
BULK_ITEMS_REJECTED = Counter(
    "pubsub_ingest_bulk_items_rejected",
    "Elasticsearch bulk items answered with an error of their own (update, delete, documents "
    "that cannot be events).",
)
