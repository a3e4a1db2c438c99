"""Prometheus metrics of a consumer process."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from consumer.store import Stored

EVENTS_RECEIVED = Counter(
    "pubsub_consumer_events_received", "Events taken from the queue and stored or dropped."
)
EVENTS_STORED = Counter("pubsub_consumer_events_stored", "Unique events inserted.")
EVENTS_DUPLICATE = Counter("pubsub_consumer_events_duplicate", "Duplicate events dropped.")
# Labelled by tenant: the tenants that sent events (ingest lets in only those a tenants file
# declares), so the file bounds the series.
TENANT_RECEIVED = Counter(
    "pubsub_consumer_tenant_events_received", "Events received, by tenant.", ["tenant"]
)
TENANT_STORED = Counter(
    "pubsub_consumer_tenant_events_stored", "Unique events inserted, by tenant.", ["tenant"]
)
MESSAGES = Counter("pubsub_consumer_messages", "Broker messages stored and acknowledged.")
REDELIVERED = Counter(
    "pubsub_consumer_units_repeated",
    "Pieces skipped because they were stored before (redeliveries, client retries).",
)
KEYS_REUSED = Counter(
    "pubsub_consumer_idempotency_keys_reused",
    "Requests whose Idempotency-Key came before with another body: stored and counted as new "
    "requests (a client's key counter restarted, or two publishers chose the same key).",
)
EVENTS_EXPIRED = Counter(
    "pubsub_consumer_events_expired",
    "Events removed by this consumer's retention sweeps (older than PUBSUB_RETENTION).",
)
BLOCKS_MERGED = Counter(
    "pubsub_consumer_blocks_merged",
    "Small blocks this consumer's merges joined into larger ones (see consumer/merge.py).",
)
DEAD_LETTERED = Counter(
    "pubsub_consumer_messages_dead_lettered", "Messages rejected to the dead-letter queue."
)
STORE_ERRORS = Counter(
    "pubsub_consumer_store_errors", "Batches that failed for want of the database."
)
BATCH_EVENTS = Histogram(
    "pubsub_consumer_batch_events",
    "Events per stored batch.",
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000),
)
STORE_SECONDS = Histogram(
    "pubsub_consumer_store_seconds",
    "Time to store and commit one batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


# fmt: off
_LAG_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.75,
    1, 1.5, 2.5, 5, 10, 30, 60, 300,
)
# fmt: on
LAG_SECONDS = Histogram(
    "pubsub_consumer_lag_seconds",
    "From ingest accepting a request to its events being committed (per message).",
    # Fine between 50 ms and 1 s, where a healthy pipeline's tail lives: quantiles interpolated
    # inside a coarse bucket (0.25-0.5 s) swing by half a bucket when the tail moves a little.
    buckets=_LAG_BUCKETS,
)


def record(stored: Stored, messages: int) -> None:
    EVENTS_RECEIVED.inc(stored.received)
    EVENTS_STORED.inc(stored.inserted)
    EVENTS_DUPLICATE.inc(stored.duplicates)
    MESSAGES.inc(messages)
    REDELIVERED.inc(stored.redelivered)
    KEYS_REUSED.inc(stored.reused_keys)
    BATCH_EVENTS.observe(stored.received)
    for tenant, (received, inserted) in stored.by_tenant.items():
        TENANT_RECEIVED.labels(tenant).inc(received)
        TENANT_STORED.labels(tenant).inc(inserted)
