"""Settings shared by every service, read from ``PUBSUB_*`` environment variables.

One pydantic-settings model declares every knob once: its type, its bounds and its help text.
From that one declaration come the parsing and validation of the environment, the
configuration table in ``docs/operations.md`` (``python -m pubsub.settings``), the environment
the supervisor hands its children (:meth:`Settings.to_env`) and the redacted copy the services
log at start-up (:meth:`Settings.redacted`).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import annotated_types
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from pubsub import tokens

ENV_PREFIX = "PUBSUB_"
# ``PUBSUB_*`` variables that are not settings and never will be, so a shell that exports them
# still starts a service: the test suite's own (``PUBSUB_TEST_AMQP_URL``...), and those the
# compose files interpolate (passwords, ports, images), which no service reads.
TEST_PREFIX = ENV_PREFIX + "TEST_"
DEPLOYMENT_VARIABLES = frozenset(
    ENV_PREFIX + name
    for name in (
        "ADMIN_BIND", "APP_PASSWORD", "EXTRA_CA_BUNDLE", "GATEWAY_BIND", "GATEWAY_PORT",
        "GRAFANA_PASSWORD", "GRAFANA_PORT", "IMAGE_GRAFANA", "IMAGE_NGINX", "IMAGE_POSTGRES",
        "IMAGE_PROMETHEUS", "IMAGE_PYTHON", "IMAGE_RABBITMQ", "OWNER_PASSWORD",
        "POSTGRES_PASSWORD", "PROMETHEUS_PORT", "RABBITMQ_PASSWORD", "RABBITMQ_UI_PORT",
        "READER_PASSWORD", "TENANTS_TOML",
    )
)  # fmt: skip

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RULE = "give a positive number and a unit (s, m, h, d or w), e.g. 30d"


def _horizon(value: Any) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(_DURATION_RULE)
    if not value:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value)
    seconds = float(match[1]) * _UNITS[match[2]] if match else 0.0
    if seconds <= 0:
        raise ValueError(_DURATION_RULE)
    return timedelta(seconds=seconds)


Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]
Interval = Annotated[float, Field(ge=0)]  # seconds; 0 turns a periodic task off
Horizon = Annotated[timedelta | None, BeforeValidator(_horizon)]


# The variables :meth:`Settings.from_env` reads from; os.environ when not set.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("environ", default=None)


class _Environment(EnvSettingsSource):
    """``PUBSUB_*`` variables of the mapping given to :meth:`Settings.from_env`, or of the
    process."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRON.get()
        return parse_env_vars(
            os.environ if env is None else env,
            self.case_sensitive,
            self.env_ignore_empty,
            self.env_parse_none_str,
        )


class SettingsError(ValueError):
    """A configuration that cannot run: one line per wrong variable, naming it, the value
    given and the rule it breaks."""


class Settings(BaseSettings):
    """Configuration of the ingest, consumer and read API services.

    ``Settings(**values)`` reads ``PUBSUB_*`` variables from the environment, ``values``
    winning; :meth:`from_env` reads them from a given mapping and explains a bad value in one
    line per variable.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    amqp_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/",
        description="RabbitMQ URL, or the URLs of a cluster's nodes separated by commas: "
        "clients connect to the first that answers and move to the next when a node is lost.",
    )
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/test", description="PostgreSQL URL (libpq syntax)."
    )
    read_database_url: str = Field(
        "",
        description="PostgreSQL URL the read API reads from, e.g. a streaming replica; empty: "
        "`PUBSUB_DATABASE_URL`. Consumers always write to `PUBSUB_DATABASE_URL`.",
    )
    db_schema: str = Field(
        "pubsub",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema that holds the tables (lower-case letters, digits, `_`).",
    )
    queue: str = Field(
        "pubsub.events",
        min_length=1,
        max_length=200,
        description="Name of the durable queue; the exchange and dead-letter names derive from it.",
    )
    http_host: str = Field("127.0.0.1", description="Address the HTTP services bind to.")
    ingest_port: Port = Field(8080, description="Port of the ingest service (`POST /publish`).")
    read_port: Port = Field(8081, description="Port of the read API (`/events`, `/stats`).")
    consumer_port: int = Field(
        9100,
        ge=0,
        le=65535,
        description="Port of a consumer's `/metrics` and health endpoints; 0 picks a free one.",
    )
    max_body_bytes: Count = Field(
        16 * 1024 * 1024, description="Largest accepted request body (413 above)."
    )
    ingest_memory_budget: Count = Field(
        128 * 1024 * 1024,
        description="Bytes of memory the requests in flight in one ingest process hold at "
        "once: each body as it arrives and once inflated, what parsing and mapping it takes "
        "(reckoned from its bytes before it is parsed) and its encoded events; past it: 503. "
        "Requests over 1/32 of it hold together at most three quarters of it (or all but the "
        "room for the largest body), so small requests still find room; a request that could "
        "never fit is 413. At least `PUBSUB_MAX_BODY_BYTES`.",
    )
    body_read_timeout: Seconds = Field(
        30.0,
        description="Seconds a request body may take to arrive; a slower one is answered 408, "
        "and what it held of the memory budget is free again.",
    )
    max_batch_events: Count = Field(20_000, description="Most events in one request (413 above).")
    max_event_bytes: Count = Field(
        1024 * 1024,
        description="Largest event, as stored (its JSON); a request holding a larger one is "
        "refused whole with 413 naming it. At most `PUBSUB_MESSAGE_MAX_BYTES`.",
    )
    max_errors_reported: Count = Field(
        20, description="Most validation problems listed in one 422 reply."
    )
    publish_timeout: Seconds = Field(
        5.0, description="Seconds ingest waits for the broker's confirms before answering 503."
    )
    retry_after: Count = Field(
        2, description="Seconds suggested in `Retry-After` when answering 503."
    )
    message_max_events: Count = Field(
        1000,
        description="Most events packed into one broker message (the broker's cost is per "
        "message).",
    )
    message_max_bytes: Count = Field(
        4 * 1024 * 1024,
        description="Most bytes of events in one broker message; ingest splits and packs by "
        "bytes as well as by count. Keep it below the broker's `max_message_size` (16 MiB by "
        "default since RabbitMQ 4.0, 128 MiB before).",
    )
    message_compression: Literal["deflate", "none"] = Field(
        "deflate",
        description="How ingest compresses a broker message's events: `deflate` (zlib, level "
        "1, messages of 2 KiB and more; the broker stores, replicates and pages out a fraction "
        "of the bytes), or `none`. "
        "Consumers read both; upgrade them before ingest (docs/operations.md).",
    )
    otlp_topic_attribute: str = Field(
        "service.name",
        min_length=1,
        description="Resource attribute whose value is the topic of OTLP log records "
        "(`POST /v1/logs`); `unknown_service` when a resource lacks it. An `X-Pubsub-Topic` "
        "header overrides it per request.",
    )
    otlp_source_attributes: str = Field(
        "service.instance.id,host.name",
        min_length=1,
        description="Resource attributes, separated by commas, whose first one set is the "
        "source of OTLP log records; `otlp` when none is.",
    )
    loki_topic_labels: str = Field(
        "service_name,job,app",
        min_length=1,
        description="Stream labels, separated by commas, whose first one set is the topic of "
        "Loki pushes (`POST /loki/api/v1/push`); `loki` when none is.",
    )
    loki_source_labels: str = Field(
        "host,hostname,instance",
        min_length=1,
        description="Stream labels, separated by commas, whose first one set is the source of "
        "Loki pushes; `loki` when none is.",
    )
    elastic_source_fields: str = Field(
        "host.name,host.hostname,host,hostname",
        min_length=1,
        description="Document fields, separated by commas, whose first one that holds a string "
        "is the source of Elasticsearch bulk documents (`POST /_bulk`); a dotted name is looked "
        "up as written, then through nested objects. `bulk` when none is.",
    )
    publish_in_flight: Count = Field(
        2,
        description="Broker messages ingest keeps awaiting confirms at once; later requests "
        "coalesce.",
    )
    prefetch: int = Field(
        64,
        ge=1,
        le=65535,  # AMQP's prefetch-count is a 16-bit field
        description="Unacknowledged messages one consumer may hold; fewer when "
        "`PUBSUB_CONSUMER_MEMORY_BUDGET` would not hold that many of the largest messages.",
    )
    consumer_memory_budget: Count = Field(
        64 * 1024 * 1024,
        description="Bytes of messages one consumer holds at most: its prefetch is lowered to "
        "this divided by `PUBSUB_MESSAGE_MAX_BYTES` when that is fewer (RabbitMQ does not bound "
        "a prefetch by bytes). At least `PUBSUB_MESSAGE_MAX_BYTES`.",
    )
    batch_max_events: Count = Field(
        5000, description="Most events a consumer stores in one transaction."
    )
    batch_max_wait: float = Field(
        0.02,
        ge=0,
        description="Seconds a consumer waits for more messages before storing a partial "
        "batch; 0 stores what has arrived at once.",
    )
    stop_timeout: Seconds = Field(
        8.0,
        description="Seconds a consumer keeps trying to store what it holds after SIGTERM; then "
        "it exits, leaving the rest unacknowledged for the broker to redeliver.",
    )
    max_queue_bytes: Count = Field(
        1024**3,
        description="Most bytes of messages the events queue holds; past it the broker refuses "
        "new ones and ingest answers 503 until the consumers catch up. Keep it well below the "
        "broker's free disk. Applies to a queue when it is created.",
    )
    quorum_size: Count = Field(
        3,
        description="Replicas of the events queue and the dead-letter queue on a RabbitMQ "
        "cluster (`x-quorum-initial-group-size`): a cluster of fewer nodes gives each queue one "
        "on every node. Applies to a queue when it is created.",
    )
    delivery_limit: Count = Field(
        5, description="Deliveries of one message before the broker dead-letters it."
    )
    ledger_retention_hours: Seconds = Field(
        168.0,
        description="How long consumers remember stored pieces (see `pubsub/message.py`): a "
        "redelivery or a client retry later than this would be counted again. Never longer than "
        "`PUBSUB_RETENTION`.",
    )
    retention: Horizon = Field(
        None,
        description="Age after which events are removed, by the time ingest received them: a "
        "number and a unit (`s`, `m`, `h`, `d`, `w`), e.g. `30d`; empty keeps every event. An "
        "event is deduplicated for at least this long; sent again after it was removed, it is "
        "stored and counted as new.",
    )
    retention_interval: Seconds = Field(
        60.0, description="Seconds between two retention sweeps (one consumer sweeps at a time)."
    )
    retention_batch: Count = Field(
        2000,
        description="Most events whose keys one retention transaction removes (whole blocks: "
        "one block's more at most); sweeps pause between them.",
    )
    merge_interval: Interval = Field(
        30.0,
        description="Seconds between two merges of small blocks into larger ones (one consumer "
        "merges at a time); 0 turns merges off.",
    )
    merge_after: Seconds = Field(
        60.0,
        description="Age in seconds, since it was stored, at which a small block may be merged: "
        "the batches of a minute together make fewer, larger blocks than they would one by one.",
    )
    retry_first_delay: Seconds = Field(
        0.1,
        description="Seconds before retrying an unreachable RabbitMQ or PostgreSQL; doubles per "
        "attempt (with jitter) up to `PUBSUB_RETRY_MAX_DELAY`.",
    )
    retry_max_delay: Seconds = Field(
        5.0, description="Longest wait between two retries, in seconds."
    )
    db_pool_size: Count = Field(4, description="Connections in each read API's PostgreSQL pool.")
    events_max_limit: Count = Field(1000, description="Largest `limit` accepted by `GET /events`.")
    events_default_limit: Count = Field(
        100, description="`limit` of `GET /events` when none is given."
    )
    events_max_bytes: Count = Field(
        4 * 1024 * 1024,
        description="Most payload bytes in one page of `GET /events`: a page that would hold "
        "more ends early, with its `Link: next`. A page holds at least one event.",
    )
    read_statement_timeout: Seconds = Field(
        10.0,
        description="Seconds one query of the read API may run (PostgreSQL's "
        "`statement_timeout`); a longer one is cancelled and answered 503.",
    )
    search: Literal["scan", "trigram"] = Field(
        "scan",
        description="How `q=` finds events: `scan` reads the events the other filters narrow a "
        "search to (no index: the fastest ingest); `trigram` keeps a `pg_trgm` GIN index, which "
        "finds a rare word among millions of events in milliseconds but slows every insert "
        "(docs/design.md has the measurements). Applied by the process that creates or upgrades "
        "the schema (consumers, `python -m pubsub.dbschema`): it builds or drops the index, "
        "locking the blocks against inserts while it builds.",
    )
    stats_max_topics: Count = Field(1000, description="Most topic names listed by `GET /stats`.")
    stream_max_clients: Count = Field(
        64,
        description="Live streams (`GET /events/stream`) one read API serves at once; past it: "
        "503.",
    )
    stream_buffer: Count = Field(
        1000,
        description="Events a live stream reads ahead of its client; the most it holds in memory.",
    )
    stream_buffer_bytes: Count = Field(
        1024 * 1024,
        description="Bytes of events a live stream reads ahead of its client (but one event).",
    )
    stream_slow_timeout: Seconds = Field(
        10.0,
        description="Seconds an event may wait in a stream's buffer for its client; a client "
        "slower than that is cut off with a final message (it resumes with `Last-Event-ID`).",
    )
    stream_poll_interval: Seconds = Field(
        0.25,
        description="Seconds between two looks for newly stored events, taken once for all the "
        "live streams of a read API.",
    )
    stream_heartbeat: Seconds = Field(
        15.0,
        description="Seconds between heartbeats (SSE comments) that keep idle streams open in "
        "proxies.",
    )
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v),
    ] = Field("INFO", description="Log level of every service.")
    log_format: Literal["json", "text"] = Field(
        "json", description="`json` (one object per line) or `text`."
    )
    publish_token: str = Field(
        "",
        repr=False,
        description="Bearer token required by the ingest routes; empty: none, which is refused "
        "beyond loopback (see `PUBSUB_ALLOW_ANONYMOUS`).",
        json_schema_extra={"secret": True},
    )
    publish_token_file: str = Field(
        "", description="File holding the publish token (wins over the variable)."
    )
    read_token: str = Field(
        "",
        repr=False,
        description="Bearer token required by `/events` (and its histogram and stream) and "
        "`/stats`; empty: none, which is refused beyond loopback.",
        json_schema_extra={"secret": True},
    )
    read_token_file: str = Field(
        "", description="File holding the read token (wins over the variable)."
    )
    allow_anonymous: bool = Field(
        False,
        description="Serve the publish and read routes without a token on an address beyond "
        "loopback. Without it, a service listening beyond loopback refuses to start when its "
        "routes' token is not set.",
    )
    tenants_file: str = Field(
        "",
        description="TOML file declaring the tenants, their tokens and limits (see "
        "docs/security.md); empty: one tenant, `default`, with `PUBSUB_PUBLISH_TOKEN` and "
        "`PUBSUB_READ_TOKEN`.",
    )
    tenant_memory_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="With a tenants file: the part of `PUBSUB_INGEST_MEMORY_BUDGET` the requests "
        "of one tenant may hold together (429 past it), so that one tenant's flood leaves room "
        "for the others.",
    )
    unknown_variables: Literal["refuse", "warn"] = Field(
        "refuse",
        description="A `PUBSUB_*` variable that is not a setting (a misspelling, or one of "
        "another version): `refuse` stops the start naming it and the closest setting; `warn` "
        "logs it and starts, for an environment shared with another version. The test "
        "suite's `PUBSUB_TEST_*` and the compose files' variables are not settings and are "
        "never refused.",
    )
    tenants_reload_interval: Interval = Field(
        5.0,
        description="Seconds between looks at the tenants file for a change (it is also read "
        "again on SIGHUP); 0: on SIGHUP only.",
    )

    # --- rules that span fields or need more than a bound --------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _tokens_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in ("publish_token", "read_token"):
            path = data.get(name + "_file")
            if path:
                token = tokens.read_file(path, variable=f"{ENV_PREFIX}{name.upper()}_FILE")
                data = {**data, name: token}
        return data

    @field_validator("amqp_url")
    @classmethod
    def _amqp_urls(cls, value: str) -> str:
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls or not all(re.match(r"amqps?://", u, re.IGNORECASE) for u in urls):
            raise ValueError("give amqp:// or amqps:// URLs, several separated by commas")
        return value

    @model_validator(mode="after")
    def _across_fields(self) -> Self:
        if self.retry_first_delay > self.retry_max_delay:
            raise ValueError("PUBSUB_RETRY_FIRST_DELAY must be at most PUBSUB_RETRY_MAX_DELAY")
        if self.ingest_memory_budget < self.max_body_bytes:
            raise ValueError(
                "PUBSUB_INGEST_MEMORY_BUDGET must be at least PUBSUB_MAX_BODY_BYTES, or the "
                "largest bodies could never be accepted"
            )
        if self.max_event_bytes > self.message_max_bytes:
            raise ValueError(
                "PUBSUB_MAX_EVENT_BYTES must be at most PUBSUB_MESSAGE_MAX_BYTES: every event "
                "travels in one broker message"
            )
        if self.events_default_limit > self.events_max_limit:
            raise ValueError("PUBSUB_EVENTS_DEFAULT_LIMIT exceeds PUBSUB_EVENTS_MAX_LIMIT")
        if self.consumer_memory_budget < self.message_max_bytes:
            raise ValueError(
                "PUBSUB_CONSUMER_MEMORY_BUDGET must be at least PUBSUB_MESSAGE_MAX_BYTES, or a "
                "consumer could not hold the largest message"
            )
        return self

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``PUBSUB_<FIELD>`` variables of ``environ`` (the process environment
        by default), then ``overrides``; :class:`SettingsError` explains a bad value."""
        env = os.environ if environ is None else environ
        given = {n: env[env_name(n)] for n in cls.model_fields if env.get(env_name(n))}
        reading = _ENVIRON.set(env)
        try:
            settings = cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(explain(exc, {**given, **overrides})) from None
        finally:
            _ENVIRON.reset(reading)
        unknown = unknown_variables(env)
        if unknown and settings.unknown_variables == "refuse":
            raise SettingsError(
                "; ".join(unknown) + f" (every setting: docs/operations.md#configuration; "
                f"{env_name('unknown_variables')}=warn starts anyway)"
            )
        return settings

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments, then the environment: no .env file nor secrets directory is read behind
        # the operator's back (the token files are explicit settings).
        return init_settings, _Environment(settings_cls)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, validated like the original (the environment is not read
        again)."""
        return type(self).from_env({}, **{**self.model_dump(), **changes})

    # --- derived values -------------------------------------------------------------------------

    @property
    def consumer_prefetch(self) -> int:
        """The prefetch a consumer asks for: ``prefetch``, or fewer so that that many of the
        largest messages fit ``consumer_memory_budget``."""
        return min(self.prefetch, self.consumer_memory_budget // self.message_max_bytes)

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
        return None if self.retention is None else self.retention.total_seconds()

    @property
    def ledger_retention_seconds(self) -> float:
        """How long ledger keys are kept: a piece is not remembered past its events, so a
        re-send after expiry is stored and counted again, with or without its key."""
        ledger = self.ledger_retention_hours * 3600
        horizon = self.retention_seconds
        return ledger if horizon is None else min(ledger, horizon)

    # --- what leaves the process ----------------------------------------------------------------

    def to_env(self) -> dict[str, str]:
        """The ``PUBSUB_*`` variables that make a child process read these same settings."""
        return {env_name(name): _env_text(value) for name, value in self.model_dump().items()}

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict, passwords and tokens masked, for logging."""
        out = self.model_dump(mode="json")
        for key in ("publish_token", "read_token"):
            out[key] = "***" if out[key] else ""
        for key in _URLS:
            out[key] = hide_passwords(out[key])
        return out


_URLS = ("amqp_url", "database_url", "read_database_url")


def hide_passwords(url: str) -> str:
    """``url`` (or several, comma-separated) with every password masked: the user-info's
    (``//user:secret@``) and libpq's ``password`` parameter (``?password=secret``)."""
    url = re.sub(r"(//[^:/@,]*:)[^@,]*@", r"\1***@", url)
    return re.sub(r"(?i)([?&]password=)[^&,]*", r"\1***", url)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``PUBSUB_*`` variable of ``environ`` that is not a setting, naming it and
    the closest setting: a misspelled setting would otherwise be ignored without a word."""
    known = [env_name(name) for name in Settings.model_fields]
    lines = []
    for variable in sorted(environ):
        name = variable.upper()  # settings are read whatever the case
        if (
            not name.startswith(ENV_PREFIX)
            or name in known
            or name in DEPLOYMENT_VARIABLES
            or name.startswith(TEST_PREFIX)
        ):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"{variable} is not a setting{hint}")
    return lines


def _env_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    return str(value)


def explain(exc: ValidationError, given: Mapping[str, Any]) -> str:
    """One line per error: the variable, the value given, the rule."""
    lines = []
    for err in exc.errors(include_url=False):
        message = str(err["msg"]).removeprefix("Value error, ")
        loc = err["loc"]
        if loc and isinstance(loc[0], str):
            name = loc[0]
            value = given.get(name, err.get("input"))
            if name.endswith("token"):
                shown = "***"
            elif name in _URLS and isinstance(value, str):
                shown = repr(hide_passwords(value))
            else:
                shown = repr(value)
            message = message[:1].lower() + message[1:]
            lines.append(f"{env_name(name)}={shown}: {message}")
        else:
            lines.append(message)
    return "; ".join(lines)


# --- the configuration table in docs/operations.md ---------------------------------------------


def _rule(info: FieldInfo) -> str:
    kind = info.annotation
    parts = []
    for item in info.metadata:
        for attr, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            bound = getattr(item, attr, None)
            if bound is not None and isinstance(item, annotated_types.BaseMetadata):
                parts.append(f"{symbol} {bound}")
    parts = [", ".join(parts)] if parts else []
    name = {bool: "true/false", int: "integer", float: "number", str: "text"}.get(kind, "")  # type: ignore[arg-type]
    if kind is not None and getattr(kind, "__origin__", None) is Literal:
        name = " \\| ".join(f"`{v}`" for v in kind.__args__)
    if info.annotation == timedelta | None:
        name = "duration"
    return " ".join([name, *parts]).strip()


def markdown_table() -> str:
    """The configuration table of ``docs/operations.md``."""
    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        default = f"`{_env_text(info.default)}`" if _env_text(info.default) else "(empty)"
        lines.append(f"| `{env_name(name)}` | {_rule(info)} | {default} | {info.description} |")
    return "\n".join(lines)


BEGIN, END = "<!-- settings table: begin -->", "<!-- settings table: end -->"


def write_table(path: Path) -> bool:
    """Put :func:`markdown_table` between the markers in ``path``; whether it changed."""
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{markdown_table()}\n{END}{tail}"
    path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> None:
    """``python -m pubsub.settings [--write FILE]``: print the table, or write it into FILE."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--write"] and len(args) == 2:
        changed = write_table(Path(args[1]))
        sys.stdout.write(f"{args[1]}: {'updated' if changed else 'unchanged'}\n")
    else:
        sys.stdout.write(markdown_table() + "\n")


if __name__ == "__main__":
    main()
