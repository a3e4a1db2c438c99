"""Prometheus metrics of a read API's live streams (the queue depths are in
:mod:`readapi.queues`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

STREAMS = Gauge("pubsub_readapi_streams", "Live streams open.")
# Labelled by tenant: the names a tenants file declares, so the file bounds the series.
TENANT_STREAMS = Gauge("pubsub_readapi_tenant_streams", "Live streams open, by tenant.", ["tenant"])
STREAM_READS = Counter(
    "pubsub_readapi_stream_reads",
    "Reads of PostgreSQL for the live streams: by the shared feed (one per poll however many "
    "streams follow it), or by a stream behind the head, for itself.",
    ["by"],
)
FEED_READS = STREAM_READS.labels("feed")
OWN_READS = STREAM_READS.labels("stream")
STREAMS_DROPPED = Counter(
    "pubsub_readapi_streams_dropped_by_feed",
    "Times the feed left a stream to read by itself because its client was behind.",
)
