"""The read API: ``GET /events`` and ``GET /stats`` over PostgreSQL and the broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import psycopg
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiohttp import web
from prometheus_client import Gauge
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pubsub import dbschema, http, openapi, service, topology
from pubsub.settings import Settings
from pubsub.topology import Names
from readapi import queries

log = logging.getLogger("pubsub.readapi.app")

QUEUE_MESSAGES = Gauge(
    "pubsub_queue_messages",
    "Messages ready in the events queue and the dead-letter queue (sampled by the read API).",
    ["queue"],
)

_DB_ERRORS = (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError)


class Backend:
    """Connections of the read API: a PostgreSQL pool and a broker channel for queue depths."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.monotonic()
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=settings.db_pool_size,
            kwargs=dbschema.connect_kwargs(settings),
            timeout=5.0,
            # A database restart leaves dead connections in the pool: check before lending.
            check=AsyncConnectionPool.check_connection,
            open=False,
        )
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None

    async def start(self, stop: asyncio.Event) -> None:
        await self.pool.open(wait=False)
        self.connection = await service.retry(
            lambda: topology.connect(self.settings, name="read API"), what="RabbitMQ", stop=stop
        )

    async def close(self) -> None:
        await self.pool.close()
        if self.connection is not None:
            await self.connection.close()

    @property
    def broker_connected(self) -> bool:
        conn = self.connection
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    async def queue_depths(self) -> dict[str, int | None]:
        """Messages ready in the events queue and in the dead-letter queue (None if unknown)."""
        names = Names.of(self.settings)
        out: dict[str, int | None] = {"queued_messages": None, "dead_letter_messages": None}
        if not self.broker_connected or self.connection is None:
            return out
        try:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self.connection.channel()
            for key, name in (
                ("queued_messages", names.queue),
                ("dead_letter_messages", names.dead_queue),
            ):
                # robust=False: a robust channel answers passive declares from a cache.
                queue = await self._channel.declare_queue(
                    name, passive=True, timeout=2, robust=False
                )
                out[key] = queue.declaration_result.message_count
                QUEUE_MESSAGES.labels("events" if name == names.queue else "dead").set(
                    out[key] or 0
                )
        except Exception as exc:  # noqa: BLE001 - depth is informative, never fatal
            log.info("queue depth unavailable: %r", exc)
            self._channel = None
        return out

    async def sample_queues(self, stop: asyncio.Event, every: float = 5.0) -> None:
        """Keep the queue-depth gauge fresh for dashboards and alerts."""
        while not stop.is_set():
            await self.queue_depths()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def database_ok(self) -> bool:
        try:
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except _DB_ERRORS:
            return False
        return True


BACKEND = web.AppKey("backend", Backend)


_bad = http.bad_request


def _time_param(query: Mapping[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise _bad(f"{name} must be an RFC 3339 time, e.g. 2025-10-21T10:00:00Z") from None
    if value.tzinfo is None:
        raise _bad(f"{name} must include a UTC offset, e.g. 2025-10-21T10:00:00Z")
    return value


async def get_events(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    settings = backend.settings
    q = request.query
    unknown = set(q) - {"topic", "since", "until", "limit", "cursor"}
    if unknown:
        raise _bad(f"unknown query parameter(s): {', '.join(sorted(unknown)[:5])}")
    topic = q.get("topic") or None
    if topic is not None and (len(topic) > 255 or "\x00" in topic):
        raise _bad("topic must be at most 255 characters without NUL")
    try:
        limit = int(q.get("limit", settings.events_default_limit))
    except ValueError:
        raise _bad("limit must be an integer") from None
    if not 1 <= limit <= settings.events_max_limit:
        raise _bad(f"limit must be between 1 and {settings.events_max_limit}")
    after = None
    if q.get("cursor"):
        try:
            after = queries.Cursor.decode(q["cursor"][:2048])
        except queries.BadCursor as exc:
            raise _bad(str(exc)) from None
    query = queries.EventQuery(
        topic, _time_param(q, "since"), _time_param(q, "until"), after, limit
    )
    try:
        async with backend.pool.connection() as conn:
            events, next_cursor = await queries.events_page(conn, query)
    except _DB_ERRORS as exc:
        return _db_unavailable(exc)
    headers = {}
    if next_cursor is not None:
        params = {k: v for k, v in q.items() if k != "cursor"}
        params["cursor"] = next_cursor.encode()
        headers["Link"] = f'</events?{urlencode(params)}>; rel="next"'
    return http.json_response(events, headers=headers)


async def get_stats(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    try:
        async with backend.pool.connection() as conn:
            counts = await queries.counts(conn, max_topics=backend.settings.stats_max_topics)
    except _DB_ERRORS as exc:
        return _db_unavailable(exc)
    depths = await backend.queue_depths()
    return http.json_response(
        {
            "received": counts.received,
            "unique_processed": counts.unique_processed,
            "duplicate_dropped": counts.duplicate_dropped,
            "topics": counts.topics,
            "topics_truncated": counts.topics_truncated,
            "uptime": round(time.monotonic() - backend.started, 3),
            **depths,
        }
    )


def _db_unavailable(exc: Exception) -> web.Response:
    log.warning("database unavailable: %r", exc)
    return http.json_response(
        {"error": "database unavailable; retry later"}, status=503, headers={"Retry-After": "2"}
    )


def make_app(backend: Backend) -> web.Application:
    app = http.new_app(
        token=backend.settings.read_token, protected=frozenset({"/events", "/stats"})
    )
    app[BACKEND] = backend

    async def ready() -> Mapping[str, bool]:
        return {"broker": backend.broker_connected, "database": await backend.database_ok()}

    http.add_index(app, "pubsub read API", ["GET /events", "GET /stats"])
    app.router.add_get("/events", get_events)
    app.router.add_get("/stats", get_stats)
    http.add_health(app, ready)
    max_limit = backend.settings.events_max_limit
    openapi.add_docs(app, openapi.read_document(max_limit=max_limit))
    # The gateway answers /openapi.json with this one, so that its /docs shows both services.
    gateway = openapi.gateway_document(max_limit=max_limit)
    openapi.add_document(app, "/openapi/gateway.json", gateway)
    return app
