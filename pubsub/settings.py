"""Settings shared by every service, read from ``PUBSUB_*`` environment variables.

One frozen dataclass holds every knob; each field's metadata carries the help text that the
README's configuration table is generated from (``python -m pubsub.settings``), so the two
cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "PUBSUB_"


def _opt(default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"doc": doc}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Configuration of the ingest, consumer and read API services."""

    amqp_url: str = _opt(
        "amqp://guest:guest@127.0.0.1:5672/",
        "RabbitMQ URL, or the URLs of a cluster's nodes separated by commas: clients connect "
        "to the first that answers and move to the next when a node is lost.",
    )
    database_url: str = _opt(
        "postgresql://postgres@127.0.0.1:5432/test", "PostgreSQL URL (libpq syntax)."
    )
    read_database_url: str = _opt(
        "",
        "PostgreSQL URL the read API reads from, e.g. a streaming replica; empty: "
        "`PUBSUB_DATABASE_URL`. Consumers always write to `PUBSUB_DATABASE_URL`.",
    )
    db_schema: str = _opt("pubsub", "PostgreSQL schema that holds the tables.")
    queue: str = _opt(
        "pubsub.events",
        "Name of the durable queue; the exchange and dead-letter names derive from it.",
    )
    http_host: str = _opt("127.0.0.1", "Address the HTTP services bind to.")
    ingest_port: int = _opt(8080, "Port of the ingest service (`POST /publish`).")
    read_port: int = _opt(8081, "Port of the read API (`/events`, `/stats`).")
    consumer_port: int = _opt(
        9100, "Port of a consumer's `/metrics` and health endpoints; 0 picks a free one."
    )
    max_body_bytes: int = _opt(16 * 1024 * 1024, "Largest accepted request body (413 above).")
    ingest_memory_budget: int = _opt(
        32 * 1024 * 1024,
        "Request body bytes one ingest process holds at once (a request reserves its "
        "`Content-Length`, or `PUBSUB_MAX_BODY_BYTES` without one); past it: 503.",
    )
    max_batch_events: int = _opt(20_000, "Most events in one request (413 above).")
    max_errors_reported: int = _opt(20, "Most validation problems listed in one 422 reply.")
    publish_timeout: float = _opt(
        5.0, "Seconds ingest waits for the broker's confirms before answering 503."
    )
    retry_after: int = _opt(2, "Seconds suggested in `Retry-After` when answering 503.")
    message_max_events: int = _opt(
        1000, "Most events packed into one broker message (the broker's cost is per message)."
    )
    publish_in_flight: int = _opt(
        2, "Broker messages ingest keeps awaiting confirms at once; later requests coalesce."
    )
    prefetch: int = _opt(64, "Unacknowledged messages one consumer may hold.")
    batch_max_events: int = _opt(5000, "Most events a consumer stores in one transaction.")
    batch_max_wait: float = _opt(
        0.02, "Seconds a consumer waits for more messages before storing a partial batch."
    )
    stop_timeout: float = _opt(
        8.0,
        "Seconds a consumer keeps trying to store what it holds after SIGTERM; then it exits, "
        "leaving the rest unacknowledged for the broker to redeliver.",
    )
    max_queue_bytes: int = _opt(
        1024**3,
        "Most bytes of messages the events queue holds; past it the broker refuses new ones and "
        "ingest answers 503 until the consumers catch up. Keep it well below the broker's free "
        "disk. Applies to a queue when it is created.",
    )
    quorum_size: int = _opt(
        3,
        "Replicas of the events queue and the dead-letter queue on a RabbitMQ cluster "
        "(`x-quorum-initial-group-size`): a cluster of fewer nodes gives each queue one on "
        "every node. Applies to a queue when it is created.",
    )
    delivery_limit: int = _opt(
        5, "Deliveries of one message before the broker dead-letters it (quorum queue)."
    )
    ledger_retention_hours: float = _opt(
        168.0,
        "How long consumers remember stored pieces (see pubsub/message.py): a redelivery or a "
        "client retry later than this would be counted again. Never longer than "
        "`PUBSUB_RETENTION`.",
    )
    retention: str = _opt(
        "",
        "Age after which events are removed, by the time ingest received them: a number and "
        "a unit (`s`, `m`, `h`, `d`, `w`), e.g. `30d`; empty keeps every event. An event is "
        "deduplicated for at least this long; sent again after it was removed, it is stored "
        "and counted as new.",
    )
    retention_interval: float = _opt(
        60.0, "Seconds between two retention sweeps (one consumer sweeps at a time)."
    )
    retention_batch: int = _opt(
        2000, "Most events one retention transaction removes; sweeps pause between them."
    )
    retry_first_delay: float = _opt(
        0.1,
        "Seconds before retrying an unreachable RabbitMQ or PostgreSQL; doubles per attempt "
        "(with jitter) up to `PUBSUB_RETRY_MAX_DELAY`.",
    )
    retry_max_delay: float = _opt(5.0, "Longest wait between two retries, in seconds.")
    db_pool_size: int = _opt(4, "Connections in each read API's PostgreSQL pool.")
    events_max_limit: int = _opt(1000, "Largest `limit` accepted by `GET /events`.")
    events_default_limit: int = _opt(100, "`limit` of `GET /events` when none is given.")
    stats_max_topics: int = _opt(1000, "Most topic names listed by `GET /stats`.")
    stream_max_clients: int = _opt(
        64, "Live streams (`GET /events/stream`) one read API serves at once; past it: 503."
    )
    stream_buffer: int = _opt(
        1000, "Events a live stream reads ahead of its client; the most it holds in memory."
    )
    stream_slow_timeout: float = _opt(
        10.0,
        "Seconds an event may wait in a stream's buffer for its client; a client slower than "
        "that is cut off with a final message (it resumes with `Last-Event-ID`).",
    )
    stream_poll_interval: float = _opt(
        0.25, "Seconds between a live stream's looks for newly stored events."
    )
    stream_heartbeat: float = _opt(
        15.0, "Seconds between heartbeats (SSE comments) that keep idle streams open in proxies."
    )
    log_level: str = _opt("INFO", "Log level of every service.")
    log_format: str = _opt("json", "`json` (one object per line) or `text`.")
    publish_token: str = _opt(
        "", "Bearer token required by `POST /publish`; empty: no authentication.", secret=True
    )
    publish_token_file: str = _opt("", "File holding the publish token (wins over the variable).")
    read_token: str = _opt(
        "",
        "Bearer token required by `/events`, `/events/stream` and `/stats`; empty: open.",
        secret=True,
    )
    read_token_file: str = _opt("", "File holding the read token (wins over the variable).")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``PUBSUB_<FIELD>`` variables, then apply ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, type(f.default))
        values.update(overrides)
        for name in ("publish_token", "read_token"):
            path = values.get(name + "_file")
            if path:
                try:
                    values[name] = Path(path).read_text().strip()
                except OSError as exc:
                    raise ValueError(f"{ENV_PREFIX}{name.upper()}_FILE: {exc}") from None
        return cls(**values)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.db_schema):
            raise ValueError(
                f"PUBSUB_DB_SCHEMA={self.db_schema!r}: use lower-case letters, digits and '_'"
            )
        for name in (
            "max_body_bytes",
            "max_batch_events",
            "message_max_events",
            "publish_in_flight",
            "prefetch",
            "batch_max_events",
            "delivery_limit",
            "max_queue_bytes",
            "db_pool_size",
            "events_max_limit",
            "events_default_limit",
            "retention_batch",
            "quorum_size",
            "stream_max_clients",
            "stream_buffer",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be at least 1")
        if not 0 < self.retry_first_delay <= self.retry_max_delay:
            raise ValueError(
                "PUBSUB_RETRY_FIRST_DELAY must be above 0 and at most PUBSUB_RETRY_MAX_DELAY"
            )
        if self.ingest_memory_budget < self.max_body_bytes:
            raise ValueError(
                "PUBSUB_INGEST_MEMORY_BUDGET must be at least PUBSUB_MAX_BODY_BYTES, or the "
                "largest bodies could never be accepted"
            )
        if self.log_format not in ("json", "text"):
            raise ValueError("PUBSUB_LOG_FORMAT must be json or text")
        if self.events_default_limit > self.events_max_limit:
            raise ValueError("PUBSUB_EVENTS_DEFAULT_LIMIT exceeds PUBSUB_EVENTS_MAX_LIMIT")
        if not self.amqp_urls or not all(
            re.match(r"amqps?://", u, re.IGNORECASE) for u in self.amqp_urls
        ):
            raise ValueError(
                "PUBSUB_AMQP_URL: give amqp:// or amqps:// URLs, several separated by commas"
            )
        if self.retention:
            parse_duration(self.retention, name="PUBSUB_RETENTION")
        if self.retention_interval <= 0:
            raise ValueError("PUBSUB_RETENTION_INTERVAL must be above 0")
        for name in ("stream_slow_timeout", "stream_poll_interval", "stream_heartbeat"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be above 0")

    @property
    def reads_from(self) -> str:
        """Where the read API reads: the replica of ``PUBSUB_READ_DATABASE_URL``, or the
        primary."""
        return self.read_database_url or self.database_url

    @property
    def amqp_urls(self) -> list[str]:
        """The RabbitMQ nodes of ``PUBSUB_AMQP_URL``, in order."""
        return [u.strip() for u in self.amqp_url.split(",") if u.strip()]

    @property
    def retention_seconds(self) -> float | None:
        """The retention horizon in seconds; ``None`` keeps events forever."""
        return parse_duration(self.retention, name="PUBSUB_RETENTION") if self.retention else None

    @property
    def ledger_retention_seconds(self) -> float:
        """How long ledger keys are kept: a piece is not remembered past its events, so a
        re-send after expiry is stored and counted again, with or without its key."""
        ledger = self.ledger_retention_hours * 3600
        horizon = self.retention_seconds
        return ledger if horizon is None else min(ledger, horizon)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict, passwords and tokens masked, for logging."""
        out = dataclasses.asdict(self)
        for key in ("publish_token", "read_token"):
            out[key] = "***" if out[key] else ""
        for key in ("amqp_url", "database_url", "read_database_url"):
            out[key] = re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", out[key])
        return out


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, *, name: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``; ``ValueError`` naming ``name``
    otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    seconds = float(match[1]) * _UNITS[match[2]] if match else 0.0
    if seconds <= 0:
        raise ValueError(
            f"{name}={text!r}: give a positive number and a unit (s, m, h, d or w), e.g. 30d"
        )
    return seconds


def _convert(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ValueError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}"
        ) from None


def markdown_table() -> str:
    """The configuration table of the README."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        lines.append(f"| `{ENV_PREFIX}{f.name.upper()}` | `{f.default}` | {f.metadata['doc']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
